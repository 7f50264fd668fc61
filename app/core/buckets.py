"""Token buckets shared by every worker: the one mechanism behind every rate limit.

Codegen's documented limits (``app.core.budget``, fixed numbers) and the admission of
provider calls by requests and tokens per minute (``app.core.admission``, configured
and learned numbers) both take from these buckets.

A bucket of capacity ``B`` refilled at ``r`` tokens a second lets at most
``B + r * W`` tokens through in *any* interval of ``W`` seconds. ``BucketSpec.for_window``
picks ``r = (limit - B) / (window + margin)``, so any ``window + margin`` seconds see at
most ``limit``: a provider counting over a sliding window never sees more.

One take may cover several buckets at once (requests *and* tokens) and may be
**scheduled**: when the buckets cannot give ``n`` now but could within ``max_wait``
seconds, they are debited for the moment ``T`` they can (the bucket's ``ts`` moves to
``T``, in the future) and the caller comes back at ``T``. Later takes queue behind it
(first come, first served), so a burst of callers is spread over the window instead of
asking again and again. A scheduled take is remembered under a *hold* key (a job id):
the caller coming back finds it and goes at once, without a second debit; one that comes
back more than ``grace`` seconds late lost its place (its slot is spent) and takes anew.

``settle`` corrects a take afterwards: tokens given back (the answer used fewer than
reserved) or charged (more), and a tighter shape and level learned from the provider
(``lcap``/``lrate``/``remaining``: every later take of every worker follows them; a
bucket with learned limits is kept ``LEARNED_TTL`` seconds after the last answer).

In Redis every bucket is one hash (``tokens``, ``ts``, and learned ``lcap``, ``lrate``)
updated by one Lua script that reads the Redis server's clock, so the workers' clocks do
not matter. Without Redis (``MemoryBuckets``) the same arithmetic runs in the process:
the limit is then per process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: The wait reported when the bucket store cannot be reached (nothing is granted then).
UNREACHABLE_WAIT = 1.0
#: Seconds a bucket with learned limits is kept at least (renewed by each answer), so a
#: burst after a quiet spell still follows them.
LEARNED_TTL = 3600
#: Capacity and rate of a bucket with no limit (only learned limits may tighten it).
UNLIMITED = 1e15

#: KEYS: k bucket hashes, then the hold key (or none). ARGV: k, max_wait, reserve,
#: grace, then per bucket capacity, rate, n. Returns {granted (0/1), wait, tokens left in
#: the first bucket, reserved (0/1)}; numbers as strings.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local k = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local reserve = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local hold = KEYS[k + 1]
if hold then
  local due = redis.call('HGET', hold, 'due')
  if due then
    due = tonumber(due)
    if now < due then
      return {0, string.format('%.6f', due - now), '0', 1}
    end
    redis.call('DEL', hold)
    if now <= due + grace then
      return {1, '0', '0', 1}
    end
  end
end
local T = now
local st = {}
for i = 1, k do
  local b = 4 + (i - 1) * 3
  local cap = tonumber(ARGV[b + 1])
  local rate = tonumber(ARGV[b + 2])
  local n = tonumber(ARGV[b + 3])
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts', 'lcap', 'lrate')
  if s[3] then cap = math.min(cap, tonumber(s[3])) end
  if s[4] then rate = math.min(rate, tonumber(s[4])) end
  local tokens, ts = cap, now
  if s[1] and s[2] then
    tokens = tonumber(s[1])
    ts = tonumber(s[2])
    if now > ts then
      tokens = math.min(cap, tokens + (now - ts) * rate)
      ts = now
    end
  end
  local need = math.min(n, cap) + reserve
  local at = ts
  if n > 0 and tokens < need then at = ts + (need - tokens) / rate end
  if at > T then T = at end
  st[i] = {cap, rate, n, tokens, ts, s[3]}
end
local wait = T - now
if wait > max_wait then
  return {0, string.format('%.6f', wait), string.format('%.6f', st[1][4]), 0}
end
for i = 1, k do
  local cap, rate, n, tokens, ts = st[i][1], st[i][2], st[i][3], st[i][4], st[i][5]
  if T > ts then tokens = math.min(cap, tokens + (T - ts) * rate) end
  tokens = tokens - n
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.6f', tokens),
             'ts', string.format('%.6f', T))
  local ttl = math.ceil((wait + (cap - tokens) / rate + 1) * 1000)
  if st[i][6] then ttl = math.max(ttl, LEARNED_TTL_MS) end
  redis.call('PEXPIRE', KEYS[i], ttl)
  st[i][4] = tokens
end
if wait > 0 and hold then
  redis.call('HSET', hold, 'due', string.format('%.6f', T))
  redis.call('PEXPIRE', hold, math.ceil((wait + grace + 60) * 1000))
  return {0, string.format('%.6f', wait), string.format('%.6f', st[1][4]), 1}
end
return {1, '0', string.format('%.6f', st[1][4]), 1}
""".replace("LEARNED_TTL_MS", str(LEARNED_TTL * 1000))

