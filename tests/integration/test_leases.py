"""Jobs that outlast a worker: heartbeat leases, lost calls, answers kept through a
database cut, a stop within the grace. Real worker and beat processes, Redis,
PostgreSQL (through a TCP proxy that can cut it) and the fake OpenAI server.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app.core.budget import reset_budgets
from app.core.cooldown import reset_cooldowns
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus
from app.db.session import session_scope
from app.db.webhook_models import DeliveryStatus, WebhookAttemptRow, WebhookDeliveryRow
from app.jobs import submit, submit_agent_run, usage_stats
from app.jobs.agent_runs.codegen import reset_gateways
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import register_endpoint
from tests.integration.test_queue import assert_each_ran_once, wait_all_finished
from tests.plugins.queue import QueueBed
from tests.plugins.services import TcpProxy

pytestmark = pytest.mark.integration


def outcomes(ids: list[uuid.UUID]) -> Counter[str]:
    with session_scope() as s:
        return Counter(s.scalars(select(AttemptRow.outcome).where(AttemptRow.request_id.in_(ids))))


def count_succeeded(ids: list[uuid.UUID]) -> int:
    with session_scope() as s:
        return (
            s.scalar(
                select(func.count())
                .select_from(AIRequestRow)
                .where(AIRequestRow.id.in_(ids), AIRequestRow.status == JobStatus.SUCCEEDED)
            )
            or 0
        )


def calls(bed: QueueBed) -> int:
    return len(bed.openai.chat_requests())


def test_kill_9_every_job_ends_within_90_s_of_a_new_worker_and_lost_calls_show(
    queue_bed: QueueBed,
) -> None:
    """The default lease (30 s) and a production-like sweep interval (15 s)."""
    queue_bed.openai.latency = 1.5
    queue_bed.configure(AIW_SWEEP_INTERVAL=15)
    doomed = queue_bed.worker(concurrency=50)
    ids = [submit(f"in flight {n}").id for n in range(200)]
    deadline = time.monotonic() + 20
    while calls(queue_bed) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    doomed.kill9()
    calls_at_kill = calls(queue_bed)
    done_at_kill = count_succeeded(ids)
    assert calls_at_kill >= 50 and done_at_kill < 100, (calls_at_kill, done_at_kill)
    queue_bed.openai.latency = 0.0
    queue_bed.worker(concurrency=16)
    queue_bed.beat()
    wait_all_finished(ids, timeout=90)  # the lease and one sweep, not the task time limit
    assert assert_each_ran_once(ids) == (200, 0)
    seen = outcomes(ids)
    # Every call the dead worker had in flight is an attempt row: lost, possibly billed.
    assert seen[AttemptOutcome.LOST] >= calls_at_kill - done_at_kill > 0, seen
    assert seen[AttemptOutcome.STARTED] == 0
    assert calls(queue_bed) <= sum(n for o, n in seen.items() if o != AttemptOutcome.DEFERRED)
    stats = usage_stats(group_by=("provider",))
    assert stats[0]["lost"] == seen[AttemptOutcome.LOST]


def test_a_database_cut_loses_no_answer_already_received(queue_bed: QueueBed) -> None:
    """Answers that arrive while PostgreSQL is unreachable are kept and recorded when it
    is back: the provider is asked once per job, never again."""
    real = make_url(queue_bed.db_url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    try:
        worker_url = real.set(port=proxy.port).render_as_string(hide_password=False)
        queue_bed.celery.worker(dict(queue_bed.env, DATABASE_URL=worker_url), concurrency=20)
        queue_bed.openai.latency = 1.5
        ids = [submit(f"answered during the cut {n}").id for n in range(20)]
        deadline = time.monotonic() + 20
        while calls(queue_bed) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert calls(queue_bed) == 20, "the calls did not get in flight"
        proxy.down()  # every answer comes back while the database is away
        time.sleep(4)
        assert count_succeeded(ids) == 0
        proxy.up()
        wait_all_finished(ids, timeout=60)
        assert assert_each_ran_once(ids) == (20, 0)
        assert calls(queue_bed) == 20  # nothing paid twice
        assert outcomes(ids) == Counter({AttemptOutcome.SUCCEEDED: 20})
    finally:
        proxy.close()


def test_sigterm_hands_running_calls_back_within_the_grace(queue_bed: QueueBed) -> None:
    """A threads-pool worker whose calls outlast its grace stops within it; another
    worker finishes every job once."""
    queue_bed.openai.latency = 30.0
    queue_bed.configure(AIW_SHUTDOWN_GRACE=2)
    stopping = queue_bed.worker(concurrency=10)
    ids = [submit(f"slow {n}").id for n in range(10)]
    deadline = time.monotonic() + 20
    while calls(queue_bed) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    stopping.stop(timeout=15)
    took = time.monotonic() - t0
    assert stopping.proc.returncode is not None and took < 10, took
    assert "handed back" in stopping.log()
    queue_bed.openai.latency = 0.0
    queue_bed.worker(concurrency=8)
    queue_bed.beat()
    wait_all_finished(ids, timeout=60)
    assert assert_each_ran_once(ids) == (10, 0)
    seen = outcomes(ids)
    assert seen[AttemptOutcome.LOST] == 10 and seen[AttemptOutcome.SUCCEEDED] == 10, seen


def test_kill_9_holding_deliveries_and_agent_run_creations_every_one_ends_once(
    webhook_bed: QueueBed, receiver: WebhookReceiver
) -> None:
    """A worker dies while it sends webhooks and creates Codegen runs: each delivery
    succeeds once and each creation makes exactly one remote run (the next try finds
    the marker of the run the dead worker's request created)."""
    codegen = FakeCodegenServer(latency=3.0, pending_seconds=0.5, active_seconds=0.5).start()
    try:
        webhook_bed.configure(
            CODEGEN_TOKEN=codegen.token,
            CODEGEN_ORG_ID=codegen.org_id,
            CODEGEN_BASE_URL=codegen.url,
            CODEGEN_TIMEOUT=10,
            AIW_LEASE=3,
            AIW_HEARTBEAT_INTERVAL=1,
            AIW_AGENT_POLL_SWEEP_INTERVAL=0.5,
            AIW_AGENT_POLL_INTERVAL=0.5,
            AIW_AGENT_RUN_LOGS="false",
        )
        for reset in (reset_budgets, reset_gateways, reset_cooldowns):
            reset()
        _, receiver.secret = register_endpoint(receiver.url, ["ai_request.succeeded"])
        receiver.latency = 3.0
        doomed = webhook_bed.worker(concurrency=20)
        jobs = [submit(f"then a webhook {n}").id for n in range(8)]
        runs = [submit_agent_run(f"create me {n}").id for n in range(4)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            len(receiver.requests) >= 4 and len(codegen.requests) >= 4
        ):
            time.sleep(0.05)
        doomed.kill9()
        assert receiver.verified() == [] and codegen.run_count == 0  # all still in flight
        receiver.latency = codegen.latency = 0.0
        webhook_bed.worker(concurrency=8)
        webhook_bed.beat()
        wait_all_finished(jobs, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with session_scope() as s:
                pending = s.scalar(
                    select(func.count())
                    .select_from(WebhookDeliveryRow)
                    .where(WebhookDeliveryRow.status != DeliveryStatus.SUCCEEDED)
                )
                states = set(s.scalars(select(AgentRunRow.state).where(AgentRunRow.id.in_(runs))))
            if pending == 0 and states == {AgentRunState.FINISHED}:
                break
            time.sleep(0.2)
        with session_scope() as s:
            left = [
                (d.status, d.claim_token, d.lease_expires_at, d.published_at, d.next_attempt_at,
                 d.attempt_count, d.created_at)
                for d in s.scalars(select(WebhookDeliveryRow).where(
                    WebhookDeliveryRow.status != DeliveryStatus.SUCCEEDED))
            ]  # fmt: skip
        assert pending == 0 and states == {AgentRunState.FINISHED}, (pending, states, left)
        with session_scope() as s:
            deliveries = list(s.scalars(select(WebhookDeliveryRow)))
            ok = Counter(
                s.scalars(
                    select(WebhookAttemptRow.delivery_id).where(
                        WebhookAttemptRow.status_code == 200
                    )
                )
            )
        assert len(deliveries) == 8 and all(ok[d.id] == 1 for d in deliveries), ok
        # The receiver may have seen a delivery twice (the dead worker's POST arrived):
        # the same webhook-id both times, its idempotency key.
        assert {r.webhook_id for r in receiver.verified()} == {d.event_id for d in deliveries}
        assert codegen.run_count == 4  # never a second remote run
    finally:
        codegen.stop()
