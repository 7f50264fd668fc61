"""Spend budgets held by several real worker processes at once: PostgreSQL, Redis,
three Celery workers of several threads each, and the fake OpenAI server.

Many jobs race for a small daily cap. Whatever the concurrency, the spend never passes
the cap by more than the calls' estimate errors (none here: with ``max_tokens`` the
estimate is an upper bound), ``wait`` jobs wait for the next UTC day without failing,
``fail`` jobs fail with the reason in their attempt row, never both, and nothing is
called twice or left reserved.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import func, select

from app.ai.base import AIRequest
from app.config import get_settings
from app.db.budget_models import BudgetReservationRow
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus, UsageRow
from app.db.session import session_scope
from app.jobs import budgets, set_budget, spend, submit
from tests.integration.test_queue import assert_each_ran_once
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration

PROMPT = "write a short poem about spend budgets"
MAX_TOKENS = 40
JOBS_PER_BUDGET = 40
CAP_IN_ESTIMATES = 8


def settled(ids: list[uuid.UUID], window_end: object, timeout: float) -> dict[uuid.UUID, str]:
    """Wait until every job has ended or waits for the next window."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as s:
            rows = s.execute(
                select(AIRequestRow.id, AIRequestRow.status, AIRequestRow.next_attempt_at).where(
                    AIRequestRow.id.in_(ids)
                )
            ).all()
            reserved = s.scalar(select(func.count()).select_from(BudgetReservationRow))
        pending = [
            st
            for _, st, due in rows
            if not JobStatus(st).is_terminal
            and not (st == JobStatus.WAITING and due is not None and due >= window_end)
        ]
        if not pending and not reserved:
            return {job_id: st for job_id, st, _ in rows}
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled after {timeout} s: {Counter(pending)}")
        time.sleep(0.25)


def spent_by(ids: list[uuid.UUID]) -> float:
    with session_scope() as s:
        total = s.scalar(
            select(func.coalesce(func.sum(UsageRow.cost_usd), 0)).where(
                UsageRow.request_id.in_(ids)
            )
        )
    return float(total or 0)


def attempts_of(ids: list[uuid.UUID]) -> list[AttemptRow]:
    with session_scope() as s:
        rows = list(s.scalars(select(AttemptRow).where(AttemptRow.request_id.in_(ids))))
        s.expunge_all()
    return rows


def test_a_daily_cap_holds_across_worker_processes(queue_bed: QueueBed) -> None:
    fake = queue_bed.openai
    fake.latency = 0.2
    fake.responder = lambda body: " ".join(["word"] * 2 * MAX_TOKENS)  # cut at max_tokens
    estimate = spend.estimate(
        AIRequest(prompt=PROMPT, max_tokens=MAX_TOKENS), "gpt-4o-mini", get_settings()
    )
    assert estimate is not None
    cap = estimate * CAP_IN_ESTIMATES
    set_budget(cap, tag="team-wait", per="day", policy="wait")
    set_budget(cap, tag="team-fail", per="day", policy="fail")
    set_budget(1000, per="month")  # a global budget every job must fit too
    for _ in range(3):
        queue_bed.worker(concurrency=6)
    waiters, failers = [], []
    for _ in range(JOBS_PER_BUDGET):
        waiters.append(submit(PROMPT, max_tokens=MAX_TOKENS, tags=["team-wait"]).id)
        failers.append(submit(PROMPT, max_tokens=MAX_TOKENS, tags=["team-fail"]).id)
    listed = {b.name: b for b in budgets()}
    tomorrow = listed["tag:team-wait/day"].window_end
    statuses = settled(waiters + failers, tomorrow, timeout=50)

    succeeded, _ = assert_each_ran_once(waiters + failers)
    assert len(fake.chat_requests()) == succeeded  # nothing called twice, nothing lost
    listed = {b.name: b for b in budgets()}
    for name, ids in (("tag:team-wait/day", waiters), ("tag:team-fail/day", failers)):
        spent = spent_by(ids)
        budget = listed[name]
        # Never past the cap (the estimate is an upper bound here), and the cap is used:
        # what is left is less than two calls' worth.
        assert spent <= cap + 1e-12, (name, spent, cap)
        assert spent > cap - 2 * estimate, (name, spent, cap)
        assert budget.spent_usd == pytest.approx(spent) and budget.reserved_usd == 0
    assert listed["global/month"].spent_usd == pytest.approx(spent_by(waiters + failers))

    wait_status = Counter(statuses[i] for i in waiters)
    fail_status = Counter(statuses[i] for i in failers)
    assert set(wait_status) == {JobStatus.SUCCEEDED, JobStatus.WAITING}, wait_status
    assert set(fail_status) == {JobStatus.SUCCEEDED, JobStatus.FAILED}, fail_status

    # Wait: deferred (never failed), the attempt says until when and why.
    for attempt in attempts_of([i for i in waiters if statuses[i] == JobStatus.WAITING]):
        assert attempt.outcome in (AttemptOutcome.DEFERRED,), attempt.outcome
    last = {}
    for attempt in sorted(attempts_of(waiters), key=lambda a: a.number):
        last[attempt.request_id] = attempt
    for job_id in waiters:
        if statuses[job_id] == JobStatus.WAITING:
            detail = last[job_id].detail or ""
            assert "tag:team-wait/day" in detail and "waits for the next window" in detail
            assert tomorrow.isoformat() in detail
    # Fail: failed with the reason, and never waited for the next window.
    for attempt in attempts_of(failers):
        assert "waits for the next window" not in (attempt.detail or "")
        if attempt.outcome == AttemptOutcome.FAILED:
            assert attempt.error_type == "BudgetExceededError"
            assert "tag:team-fail/day" in (attempt.error_message or "")
    with session_scope() as s:
        errors = Counter(
            s.scalars(
                select(AIRequestRow.error_type).where(
                    AIRequestRow.id.in_(failers), AIRequestRow.status == JobStatus.FAILED
                )
            )
        )
    assert set(errors) == {"BudgetExceededError"}, errors


def test_a_dead_workers_reservations_are_settled_as_possibly_billed(
    queue_bed: QueueBed,
) -> None:
    fake = queue_bed.openai
    fake.latency = 3.0
    queue_bed.configure(AIW_LEASE=3, AIW_HEARTBEAT_INTERVAL=1)
    estimate = spend.estimate(
        AIRequest(prompt=PROMPT, max_tokens=MAX_TOKENS), "gpt-4o-mini", get_settings()
    )
    assert estimate is not None
    set_budget(1, tag="team-a")
    doomed = queue_bed.worker(concurrency=4)
    ids = [submit(PROMPT, max_tokens=MAX_TOKENS, tags=["team-a"]).id for _ in range(4)]
    deadline = time.monotonic() + 20
    while len(fake.chat_requests()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert budgets()[0].reserved_usd == pytest.approx(4 * estimate)
    doomed.kill9()  # four calls in flight, four reservations held
    fake.latency = 0.0
    queue_bed.worker(concurrency=4)
    queue_bed.beat()
    tomorrow = budgets()[0].window_end
    statuses = settled(ids, tomorrow, timeout=45)
    assert set(statuses.values()) == {JobStatus.SUCCEEDED}
    lost = sum(a.outcome == AttemptOutcome.LOST for a in attempts_of(ids))
    assert lost == 4
    (budget,) = budgets()
    # The lost calls count their estimate (possibly billed), the answers their cost.
    assert budget.reserved_usd == 0
    assert budget.spent_usd == pytest.approx(spent_by(ids) + lost * estimate)
