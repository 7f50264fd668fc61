"""Admission with real worker processes: three Celery workers, PostgreSQL, one shared
Redis, and the fake OpenAI enforcing 60 requests and 20,000 tokens per "minute".

The minute is scaled down to ``WINDOW`` seconds on both sides (the fake's sliding window
and ``AIW_RATE_WINDOW``) while the numbers stay the same: the same requests and tokens
per window, the same headers, the same bucket shapes, on a faster clock. Nothing about
admission depends on the window being 60 s, so what passes here passes at full scale,
20 times slower.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import select

from app.db.models import AttemptOutcome, AttemptRow, JobStatus
from app.db.session import session_scope
from app.jobs import submit
from tests.integration.test_queue import assert_each_ran_once, wait_all_finished
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration

WINDOW = 3.0  # seconds of the scaled "minute"
MARGIN = 0.5
JOBS = 500
RPM, TPM = 60, 20_000
WORDS = 150  # per prompt: 150 prompt + 151 answer tokens (the fake counts words)


def test_three_workers_push_500_jobs_under_60_rpm_and_20000_tpm_without_a_429(
    queue_bed: QueueBed,
) -> None:
    fake = queue_bed.openai
    fake.rate_limit_requests, fake.rate_limit_tokens = RPM, TPM
    fake.rate_limit_window = WINDOW
    queue_bed.configure(
        AIW_RATE_LIMITS=f"openai={RPM}rpm,{TPM}tpm",
        AIW_RATE_WINDOW=WINDOW,
        AIW_RATE_MARGIN=MARGIN,
        AIW_WORKER_CONCURRENCY=8,
    )
    for _ in range(3):
        queue_bed.worker(concurrency=8)

    started = time.monotonic()
    ids = [
        # Words of 3 characters: the estimate (characters / 4) is about the fake's count.
        submit(" ".join(f"{job % 97:02d}{i % 10}" for i in range(WORDS)), max_tokens=WORDS + 10).id
        for job in range(JOBS)
    ]
    submitted = time.monotonic() - started
    statuses = wait_all_finished(ids, timeout=150)
    took = time.monotonic() - started

    assert Counter(statuses.values()) == {JobStatus.SUCCEEDED: JOBS}
    assert assert_each_ran_once(ids) == (JOBS, 0)
    assert fake.rate_limited == 0, f"the fake answered {fake.rate_limited} 429s"
    assert len(fake.chat_requests()) == JOBS  # one call per job, none refused
    with session_scope() as s:
        outcomes = Counter(s.scalars(select(AttemptRow.outcome)))
    tokens = JOBS * (2 * WORDS + 1)
    # What the limits allow at best (a full window at once, then the limit's pace), and
    # the pace of the buckets (10 % burst, then 90 % per window + margin).
    ideal = max((JOBS - RPM) / RPM, (tokens - TPM) / TPM) * WINDOW
    pace = (JOBS - RPM * 0.1) / (RPM * 0.9 / (WINDOW + MARGIN))
    print(
        f"\n{JOBS} jobs, 3 workers, {RPM} requests and {TPM} tokens per {WINDOW:g} s: "
        f"submitted in {submitted:.1f} s, all done in {took:.1f} s (the limits allow "
        f"{ideal:.1f} s at best; the buckets' pace {pace:.1f} s); 429s: {fake.rate_limited};"
        f" attempts: {dict(outcomes)}"
    )
    assert outcomes[AttemptOutcome.SUCCEEDED] == JOBS
    assert outcomes[AttemptOutcome.RETRY] == 0  # no job met a 429 or needed a retry
    assert took >= ideal  # it really was held to the limit (not a vacuous pass)
