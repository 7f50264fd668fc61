"""The delivery policy as data: what counts as success, when to try again, when to stop.

- Only a 2xx answer is a success. Anything else (3xx included: redirects are not
  followed), a timeout, a refused or reset connection, is a failure.
- 410 Gone: the receiver asks us to stop. The delivery fails and the endpoint is
  disabled at once.
- Other failures are tried again after the waits of ``AIW_WEBHOOK_RETRY_SCHEDULE``
  (default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h: 7 tries over about 17.6 h); when
  the schedule is spent the delivery is ``failed``.
- An endpoint that fails without a single success for ``AIW_WEBHOOK_DISABLE_AFTER``
  seconds (default 5 days) is disabled, and its pending deliveries abandoned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime


def is_success(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


def is_gone(status_code: int | None) -> bool:
    return status_code == 410


def retry_delay(attempts_done: int, schedule: Sequence[float]) -> float | None:
    """Seconds to wait after the ``attempts_done``-th failed try, or None when the
    schedule is spent. ``retry_delay(1, (5, 300)) == 5``; ``retry_delay(3, (5, 300))`` is
    None: a schedule of n waits allows n + 1 tries."""
    if attempts_done < 1:
        raise ValueError("attempts_done counts the tries made so far, starting at 1")
    if attempts_done > len(schedule):
        return None
    return float(schedule[attempts_done - 1])


def should_disable(failing_since: datetime | None, now: datetime, disable_after: float) -> bool:
    """True when an endpoint has been failing without a break for ``disable_after`` s."""
    return failing_since is not None and (now - failing_since).total_seconds() >= disable_after
