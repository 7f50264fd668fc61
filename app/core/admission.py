"""Admission: every provider call reserves requests and tokens from a window shared by
every worker before it goes, and settles after.

A 429 is a reaction (the provider already said no, the job already waited); admission
keeps the workers under the limit together, so they do not meet it. Each window (a
provider and key, and for OpenAI, which limits each model apart, the model) is two
token buckets of ``app.core.buckets`` (the mechanism Codegen's budget uses too), one for
requests and one for tokens, in Redis when there is one (``REDIS_URL``, else a
``redis://`` broker): N workers together stay under the limit, not N times it. Without
Redis the windows are per process.

- **Limits** come from ``AIW_RATE_LIMITS`` (``openai=500rpm,200000tpm;
  openai:gpt-4o-mini=60rpm,20000tpm``: a provider's entry is the default of each of its
  models) and, with ``AIW_RATE_LEARN`` (default on), from the ``x-ratelimit-limit-*`` /
  ``x-ratelimit-remaining-*`` headers of every answer: a tighter limit, or fewer tokens
  left than the window thinks (someone else spends the same key), tightens the shared
  window for every worker's next reservation. A window with neither is not checked.
- **Reserve**: one request and the estimated tokens (the prompt's characters / 4, plus
  ``max_tokens``, else ``TYPICAL_ANSWER_TOKENS``). When the window has no room now, the
  job takes the first free *slot* (within ``AIW_MAX_COUNTDOWN`` and what is left of
  ``AIW_RATE_LIMIT_WAIT_MAX``): it is debited for that moment, held under its job id,
  and the job waits in the broker (or the database) until then; coming back it goes at
  once. A burst of jobs so queues up over the window, first come first served, and
  never asks twice. Further than that, nothing is reserved and the job is parked.
- **Settle**: the tokens the answer really used replace the estimate (the rest is given
  back, or more is charged), and what the headers said is learned.

The window is ``AIW_RATE_WINDOW`` seconds (60: per minute); ``AIW_RATE_BURST`` of a limit
may go at once, the rest is spread so that any window plus ``AIW_RATE_MARGIN`` seconds
holds at most the limit (``BucketSpec.for_limit``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.config import RATE_LIMITED_PROVIDERS, parse_rate_limits
from app.core import keys
from app.core.buckets import UNLIMITED_SPEC, Buckets, BucketSpec, Learned, MemoryBuckets
from app.core.keys import redis_client, redis_url_for

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

#: Tokens reserved for the answer of a request that sets no ``max_tokens``.
TYPICAL_ANSWER_TOKENS = 256
#: Characters per token of the estimate (OpenAI's rule of thumb for English text).
CHARS_PER_TOKEN = 4
#: Tokens each message adds to the prompt (role, separators).
MESSAGE_OVERHEAD = 4
#: A slot at most this many seconds away is waited for in the thread, not deferred.
SLEEP_MAX = 0.25


def estimate_tokens(chars: int, messages: int, max_tokens: int | None) -> int:
    """Tokens a request may use: its text (``chars``) at ``CHARS_PER_TOKEN``, plus the
    answer's cap (``max_tokens``) or a typical answer."""
    prompt = math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * messages
    return prompt + (max_tokens if max_tokens is not None else TYPICAL_ANSWER_TOKENS)


@dataclass(frozen=True)
class Ticket:
    """The answer of ``admit``: go now (``wait == 0``), else come back in ``wait`` s
    (``held``: a slot is reserved for then)."""

    name: str
    specs: tuple[BucketSpec, BucketSpec]  # requests, tokens
    tokens: int  # reserved
    wait: float = 0.0
    held: bool = False
    checked: bool = True  # False: no limit applies, nothing was reserved
    learn_only: bool = False  # no configured limit: only what the headers may teach

    @property
    def keys(self) -> tuple[str, str]:
        return (f"{keys.ADMISSION}{self.name}:requests", f"{keys.ADMISSION}{self.name}:tokens")

    def detail(self) -> str:
        """Why the call waits, for the attempt's ``detail``."""
        parts = self.name.split(":")  # provider, key digest[, model]
        what = " ".join(parts[:1] + parts[2:])
        slot = "a slot is reserved for it" if self.held else "nothing reserved yet"
        return (
            f"not called: the rate window of {what} (shared by every worker) has room in "
            f"{self.wait:.2f} s; {slot}"
        )


@dataclass(frozen=True)
class _Config:
    limits: dict[str, tuple[int | None, int | None]]
    window: float
    burst: float
    margin: float
    learn: bool

    def spec(self, limit: int | None) -> BucketSpec:
        if limit is None:
            return UNLIMITED_SPEC
        return BucketSpec.for_limit(limit, self.window, self.burst, self.margin)

    def specs(self, provider: str, model: str | None) -> tuple[BucketSpec, BucketSpec] | None:
        pair = self.limits.get(f"{provider}:{model}") or self.limits.get(provider)
        if pair is None:  # only learned limits, from providers that send them
            learns = self.learn and provider in RATE_LIMITED_PROVIDERS
            return (UNLIMITED_SPEC, UNLIMITED_SPEC) if learns else None
        return self.spec(pair[0]), self.spec(pair[1])


_configs: dict[int, tuple[Settings, _Config]] = {}
_stores: dict[str | None, Buckets] = {}
_lock = threading.Lock()


def _config(settings: Settings) -> _Config:
    known = _configs.get(id(settings))
    if known is not None and known[0] is settings:  # (an id is reused once freed)
        return known[1]
    config = _Config(
        parse_rate_limits(settings.aiw_rate_limits),
        settings.aiw_rate_window,
        settings.aiw_rate_burst,
        settings.aiw_rate_margin,
        settings.aiw_rate_learn,
    )
    if len(_configs) > 32:
        _configs.clear()
    _configs[id(settings)] = (settings, config)
    return config


