"""Priorities through the real queue: a worker process, Redis, PostgreSQL and the fake
OpenAI server. A high job submitted behind a backlog of low ones is taken next, not
after the backlog; a retry and the sweep send a job's message at its priority again.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.db.models import AIRequestRow, JobStatus
from app.db.session import session_scope
from app.jobs import submit
from app.jobs.sweep import sweep
from app.sandbox.base import Fault
from tests.integration.test_queue import assert_each_ran_once, wait_all_finished
from tests.plugins.queue import QueueBed
from workers.publisher import REDIS_PRIORITY

pytestmark = pytest.mark.integration

THREADS = 32
BACKLOG = 2000


def started(ids: list[uuid.UUID], before: object = None) -> int:
    query = select(func.count()).where(
        AIRequestRow.id.in_(ids), AIRequestRow.started_at.is_not(None)
    )
    if before is not None:
        query = query.where(AIRequestRow.started_at < before)
    with session_scope() as s:
        return s.scalar(query) or 0


def test_a_high_job_overtakes_a_backlog_of_2000_low_ones_on_a_busy_32_thread_worker(
    queue_bed: QueueBed,
) -> None:
    """The worker has reserved low messages for all its threads when the high job comes:
    it is the next one taken (prefetch one per thread), not the 2,001st."""
    queue_bed.openai.latency = 0.5  # 32 threads: about 64 low jobs a second at most
    low = [submit(f"bulk {n}", priority="low", tags=["bulk"]).id for n in range(BACKLOG)]
    queue_bed.worker(concurrency=THREADS)
    while started(low) < THREADS:  # every thread holds a low job
        time.sleep(0.05)
    low_started_before = started(low)
    high = submit("urgent", priority="high")
    wait_all_finished([high.id], timeout=45)
    job = high.get()
    assert job.status == JobStatus.SUCCEEDED and job.priority == "high"
    ahead = started(low, before=job.started_at)
    # Without priorities the high job starts after all 2,000 (FIFO); with them, only the
    # low jobs already started, and those that took a thread freed meanwhile (at most one
    # per thread: a freed thread takes the high message first).
    assert ahead <= low_started_before + THREADS, (ahead, low_started_before)
    assert ahead < BACKLOG // 2
    assert_each_ran_once([high.id])


def test_the_sweep_publishes_a_lost_job_at_its_priority_again(queue_bed: QueueBed) -> None:
    """No worker: the messages wait in Redis, one list per priority step."""
    jobs = {p: submit(f"at {p}", priority=p).id for p in ("high", "normal", "low")}
    broker = queue_bed.redis

    def depth(priority: str) -> int:
        step = REDIS_PRIORITY[priority]
        return int(broker.llen("ai_requests" if step == 0 else f"ai_requests\x06\x16{step}"))

    assert {p: depth(p) for p in jobs} == {"high": 1, "normal": 1, "low": 1}
    broker.flushdb()  # the broker loses every message
    with session_scope() as s:  # as if they were parked: the sweep publishes them now
        s.execute(update(AIRequestRow).values(published_at=None))
    assert sweep() == 3
    assert {p: depth(p) for p in jobs} == {"high": 1, "normal": 1, "low": 1}


def test_a_retry_goes_back_at_the_jobs_priority(queue_bed: QueueBed) -> None:
    """A 503 with Retry-After: the worker holds the retry's countdown message unacked in
    Redis; it carries the low job's priority, as a redelivered one would."""
    queue_bed.openai.faults.push(Fault.status_code(503, headers={"Retry-After": "4"}))
    queue_bed.worker(concurrency=1)
    job = submit("a low job that fails once", priority="low")
    broker = queue_bed.redis
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not seen and time.monotonic() < deadline:
        for raw in broker.hvals("unacked"):
            message = json.loads(raw)[0]
            if message["headers"].get("retries", 0) >= 1:
                seen.append(message)
        time.sleep(0.02)
    assert seen, "no retry message seen"
    assert seen[0]["properties"]["priority"] == REDIS_PRIORITY["low"]
    assert str(job.id) in seen[0]["headers"]["argsrepr"]
    wait_all_finished([job.id], timeout=30)
    assert job.get().status == JobStatus.SUCCEEDED and job.get().attempt_count == 2
