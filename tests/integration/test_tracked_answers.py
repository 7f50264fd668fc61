"""AI requests answered by Codegen, through real worker and beat processes: each job is a
tracked agent run (no thread waits for it), runs outlast the lease, the stand-in
enforces Codegen's limits, and a webhook receiver verifies every delivery.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from app.core.budget import reset_budgets
from app.core.cooldown import reset_cooldowns
from app.db.agent_run_models import AgentRunRow
from app.db.models import AttemptRow, JobStatus
from app.db.session import session_scope
from app.jobs import get_job, submit
from app.jobs.agent_runs.codegen import reset_gateways
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import register_endpoint
from tests.integration.test_queue import wait_all_finished
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration

#: The fake's creation window, scaled down from Codegen's 60 s (still 10 creations a
#: window; ai-worker is told the same). The standard limit is Codegen's: 60 per 30 s.
CREATE_WINDOW = 10.0


@pytest.fixture
def codegen_bed(
    webhook_bed: QueueBed, receiver: WebhookReceiver
) -> Iterator[tuple[QueueBed, FakeCodegenServer]]:
    fake = FakeCodegenServer(create_limit=(10, CREATE_WINDOW)).start()
    fake.random_durations(4.0, 8.0, seed=12)  # every run outlasts the 2 s lease
    webhook_bed.configure(
        CODEGEN_TOKEN=fake.token,
        CODEGEN_ORG_ID=fake.org_id,
        CODEGEN_BASE_URL=fake.url,
        CODEGEN_TIMEOUT=5,
        CODEGEN_CREATE_WINDOW=CREATE_WINDOW,
        PREFER_CODEGEN="true",
        AIW_LEASE=2,
        AIW_HEARTBEAT_INTERVAL=1,
        AIW_SHUTDOWN_GRACE=10,
        AIW_AGENT_POLL_SWEEP_INTERVAL=0.5,
        AIW_AGENT_POLL_INTERVAL=1,
        AIW_AGENT_POLL_MAX_INTERVAL=2,
        AIW_AGENT_RUN_LOGS="false",
    )
    for reset in (reset_budgets, reset_gateways, reset_cooldowns):
        reset()
    _, secret = register_endpoint(receiver.url, ["ai_request.*"])
    receiver.secret = secret
    yield webhook_bed, fake
    webhook_bed.celery.stop_all()
    fake.stop()
    for reset in (reset_budgets, reset_gateways, reset_cooldowns):
        reset()


def test_codegen_answers_outlast_the_lease_one_run_each_no_429_and_a_quick_stop(
    codegen_bed: tuple[QueueBed, FakeCodegenServer], receiver: WebhookReceiver
) -> None:
    bed, codegen = codegen_bed
    first = bed.worker(concurrency=8)
    bed.beat()
    ids = [
        submit(f"Fix issue {n}", tags=["tracked"], callback="tests.callback.record").id
        for n in range(12)
    ]
    # Once every job waits on its run, the worker holds nothing: it stops at once.
    deadline = time.monotonic() + 60
    while Counter(get_job(i).status for i in ids)[JobStatus.AWAITING_RUN] < 6:
        assert time.monotonic() < deadline, Counter(get_job(i).status for i in ids)
        time.sleep(0.2)
    t0 = time.monotonic()
    first.stop(timeout=20)
    assert time.monotonic() - t0 < 10, "a worker with Codegen-answered jobs waiting stops at once"
    assert first.proc.returncode is not None
    bed.worker(concurrency=8)

    statuses = wait_all_finished(ids, timeout=150)
    assert set(statuses.values()) == {JobStatus.SUCCEEDED}
    # Exactly one remote run per job, and ai-worker never caused a 429.
    assert codegen.run_count == 12
    assert codegen.rate_limited_count == 0
    with session_scope() as s:
        runs = list(s.scalars(select(AgentRunRow).where(AgentRunRow.ai_request_id.in_(ids))))
        attempts = list(s.scalars(select(AttemptRow).where(AttemptRow.request_id.in_(ids))))
    assert sorted(r.ai_request_id for r in runs) == sorted(ids)
    assert len({r.remote_id for r in runs}) == 12
    assert Counter(a.outcome for a in attempts) == Counter({"succeeded": 12})
    for job_id in ids:
        answer = get_job(job_id).response()
        assert answer is not None and answer.provider_name == "codegen"
        assert answer.content.startswith("Done:") and answer.metadata["web_url"]
    # Every job's end reached the receiver, signed, once.
    deadline = time.monotonic() + 30
    while len(receiver.verified()) < 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    ended = [r for r in receiver.verified() if r.event_type == "ai_request.succeeded"]
    assert sorted(str(r.data["id"]) for r in ended) == sorted(str(i) for i in ids)