#: KEYS: k bucket hashes. ARGV: k, then per bucket capacity, rate, delta (given back if
#: positive, charged if negative), learned capacity, learned rate, remaining (-1: none).
SETTLE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local k = tonumber(ARGV[1])
for i = 1, k do
  local b = 1 + (i - 1) * 6
  local cap = tonumber(ARGV[b + 1])
  local rate = tonumber(ARGV[b + 2])
  local delta = tonumber(ARGV[b + 3])
  local lcap = tonumber(ARGV[b + 4])
  local lrate = tonumber(ARGV[b + 5])
  local remaining = tonumber(ARGV[b + 6])
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts', 'lcap', 'lrate')
  if lcap > 0 then
    redis.call('HSET', KEYS[i], 'lcap', string.format('%.6f', lcap),
               'lrate', string.format('%.6f', lrate))
  else
    if s[3] then lcap = tonumber(s[3]) end
    if s[4] then lrate = tonumber(s[4]) end
  end
  if lcap > 0 then cap = math.min(cap, lcap) end
  if lrate > 0 then rate = math.min(rate, lrate) end
  local tokens, ts = cap, now
  if s[1] and s[2] then
    tokens = tonumber(s[1])
    ts = tonumber(s[2])
    if now > ts then
      tokens = math.min(cap, tokens + (now - ts) * rate)
      ts = now
    end
  end
  tokens = math.min(cap, tokens + delta)
  if remaining >= 0 and ts <= now then tokens = math.min(tokens, remaining) end
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.6f', tokens),
             'ts', string.format('%.6f', ts))
  local ttl = math.ceil(((ts - now) + (cap - tokens) / rate + 1) * 1000)
  if lcap > 0 then ttl = math.max(ttl, LEARNED_TTL_MS) end
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 1
""".replace("LEARNED_TTL_MS", str(LEARNED_TTL * 1000))


@dataclass(frozen=True)
class BucketSpec:
    """A bucket's shape: ``capacity`` tokens at most, ``rate`` new tokens a second."""

    capacity: float
    rate: float

    def __post_init__(self) -> None:
        if not self.capacity >= 1 or not self.rate > 0:
            raise ValueError(f"a bucket needs capacity >= 1 and rate > 0, got {self}")

    @classmethod
    def for_window(cls, limit: int, window: float, burst: int, margin: float = 0.0) -> BucketSpec:
        """The bucket that never lets more than ``limit`` through per ``window`` seconds."""
        if not 0 < burst < limit:
            raise ValueError(f"need 0 < burst < limit, got burst={burst}, limit={limit}")
        return cls(capacity=float(burst), rate=(limit - burst) / (window + margin))

    @classmethod
    def for_limit(
        cls, limit: float, window: float, burst_fraction: float, margin: float = 0.0
    ) -> BucketSpec:
        """``for_window`` with a burst that is a fraction of the limit (at least one)."""
        burst = max(1.0, limit * burst_fraction)
        if burst >= limit:  # a limit of one: one, then the next a whole window later
            return cls(capacity=float(limit), rate=limit / (window + margin))
        return cls(capacity=burst, rate=(limit - burst) / (window + margin))

    @property
    def refill_seconds(self) -> float:
        """Seconds an empty bucket takes to fill up."""
        return self.capacity / self.rate


UNLIMITED_SPEC = BucketSpec(UNLIMITED, UNLIMITED)


@dataclass(frozen=True)
class Grant:
    """The answer of a take: ``granted`` (go now), else ``wait`` seconds; ``reserved``:
    the buckets were debited (now, or for a slot ``wait`` seconds away, held)."""

    granted: int
    wait: float
    tokens: float  # left in the first bucket after this call
    reserved: bool = False

    def __bool__(self) -> bool:
        return self.granted > 0


@dataclass(frozen=True)
class Learned:
    """What a provider's answer said about one bucket: its real shape, its level now."""

    spec: BucketSpec | None = None
    remaining: float | None = None


class Buckets(Protocol):
    """Where buckets live: Redis (shared) or this process."""

    def take(
        self,
        keys: Sequence[str],
        specs: Sequence[BucketSpec],
        ns: Sequence[float],
        *,
        max_wait: float = 0.0,
        reserve: float = 0.0,
        hold: str | None = None,
        grace: float = 1.0,
    ) -> Grant: ...

    def settle(
        self,
        keys: Sequence[str],
        specs: Sequence[BucketSpec],
        deltas: Sequence[float],
        learned: Sequence[Learned | None],
    ) -> None: ...

    def known(self, key: str) -> bool:
        """Whether the bucket ``key`` holds any state (False when the store is out)."""
        ...


