"""When to poll a run, and whether reading another page of runs pays: pure functions.

**Intervals.** A run is polled every ``AIW_AGENT_POLL_INTERVAL`` seconds at first;
after every ``AIW_AGENT_POLL_GROWTH_EVERY`` polls without a status change the
interval is multiplied by ``AIW_AGENT_POLL_GROWTH``, up to
``AIW_AGENT_POLL_MAX_INTERVAL``. A status change brings it back to the base: a run
that moves is likely to move again soon, one that has sat ACTIVE for an hour is not.

**Where to start.** A round does not always start at the top of the list:
``ListPositions`` remembers where runs were seen. New runs only push older ones down,
so the position at which a run at least as new as the newest wanted one was seen is a
safe place to start; if runs were deleted meanwhile and the start is too deep, the
runs above it are simply read with a GET.

**Pages or GETs.** ``GET .../agent/runs`` lists the organization's runs newest first,
100 a request; ``GET .../agent/run/{id}`` reads one. One page costs as much as one
GET, so reading pages pays while it reveals more wanted runs than it costs. Codegen's
run ids grow with time, so a page's ids say roughly how far down an older run is:
``worth_another_page`` estimates, from the last page read, how many more pages would
reveal each run still unseen and goes on only while some number of pages ``k`` would
reveal more than ``k`` of them. Runs newer than the oldest entry read so far but not
seen (gone from the list, or moved) are left to GETs.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings

#: More growth steps than this change nothing (and would overflow a float).
_MAX_STEPS = 200


def poll_interval(
    polls_since_change: int, *, base: float, growth: float, every: int, ceiling: float
) -> float:
    """Seconds until the next poll of a run seen ``polls_since_change`` times unchanged."""
    if polls_since_change < 0 or every < 1 or growth < 1 or base <= 0:
        raise ValueError("need polls >= 0, every >= 1, growth >= 1 and base > 0")
    steps = min(polls_since_change // every, _MAX_STEPS)
    return min(ceiling, base * growth**steps)


def interval_for(settings: Settings, polls_since_change: int) -> float:
    """``poll_interval`` with the ``AIW_AGENT_POLL_*`` settings."""
    return poll_interval(
        polls_since_change,
        base=settings.aiw_agent_poll_interval,
        growth=settings.aiw_agent_poll_growth,
        every=settings.aiw_agent_poll_growth_every,
        ceiling=settings.aiw_agent_poll_max_interval,
    )


def worth_another_page(
    unseen: Collection[int], page_ids: Sequence[int], page_size: int, *, at_end: bool
) -> bool:
    """After reading a page (``page_ids``, newest first), is the next page worth a request?

    ``unseen``: remote ids still wanted. ``at_end``: the list has no more pages.
    """
    if at_end or not unseen or not page_ids:
        return False
    oldest = min(page_ids)
    # Ids per list position on this page (distinct descending ids: at least 1).
    density = 1.0
    if len(page_ids) > 1:
        density = max(1.0, (max(page_ids) - oldest) / (len(page_ids) - 1))
    per_page = density * page_size
    pages_needed = sorted(
        math.ceil((oldest - run_id) / per_page) for run_id in unseen if run_id < oldest
    )
    # Reading k more pages reveals every run needing <= k of them; it pays when that
    # is more than k runs (each would otherwise cost a GET).
    return any(k < revealed for revealed, k in enumerate(pages_needed, start=1))


class ListPositions:
    """Where runs were seen in the list (newest first), for one organization.

    Kept in the process (each worker learns its own; one that knows nothing starts at
    the top, which is correct, only dearer). Thread-safe.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self._ids: list[int] = []  # ascending
        self._position: dict[int, int] = {}
        self._max = max_entries
        self._lock = threading.Lock()

    def record(self, skip: int, page_ids: Sequence[int]) -> None:
        """A page read at ``skip``: its first and last runs are where they were seen."""
        if not page_ids:
            return
        with self._lock:
            if len(self._ids) > self._max:
                self._ids.clear()
                self._position.clear()
            for run_id, position in ((page_ids[0], skip), (page_ids[-1], skip + len(page_ids) - 1)):
                known = self._position.get(run_id)
                if known is None:
                    bisect.insort(self._ids, run_id)
                    self._position[run_id] = position
                elif position > known:
                    self._position[run_id] = position

    def start_for(self, run_id: int) -> int:
        """A list offset that is not past ``run_id`` (0 when nothing is known)."""
        with self._lock:
            i = bisect.bisect_left(self._ids, run_id)  # the oldest run at least as new
            return self._position[self._ids[i]] if i < len(self._ids) else 0
