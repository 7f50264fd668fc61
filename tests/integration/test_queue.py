"""AI requests as Celery tasks: real worker processes, real Redis and PostgreSQL,
the fake OpenAI server over real HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import func, select

from app.core.errors import InvalidRequestError
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus, UsageRow
from app.db.session import session_scope
from app.jobs import JobFailedError, cancel, get_attempts, submit, usage_stats
from app.sandbox.base import Fault
from tests.integration.callback_tasks import CALLBACK_LIST
from tests.plugins.queue import QueueBed
from tests.plugins.services import TcpProxy

pytestmark = pytest.mark.integration


def wait_all_finished(ids: list[uuid.UUID], timeout: float) -> dict[uuid.UUID, str]:
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            rows = dict(
                s.execute(select(AIRequestRow.id, AIRequestRow.status)
                          .where(AIRequestRow.id.in_(ids))).all()
            )
        pending = {k: v for k, v in rows.items() if not JobStatus(v).is_terminal}
        if not pending and len(rows) == len(ids):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(pending)} of {len(ids)} jobs unfinished after {timeout}s: "
                f"{Counter(pending.values())}"
            )
        time.sleep(0.25)


def assert_each_ran_once(ids: list[uuid.UUID]) -> tuple[int, int]:
    """Every succeeded job has exactly one succeeded attempt and one usage row."""
    with session_scope() as s:
        statuses = dict(s.execute(select(AIRequestRow.id, AIRequestRow.status)
                                  .where(AIRequestRow.id.in_(ids))).all())
        ok_attempts = Counter(
            s.scalars(select(AttemptRow.request_id).where(
                AttemptRow.request_id.in_(ids), AttemptRow.outcome == AttemptOutcome.SUCCEEDED))
        )
        usage = Counter(s.scalars(select(UsageRow.request_id).where(UsageRow.request_id.in_(ids))))
    succeeded = [i for i, st in statuses.items() if st == JobStatus.SUCCEEDED]
    for job_id in succeeded:
        assert ok_attempts[job_id] == 1, f"job {job_id} succeeded {ok_attempts[job_id]} times"
        assert usage[job_id] == 1, f"job {job_id} has {usage[job_id]} usage rows"
    for job_id in set(statuses) - set(succeeded):
        assert ok_attempts[job_id] == 0 and usage[job_id] == 0
    return len(succeeded), len(statuses) - len(succeeded)


def test_bad_input_is_refused_before_anything_is_written_or_queued(queue_bed: QueueBed) -> None:
    bad = [
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": "x", "provider": "nope"},
        {"prompt": "x", "temperature": 5},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "tags": "not-a-list"},
        {"prompt": "x", "callback": "bad name with spaces"},
        {"prompt": "x", "weird": object()},
        {"prompt": "x" * 500_001},
    ]
    for kwargs in bad:
        with pytest.raises(InvalidRequestError):
            submit(**kwargs)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(AIRequestRow)) == 0
    assert queue_bed.redis.llen("ai_requests") == 0


def test_jobs_run_through_a_worker_with_callback_and_idempotency(queue_bed: QueueBed) -> None:
    queue_bed.worker(concurrency=4)
    first = submit("hello there", tags=["t1"], idempotency_key="k-1",
                   callback="tests.callback.record")
    again = submit("something else", idempotency_key="k-1")
    assert again.id == first.id
    job = first.wait(timeout=30)
    assert job.status == JobStatus.SUCCEEDED
    answer = first.result()
    assert answer.content == "echo: hello there"
    assert answer.provider_name == "openai"
    assert answer.usage.prompt_tokens > 0
    attempts = get_attempts(first.id)
    assert [a.outcome for a in attempts] == ["succeeded"]
    # The callback task ran in the worker with the job id.
    deadline = time.monotonic() + 15
    while queue_bed.redis.llen(CALLBACK_LIST) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue_bed.redis.lrange(CALLBACK_LIST, 0, -1) == [str(first.id).encode()]
    # Only one chat completion reached the provider for the two submits.
    assert len(queue_bed.openai.chat_requests()) == 1
    rows = usage_stats(group_by=("provider",))
    assert rows[0]["provider"] == "openai" and rows[0]["successes"] == 1


def test_non_retryable_error_fails_the_job_with_the_reason(queue_bed: QueueBed) -> None:
    queue_bed.worker(concurrency=2)
    queue_bed.openai.faults.push(Fault.status_code(400))
    handle = submit("will be refused")
    job = handle.wait(timeout=30)
    assert job.status == JobStatus.FAILED
    assert job.error_type == "ProviderBadRequestError"
    with pytest.raises(JobFailedError):
        handle.result()
    assert len(queue_bed.openai.chat_requests()) == 1  # 400 is never retried


def test_retry_after_is_honoured_through_the_broker(queue_bed: QueueBed) -> None:
    queue_bed.worker(concurrency=2)
    queue_bed.openai.faults.push(Fault.rate_limit(retry_after=2))
    handle = submit("patience")
    job = handle.wait(timeout=30)
    assert job.status == JobStatus.SUCCEEDED
    attempts = get_attempts(handle.id)
    assert [a.outcome for a in attempts] == ["retry", "succeeded"]
    assert attempts[0].retry_after_s == 2
    assert attempts[0].http_status == 429
    gap = (attempts[1].started_at - attempts[0].finished_at).total_seconds()
    assert 1.9 <= gap < 6, gap


def test_a_cancelled_job_is_not_run(queue_bed: QueueBed) -> None:
    handle = submit("never mind")
    assert cancel(handle.id) is True
    assert cancel(handle.id) is False
    queue_bed.worker(concurrency=2)
    time.sleep(2)
    assert handle.status() == JobStatus.CANCELLED
    assert queue_bed.openai.chat_requests() == []


def test_a_thousand_jobs_under_faults_all_end_once(queue_bed: QueueBed) -> None:
    queue_bed.openai.faults.set_random(
        0.3,
        [Fault.rate_limit(retry_after=0.2), Fault.rate_limit(), Fault.status_code(500),
         Fault.status_code(503), Fault.status_code(400)],
        seed=7,
    )
    queue_bed.worker(concurrency=16)
    ids = [submit(f"job {n}").id for n in range(1000)]
    statuses = wait_all_finished(ids, timeout=240)
    succeeded, failed = assert_each_ran_once(ids)
    assert succeeded + failed == 1000
    assert succeeded > 800
    with session_scope() as s:
        reasons = Counter(s.scalars(select(AIRequestRow.error_type).where(
            AIRequestRow.status == JobStatus.FAILED)))
        attempts = s.scalar(
            select(func.count())
            .select_from(AttemptRow)
            .where(AttemptRow.outcome != AttemptOutcome.DEFERRED)  # not called: cooling down
        )
        usage_rows = s.scalar(select(func.count()).select_from(UsageRow))
    # The only failures are the ones that met a non-retryable error, and they say so.
    assert set(reasons) <= {"ProviderBadRequestError"}, reasons
    # Every call the provider saw is one attempt row: nothing ran unrecorded or twice.
    assert len(queue_bed.openai.chat_requests()) == attempts
    assert usage_rows == succeeded
    assert Counter(statuses.values())[JobStatus.SUCCEEDED] == succeeded


def test_redis_flushed_mid_run_the_sweep_brings_every_job_back(queue_bed: QueueBed) -> None:
    queue_bed.openai.latency = 0.05
    queue_bed.configure(AIW_REPUBLISH_AFTER=2)
    queue_bed.worker(concurrency=4)
    queue_bed.beat()
    ids = [submit(f"flush {n}").id for n in range(300)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with session_scope() as s:
            done = s.scalar(select(func.count()).select_from(AIRequestRow).where(
                AIRequestRow.status == JobStatus.SUCCEEDED))
        if done >= 30:
            break
        time.sleep(0.1)
    assert done < 250, "too fast to test a flush mid-run"
    queue_bed.redis.flushdb()
    assert queue_bed.redis.llen("ai_requests") == 0
    wait_all_finished(ids, timeout=120)
    succeeded, failed = assert_each_ran_once(ids)
    assert (succeeded, failed) == (300, 0)


def test_postgres_briefly_unreachable_the_task_retries(queue_bed: QueueBed) -> None:
    from sqlalchemy.engine import make_url

    real = make_url(queue_bed.db_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    try:
        worker_env_url = real.set(port=proxy.port).render_as_string(hide_password=False)
        worker_env = dict(queue_bed.env, DATABASE_URL=worker_env_url)
        queue_bed.celery.worker(worker_env, concurrency=4)
        first = [submit(f"before {n}").id for n in range(10)]
        wait_all_finished(first, timeout=30)
        proxy.down()
        during = [submit(f"during {n}").id for n in range(20)]  # accepted: written directly
        time.sleep(4)
        with session_scope() as s:
            stuck = s.scalar(select(func.count()).select_from(AIRequestRow).where(
                AIRequestRow.id.in_(during), AIRequestRow.status == JobStatus.SUCCEEDED))
        assert stuck == 0  # the worker could not reach the database meanwhile
        proxy.up()
        wait_all_finished(during, timeout=120)
        succeeded, failed = assert_each_ran_once(first + during)
        assert (succeeded, failed) == (30, 0)
    finally:
        proxy.close()


def test_a_429_cools_the_provider_down_for_every_worker(queue_bed: QueueBed) -> None:
    """Two worker processes: after one of them meets a 429 with Retry-After: 2, no
    call reaches the provider from either of them until the 2 s have passed."""
    queue_bed.openai.latency = 0.1
    queue_bed.worker(concurrency=4, name="a@%h")
    queue_bed.worker(concurrency=4, name="b@%h")
    warm = [submit(f"warm {n}").id for n in range(8)]
    wait_all_finished(warm, timeout=30)
    queue_bed.openai.faults.push(Fault.rate_limit(retry_after=2))
    ids = [submit(f"storm {n}").id for n in range(40)]
    wait_all_finished(ids, timeout=60)
    calls = [r for r in queue_bed.openai.requests if r.path.endswith("/chat/completions")]
    t429 = next(r.at for r in calls[len(warm):] if r.at)  # the first storm call got the 429
    during = [r for r in calls if t429 + 0.3 < r.at < t429 + 1.8]
    # Calls already in flight when the 429 came may land just after it; none may start
    # well inside the cooldown window.
    assert during == [], f"{len(during)} calls during the cooldown"
    assert assert_each_ran_once(ids) == (40, 0)
