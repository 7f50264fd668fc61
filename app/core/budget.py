"""Codegen's rate limits as token buckets shared by every worker.

Codegen allows 60 requests per 30 seconds on its standard endpoints and 10 run
creations per minute, counted per token over a *sliding window*, and answers 429
past them. Every Codegen request ai-worker makes takes a token from the same bucket
first, so together they never go past the limit by themselves:

- the workers' tracked runs (``CodegenGateway`` in ``app.jobs.agent_runs``) take
  tokens without waiting (``TokenBucket.take``): no token, ``BudgetExhausted``, and
  the task defers itself;
- the blocking, in-process paths (``Agent``/``Task``, ``CodegenProvider``) give their
  ``CodegenClient`` a ``BlockingCodegenLimiter`` (``blocking_limiter``): before each
  request it waits for a token, or for the end of the shared 429 cooldown, up to
  ``max_wait`` seconds, then raises ``CodegenBudgetTimeoutError``. A 429 answer
  starts that cooldown for everyone (the names the gateway uses:
  ``codegen-runs:<digest>`` and ``codegen-create:<digest>``).

The buckets are ``app.core.buckets``' (the one mechanism behind every rate limit,
here with Codegen's fixed numbers), in Redis (``REDIS_URL``, else a ``redis://``
broker URL), one hash per bucket, updated atomically by one Lua script that reads the
Redis server's clock, so the workers' own clocks do not matter:

- ``aiw:budget:codegen:standard:<digest>``: the standard endpoints (get, list, logs,
  resume).
- ``aiw:budget:codegen:create:<digest>``: run creations.

``<digest>`` names the Codegen token and organization (``codegen_digest``, the same
value as ``credential_digest``: not reversible), so two organizations never share a
budget. Each hash holds ``tokens``
(a float) and ``ts`` (the server time of the last update, seconds); it expires once
it would be full again anyway. Without Redis (the embedded mode: one worker
process) the buckets live in the process.

**Why a token bucket obeys a sliding window.** A bucket of capacity ``B`` refilled
at ``r`` tokens a second lets at most ``B + r * W`` requests through in *any*
interval of ``W`` seconds (it holds at most ``B`` at the start and gains ``r * W``).
``BucketSpec.for_window`` picks ``r = (limit - B) / (window + margin)``, so any
``window + margin`` seconds see at most ``limit`` requests. The ``margin``
(``CODEGEN_RATE_MARGIN``) covers the time between taking a token and the request
reaching Codegen: two requests taken ``window`` apart may arrive closer together.
The price is a steady rate a little under the limit (60/30 s, burst 10, margin 1 s:
1.61 requests/s instead of 2).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from app.core import keys
from app.core.buckets import Buckets, BucketSpec, Grant, MemoryBuckets, RedisBuckets
from app.core.cooldown import CooldownStore, credential_digest, get_cooldowns
from app.core.errors import CodegenBudgetTimeoutError
from app.core.keys import redis_client, redis_url_for

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = keys.BUDGET
STANDARD = keys.BUDGET_CODEGEN_STANDARD
CREATE = keys.BUDGET_CODEGEN_CREATE


class BudgetExhausted(Exception):  # a signal to defer, not a failure
    """No request was made: wait ``wait`` seconds (budget spent, or cooling down)."""

    def __init__(self, wait: float, reason: str) -> None:
        super().__init__(f"{reason}: wait {wait:.2f}s")
        self.wait = max(0.0, wait)
        self.reason = reason


# --- one bucket at a time, never waiting ---------------------------------------------------


class TokenBucket(Protocol):
    spec: BucketSpec

    def take(self, n: int = 1, *, reserve: float = 0.0) -> Grant:
        """Take ``n`` tokens if at least ``reserve`` stay in the bucket; never blocks."""

    def peek(self) -> float:
        """Tokens in the bucket now (nothing taken)."""


class _OneBucket:
    """One bucket of a ``Buckets`` store, taken without waiting."""

    def __init__(self, store: Buckets, key: str, spec: BucketSpec) -> None:
        self.spec = spec
        self.key = key
        self._store = store

    def take(self, n: int = 1, *, reserve: float = 0.0) -> Grant:
        if n < 1:
            raise ValueError(f"take at least one token, got {n}")
        return self._store.take([self.key], [self.spec], [n], reserve=reserve)

    def peek(self) -> float:
        return self._store.take([self.key], [self.spec], [0]).tokens


class RedisTokenBucket(_OneBucket):
    """A bucket in Redis, shared by every process that names the same key."""

    def __init__(self, client: Any, key: str, spec: BucketSpec) -> None:
        super().__init__(RedisBuckets(client), key, spec)


class MemoryTokenBucket(_OneBucket):
    """The same bucket inside one process (embedded mode, tests)."""

    def __init__(self, spec: BucketSpec, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(MemoryBuckets(clock), "bucket", spec)


@dataclass(frozen=True)
class CodegenBudget:
    """The two buckets of one Codegen organization and token."""

    standard: TokenBucket
    create: TokenBucket


def standard_spec(settings: Settings) -> BucketSpec:
    return BucketSpec.for_window(
        settings.codegen_rate_limit,
        settings.codegen_rate_window,
        settings.codegen_rate_burst,
        settings.codegen_rate_margin,
    )


def create_spec(settings: Settings) -> BucketSpec:
    return BucketSpec.for_window(
        settings.codegen_create_limit,
        settings.codegen_create_window,
        settings.codegen_create_burst,
        settings.codegen_rate_margin,
    )


_budgets: dict[tuple[Any, ...], CodegenBudget] = {}
_budgets_lock = threading.Lock()


def codegen_digest(token: str, org_id: int | str | None) -> str:
    """The digest naming a Codegen token and organization in Redis keys (never the token).

    Equal to ``credential_digest(settings, "codegen")`` for settings with that token and
    organization, so a client built from its own credentials shares the workers' keys.
    """
    return hashlib.sha256((token + str(org_id)).encode()).hexdigest()[:16]


def get_codegen_budget(settings: Settings, *, digest: str | None = None) -> CodegenBudget:
    """The shared budget of a Codegen organization and token (made once per process).

    ``digest`` (``codegen_digest(token, org_id)``) names whose budget; by default the
    one configured in ``settings`` (``CODEGEN_TOKEN``, ``CODEGEN_ORG_ID``). The shape
    of the buckets (``CODEGEN_RATE_*``, ``CODEGEN_CREATE_*``) and the Redis come from
    ``settings``.
    """
    url = redis_url_for(settings)
    if digest is None:
        digest = credential_digest(settings, "codegen")
    standard, create = standard_spec(settings), create_spec(settings)
    key = (url, digest, standard, create)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            if url:
                client = redis_client(url, settings)
                budget = CodegenBudget(
                    RedisTokenBucket(client, f"{KEY_PREFIX}{STANDARD}:{digest}", standard),
                    RedisTokenBucket(client, f"{KEY_PREFIX}{CREATE}:{digest}", create),
                )
            else:
                budget = CodegenBudget(MemoryTokenBucket(standard), MemoryTokenBucket(create))
            _budgets[key] = budget
        return budget


def reset_budgets() -> None:
    """Forget the buckets made so far (tests; after a fork)."""
    with _budgets_lock:
        _budgets.clear()


# --- the blocking paths: wait for a token before each request -----------------------------

#: The kind of a Codegen request: ``"create"`` (a new run) or ``"standard"`` (the rest).
RequestKind = Literal["standard", "create"]
#: Cooldown names (``app.core.cooldown``) a 429 starts, ``<name>:<digest>``; the gateway
#: of the workers uses the same ones.
COOLDOWN_STANDARD = "codegen-runs"
COOLDOWN_CREATE = "codegen-create"
#: The longest a blocking request waits for its token by default, seconds.
DEFAULT_MAX_WAIT = 300.0
#: Waits longer than this are logged (at INFO), seconds.
_NOTEWORTHY_WAIT = 1.0
_wait_cap: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "codegen_budget_wait_cap", default=None
)


@contextlib.contextmanager
def wait_at_most(seconds: float) -> Iterator[None]:
    """Within the block, a ``BlockingCodegenLimiter`` waits at most ``seconds`` (this
    thread or task only): a caller with its own deadline passes what is left of it."""
    token = _wait_cap.set(max(0.0, seconds))
    try:
        yield
    finally:
        _wait_cap.reset(token)


class CodegenLimiter(Protocol):
    """What a ``CodegenClient`` asks before each HTTP request, and tells after a 429."""

    def before_request(self, kind: RequestKind) -> None:
        """Return when the request may go (it may block); raise to refuse it."""

    def rate_limited(self, kind: RequestKind, retry_after: float | None) -> None:
        """Codegen answered 429 to a ``kind`` request (``retry_after``: its wait, if any)."""


class BlockingCodegenLimiter:
    """Waits for a token of a ``CodegenBudget`` before each request (thread-safe).

    ``before_request(kind)`` takes a token from ``budget.create`` (``"create"``) or
    ``budget.standard`` (anything else), first waiting out the shared cooldown that a
    429 started (``cooldowns``, names ``codegen-runs:<digest>`` /
    ``codegen-create:<digest>``). It sleeps (``sleep``) as long as the bucket says and
    asks again; when the next token is further away than ``max_wait`` seconds from the
    first ask (``clock``; less inside ``wait_at_most``), it raises
    ``CodegenBudgetTimeoutError`` without waiting for nothing.
    ``rate_limited(kind, retry_after)`` starts that cooldown for everyone: for the
    server's Retry-After, else for the time the bucket takes to fill up, at most
    ``retry_after_max`` seconds. An unreachable cooldown store is ignored (the
    budget still applies); an unreachable Redis budget grants nothing, so the wait
    runs out.
    """

    def __init__(
        self,
        budget: CodegenBudget,
        cooldowns: CooldownStore,
        digest: str,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        retry_after_max: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or max_wait < 0:
            raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait!r}")
        self.budget = budget
        self.max_wait = float(max_wait)
        self.retry_after_max = retry_after_max
        self._cooldowns = cooldowns
        self._names: dict[str, str] = {
            "standard": f"{COOLDOWN_STANDARD}:{digest}",
            "create": f"{COOLDOWN_CREATE}:{digest}",
        }
        self._sleep = sleep
        self._clock = clock

    def _bucket(self, kind: RequestKind) -> TokenBucket:
        return self.budget.create if kind == "create" else self.budget.standard

    def _name(self, kind: RequestKind) -> str:
        return self._names["create" if kind == "create" else "standard"]

    def before_request(self, kind: RequestKind) -> None:
        bucket, name = self._bucket(kind), self._name(kind)
        cap = _wait_cap.get()
        limit = self.max_wait if cap is None else min(self.max_wait, cap)
        started = self._clock()
        while True:
            cooling = self._cooldown_remaining(name)
            if cooling > 0:
                wait, reason = cooling, "Codegen answered 429 a moment ago"
            else:
                grant = bucket.take()
                if grant:
                    return
                wait, reason = grant.wait, "the shared Codegen budget is spent"
            waited = self._clock() - started
            if waited + wait > limit:
                raise CodegenBudgetTimeoutError(
                    f"no Codegen {kind} request could be made within {limit:g}s: "
                    f"{reason} (waited {waited:.1f}s, {wait:.1f}s more needed); "
                    "nothing was sent",
                    wait=wait,
                )
            if wait >= _NOTEWORTHY_WAIT:
                log.info("codegen %s request waits %.1fs: %s", kind, wait, reason)
            self._sleep(max(wait, 0.001))

    def rate_limited(self, kind: RequestKind, retry_after: float | None) -> None:
        wait = retry_after
        if wait is None or wait < 0:
            wait = self._bucket(kind).spec.refill_seconds
        seconds = min(wait, self.retry_after_max)
        log.warning("Codegen answered 429: every Codegen %s request waits %.1fs", kind, seconds)
        try:
            self._cooldowns.start(self._name(kind), seconds)
        except Exception as exc:  # noqa: BLE001 - advisory: the budget still applies
            log.warning("cooldown store unreachable (%s)", type(exc).__name__)

    def _cooldown_remaining(self, name: str) -> float:
        try:
            return self._cooldowns.remaining(name)
        except Exception as exc:  # noqa: BLE001 - advisory, see above
            log.warning("cooldown store unreachable (%s)", type(exc).__name__)
            return 0.0

    def __repr__(self) -> str:
        return f"<BlockingCodegenLimiter max_wait={self.max_wait:g}>"


def blocking_limiter(
    settings: Settings,
    digest: str,
    *,
    max_wait: float = DEFAULT_MAX_WAIT,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> BlockingCodegenLimiter:
    """The blocking limiter on the shared budget and cooldowns of ``digest``'s credentials.

    ``digest`` is ``codegen_digest(token, org_id)``; Redis (``REDIS_URL``, else a
    ``redis://`` broker), the bucket shapes and ``RETRY_AFTER_MAX`` come from
    ``settings``. Without Redis the budget is this process's.
    """
    return BlockingCodegenLimiter(
        get_codegen_budget(settings, digest=digest),
        get_cooldowns(settings),
        digest,
        max_wait=max_wait,
        retry_after_max=settings.retry_after_max,
        sleep=sleep,
        clock=clock,
    )
