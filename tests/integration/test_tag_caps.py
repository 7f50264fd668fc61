"""Per-tag caps through the real queue: two worker processes (8 threads in all), Redis,
PostgreSQL and the fake OpenAI server. However many threads are free, no more than the
cap of a tag's jobs run at once; the others wait without an attempt and all finish."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow
from app.db.session import session_scope
from app.jobs import submit
from tests.integration.test_queue import assert_each_ran_once, wait_all_finished
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration


def most_at_once(bed: QueueBed, prefix: str) -> int:
    """The most calls for prompts starting with ``prefix`` in flight at one moment, as the
    fake server saw them: each lasts from its arrival for the server's latency at least
    (the job's claim starts before and ends after it)."""
    latency = bed.openai.latency
    with bed.openai._lock:
        arrivals = [
            r.at
            for r in bed.openai.requests
            if r.path == "/v1/chat/completions"
            and str(r.body["messages"][-1]["content"]).startswith(prefix)
        ]
    events = sorted([(t, 1) for t in arrivals] + [(t + latency, -1) for t in arrivals])
    running = best = 0
    for _, step in events:  # at the same instant an end (-1) sorts before a start
        running += step
        best = max(best, running)
    return best


def test_a_tag_cap_holds_across_two_workers_and_held_back_jobs_count_no_attempt(
    queue_bed: QueueBed,
) -> None:
    queue_bed.openai.latency = 0.5
    queue_bed.configure(AIW_TAG_CONCURRENCY="bulk=2", AIW_TAG_WAIT=0.3)
    queue_bed.worker(concurrency=4)
    queue_bed.worker(concurrency=4)
    bulk = [submit(f"bulk {n}", tags=["bulk", "tenant-a"]).id for n in range(16)]
    others = [submit(f"other {n}", tags=["tenant-b"]).id for n in range(16)]
    wait_all_finished(bulk + others, timeout=60)
    assert assert_each_ran_once(bulk + others) == (32, 0)
    assert most_at_once(queue_bed, "bulk") == 2  # the cap, used, never passed
    assert most_at_once(queue_bed, "other") > 2  # the threads were there: only the cap
    # held the bulk jobs back
    with session_scope() as s:
        counts = s.scalars(select(AIRequestRow.attempt_count).where(AIRequestRow.id.in_(bulk)))
        outcomes = set(
            s.scalars(select(AttemptRow.outcome).where(AttemptRow.request_id.in_(bulk)))
        )
    assert set(counts) == {1} and outcomes == {AttemptOutcome.SUCCEEDED}