class RedisBuckets:
    """Buckets in one Redis, shared by every process that names the same keys."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._take = client.register_script(TAKE_SCRIPT)
        self._settle = client.register_script(SETTLE_SCRIPT)

    def known(self, key: str) -> bool:
        import redis

        try:
            return bool(self._client.exists(key))
        except redis.RedisError:
            return False

    def take(
        self,
        keys: Sequence[str],
        specs: Sequence[BucketSpec],
        ns: Sequence[float],
        *,
        max_wait: float = 0.0,
        reserve: float = 0.0,
        hold: str | None = None,
        grace: float = 1.0,
    ) -> Grant:
        import redis

        args: list[float] = [len(keys), max_wait, reserve, grace]
        for spec, n in zip(specs, ns, strict=True):
            args += [spec.capacity, spec.rate, n]
        try:
            granted, wait, tokens, reserved = self._take(
                keys=[*keys, *([hold] if hold else [])], args=args
            )
        except redis.RedisError as exc:
            # No store, no grant: call nothing rather than risk 429s. The broker is
            # usually the same Redis, so the worker is stalled anyway.
            log.warning("bucket store unreachable (%s): nothing granted", exc)
            return Grant(0, UNREACHABLE_WAIT, 0.0)
        return Grant(int(granted), float(wait), float(tokens), bool(int(reserved)))

    def settle(
        self,
        keys: Sequence[str],
        specs: Sequence[BucketSpec],
        deltas: Sequence[float],
        learned: Sequence[Learned | None],
    ) -> None:
        import redis

        args: list[float] = [len(keys)]
        for spec, delta, seen in zip(specs, deltas, learned, strict=True):
            lspec = seen.spec if seen is not None else None
            remaining = seen.remaining if seen is not None else None
            args += [
                spec.capacity,
                spec.rate,
                delta,
                lspec.capacity if lspec else -1,
                lspec.rate if lspec else -1,
                -1 if remaining is None else max(0.0, remaining),
            ]
        try:
            self._settle(keys=list(keys), args=args)
        except redis.RedisError as exc:
            log.warning("bucket store unreachable (%s): not settled", exc)


@dataclass
class _State:
    tokens: float
    ts: float
    lcap: float | None = None
    lrate: float | None = None


class MemoryBuckets:
    """The same buckets inside one process (embedded mode, tests): ``TAKE_SCRIPT`` and
    ``SETTLE_SCRIPT`` in Python, on ``clock``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._holds: dict[str, float] = {}
        self._lock = threading.Lock()

    def known(self, key: str) -> bool:
        with self._lock:
            return key in self._states

    def _shape(self, key: str, spec: BucketSpec, now: float) -> tuple[float, float, _State]:
        state = self._states.get(key)
        cap, rate = spec.capacity, spec.rate
        if state is None:
            return cap, rate, _State(cap, now)
        if state.lcap is not None and state.lrate is not None:
            cap, rate = min(cap, state.lcap), min(rate, state.lrate)
        if now > state.ts:
            state.tokens = min(cap, state.tokens + (now - state.ts) * rate)
            state.ts = now
        return cap, rate, state

    def take(
        self,
        keys: Sequence[str],
        specs: Sequence[BucketSpec],
        ns: Sequence[float],
        *,
        max_wait: float = 0.0,
        reserve: float = 0.0,
        hold: str | None = None,
        grace: float = 1.0,
    ) -> Grant:
        with self._lock:
            now = self._clock()
            if hold is not None and hold in self._holds:
                due = self._holds[hold]
                if now < due:
                    return Grant(0, due - now, 0.0, True)
                del self._holds[hold]
                if now <= due + grace:
                    return Grant(1, 0.0, 0.0, True)
            at_most = now
            shaped = []
            for key, spec, n in zip(keys, specs, ns, strict=True):
                cap, rate, state = self._shape(key, spec, now)
                need = min(n, cap) + reserve
                at = state.ts
                if n > 0 and state.tokens < need:
                    at = state.ts + (need - state.tokens) / rate
                at_most = max(at_most, at)
                shaped.append((key, cap, rate, n, state))
            wait = at_most - now
            if wait > max_wait:
                return Grant(0, wait, shaped[0][4].tokens, False)
            for key, cap, rate, n, state in shaped:
                if at_most > state.ts:
                    state.tokens = min(cap, state.tokens + (at_most - state.ts) * rate)
                state.tokens -= n
                state.ts = at_most
                self._states[key] = state
            left = shaped[0][4].tokens
            if wait > 0 and hold is not None:
                self._holds[hold] = at_most
                return Grant(0, wait, left, True)
            return Grant(1, 0.0, left, True)

    def settle(
        self,
        keys: Sequence[str],
        specs: Sequence[BucketSpec],
        deltas: Sequence[float],
        learned: Sequence[Learned | None],
    ) -> None:
        with self._lock:
            now = self._clock()
            for key, spec, delta, seen in zip(keys, specs, deltas, learned, strict=True):
                state = self._states.get(key)
                if state is None:
                    state = self._states[key] = _State(spec.capacity, now)
                if seen is not None and seen.spec is not None:
                    state.lcap, state.lrate = seen.spec.capacity, seen.spec.rate
                cap, _, state = self._shape(key, spec, now)
                state.tokens = min(cap, state.tokens + delta)
                if seen is not None and seen.remaining is not None and state.ts <= now:
                    state.tokens = min(state.tokens, max(0.0, seen.remaining))

    def level(self, key: str) -> float | None:
        """Tokens in ``key`` as last written (tests)."""
        with self._lock:
            state = self._states.get(key)
            return None if state is None else state.tokens