def get_buckets(settings: Settings) -> Buckets:
    """The windows' store: the coordinating Redis, else this process (made once)."""
    url = redis_url_for(settings)
    with _lock:
        store = _stores.get(url)
        if store is None:
            if url:
                from app.core.buckets import RedisBuckets

                store = RedisBuckets(redis_client(url, settings))
            else:
                store = MemoryBuckets()
            _stores[url] = store
        return store


def reset_admission() -> None:
    """Forget stores and parsed limits (tests; after a fork)."""
    with _lock:
        _stores.clear()
        _configs.clear()
        _pressure.clear()


def admit(
    name: str,
    provider: str,
    model: str | None,
    job_id: str,
    tokens: int,
    settings: Settings,
    *,
    max_wait: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Ticket:
    """Reserve one request and ``tokens`` from the window ``name`` (``provider``,
    ``model``) for job ``job_id``; a slot within ``max_wait`` s is held for it."""
    config = _config(settings)
    specs = config.specs(provider, model)
    if specs is None:
        return Ticket(name, (UNLIMITED_SPEC, UNLIMITED_SPEC), tokens, checked=False)
    learn_only = specs == (UNLIMITED_SPEC, UNLIMITED_SPEC)
    if learn_only and not _under_pressure(name, settings):
        # Nothing configured and nothing learned: no window to reserve from. The answer's
        # headers are still read (``settle``), and a window near its limit starts one.
        return Ticket(name, specs, tokens, checked=False, learn_only=True)
    ticket = Ticket(name, specs, tokens, learn_only=learn_only)
    store = get_buckets(settings)
    hold = f"{keys.ADMISSION_HOLD}{job_id}"
    for _ in range(2):
        grant = store.take(
            ticket.keys, specs, [1, tokens], max_wait=max(0.0, max_wait), hold=hold,
            grace=config.margin,
        )  # fmt: skip
        if grant:
            return ticket
        if not (grant.reserved and grant.wait <= SLEEP_MAX):
            return Ticket(name, specs, tokens, grant.wait, grant.reserved)
        sleep(grant.wait)  # the slot is near: wait for it here, not in the broker
    return Ticket(name, specs, tokens, SLEEP_MAX, True)


def learned(
    rate_limit: Mapping[str, Any] | None, settings: Settings
) -> tuple[Learned | None, Learned | None]:
    """What ``x-ratelimit-*`` headers (``rate_limit_info``) say of the requests and tokens
    windows."""
    config = _config(settings)
    if not rate_limit or not config.learn:
        return None, None
    found: list[Learned | None] = []
    for what in ("requests", "tokens"):
        limit = rate_limit.get(f"limit_{what}")
        remaining = rate_limit.get(f"remaining_{what}")
        spec = config.spec(limit) if isinstance(limit, int) and limit > 0 else None
        left = float(remaining) if isinstance(remaining, int) and remaining >= 0 else None
        found.append(Learned(spec, left) if spec or left is not None else None)
    return found[0], found[1]


def settle(
    ticket: Ticket,
    settings: Settings,
    *,
    used_tokens: int | None,
    rate_limit: Mapping[str, Any] | None = None,
) -> None:
    """After the call: ``used_tokens`` (the answer's usage; None: unknown, the estimate
    stays charged) replace the reservation, and the headers are learned."""
    if not ticket.checked and not ticket.learn_only:
        return
    seen = learned(rate_limit, settings)
    if ticket.learn_only and not ticket.checked:  # nothing was reserved
        if not _pressing(rate_limit):
            return  # far from the provider's limit: nothing worth sharing
        _pressure[ticket.name] = (time.monotonic() + PRESSURE_RECHECK, True)
        delta = 0.0
    else:
        delta = 0.0 if used_tokens is None else float(ticket.tokens - used_tokens)
    if delta == 0 and seen == (None, None):
        return
    get_buckets(settings).settle(ticket.keys, ticket.specs, [0.0, delta], list(seen))


#: A window learned from headers alone is kept (reserved from) only once an answer
#: says fewer than this share of a limit is left: far from it, every call would pay two
#: Redis round trips for nothing.
PRESSURE_SHARE = 0.5
#: Seconds a process trusts what it knows of a learned-only window (another worker may
#: have met the pressure): one EXISTS a window this often, not one script per call.
PRESSURE_RECHECK = 1.0
_pressure: dict[str, tuple[float, bool]] = {}  # window -> (valid until, learned state)


def _pressing(rate_limit: Mapping[str, Any] | None) -> bool:
    if not rate_limit:
        return False
    for what in ("requests", "tokens"):
        limit, left = rate_limit.get(f"limit_{what}"), rate_limit.get(f"remaining_{what}")
        if isinstance(limit, int) and isinstance(left, int) and left < limit * PRESSURE_SHARE:
            return True
    return False


def _under_pressure(name: str, settings: Settings) -> bool:
    """Whether a learned-only window holds learned state (in the shared store)."""
    now = time.monotonic()
    known = _pressure.get(name)
    if known is not None and known[0] > now:
        return known[1]
    store = get_buckets(settings)
    ticket_keys = Ticket(name, (UNLIMITED_SPEC, UNLIMITED_SPEC), 0).keys
    state = store.known(ticket_keys[0]) or store.known(ticket_keys[1])
    _pressure[name] = (now + PRESSURE_RECHECK, state)
    return state


__all__ = ["Ticket", "admit", "estimate_tokens", "get_buckets", "reset_admission", "settle"]
