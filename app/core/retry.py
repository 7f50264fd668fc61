"""The one retry policy, shared by direct calls and by the Celery task.

Direct (blocking) calls run ``RetryPolicy.call(fn)``, a tenacity loop. The Celery
task never loops: it asks ``should_retry(error, attempt)`` and
``delay_for(error, attempt)`` and turns the answer into ``self.retry(countdown=...)``
or a parked ``next_attempt_at``. So there is one loop per path, never nested,
and the SDKs underneath run with ``max_retries=0``.

What is retried is decided by the error class (``AIProviderError.retryable``):
408/409/429/5xx, timeouts, connection errors and garbled bodies; never
400/401/403/404/422. A server's ``retry-after-ms`` / ``Retry-After`` (seconds or
HTTP date) is honoured up to ``retry_after_max``; otherwise the wait is capped
exponential backoff with jitter.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from app.core.errors import AIProviderError

if TYPE_CHECKING:
    from app.config import Settings

T = TypeVar("T")


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``Retry-After``; None if absent/bad.

    ``headers`` may be any case-insensitive mapping (requests, httpx) or a plain dict.
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            ms = -1.0
        if ms >= 0:
            return ms / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - (time.time() if now is None else now)
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long to wait. ``max_retries`` counts retries, not tries."""

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    retry_after_max: float = 600.0
    jitter: float = 0.25  # a backoff step is scaled by a random factor in [1 - jitter, 1]

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.base_delay <= 0 or self.max_delay <= 0 or self.retry_after_max <= 0:
            raise ValueError("retry delays must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    @classmethod
    def from_settings(cls, settings: Settings, *, max_retries: int | None = None) -> RetryPolicy:
        return cls(
            max_retries=settings.openai_max_retries if max_retries is None else max_retries,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            retry_after_max=settings.retry_after_max,
        )

    def should_retry(self, error: BaseException, retries_done: int) -> bool:
        """True when ``error`` is retryable and fewer than ``max_retries`` retries were made."""
        return (
            isinstance(error, AIProviderError)
            and error.retryable
            and retries_done < self.max_retries
        )

    def backoff(self, retries_done: int) -> float:
        """Capped exponential backoff with jitter for the retry after ``retries_done`` retries."""
        step = min(self.base_delay * (2.0**retries_done), self.max_delay)
        return step * (1.0 - self.jitter * random.random())

    def delay_for(self, error: BaseException, retries_done: int) -> float:
        """Seconds to wait before the next try: the server's word if it gave one, capped."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and retry_after >= 0:
            return float(min(retry_after, self.retry_after_max))
        return self.backoff(retries_done)

    def call(
        self,
        fn: Callable[[], T],
        *,
        sleep: Callable[[float], None] = time.sleep,
        before_sleep: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Run ``fn`` with this policy, blocking between tries. Re-raises the last error."""
        import tenacity  # here: checking and queueing a request (aiw submit) needs no loop

        def wait(state: tenacity.RetryCallState) -> float:
            assert state.outcome is not None
            error = state.outcome.exception()
            assert error is not None
            return self.delay_for(error, state.attempt_number - 1)

        def retry(state: tenacity.RetryCallState) -> bool:
            assert state.outcome is not None
            error = state.outcome.exception()
            return error is not None and self.should_retry(error, state.attempt_number - 1)

        def announce(state: tenacity.RetryCallState) -> None:
            if before_sleep is not None and state.outcome is not None and state.next_action:
                error = state.outcome.exception()
                assert error is not None
                before_sleep(error, state.next_action.sleep)

        retrying = tenacity.Retrying(
            retry=retry, wait=wait, sleep=sleep, before_sleep=announce, reraise=True
        )
        return retrying(fn)
