"""Codegen agent runs followed by real worker and beat processes, with Redis, PostgreSQL,
the fake Codegen API (rate limits on: 60 requests/30 s, creations limited) and a webhook
receiver that verifies every delivery with the standardwebhooks library.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.budget import reset_budgets
from app.core.cooldown import reset_cooldowns
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.db.session import session_scope
from app.jobs import (
    AgentRunHandle,
    UnknownRemoteRunError,
    resume_agent_run,
    submit_agent_run,
    track_agent_run,
)
from app.jobs.agent_runs.codegen import reset_gateways
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.webhook_receiver import Received, WebhookReceiver
from app.webhooks import register_endpoint
from tests.integration.agent_run_callbacks import CALLBACK, received
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration

#: The fake's creation window, scaled down from Codegen's 60 s so a test of the limit
#: takes seconds: still 10 creations per window, and ai-worker is told the same.
CREATE_WINDOW = 10.0


@dataclass
class AgentBed:
    queue: QueueBed
    codegen: FakeCodegenServer
    receiver: WebhookReceiver

    def start(self, **settings: Any) -> None:
        """Configure, then start one worker and one beat."""
        if settings:
            self.queue.configure(**settings)
        self.queue.worker(concurrency=6)
        self.queue.beat()

    def callbacks(self, run_id: int) -> list[tuple[object, object]]:
        return [(c["old"], c["new"]) for c in received(self.queue.redis) if c["run_id"] == run_id]

    def wait_callbacks(self, run_id: int, count: int, timeout: float = 60) -> list[tuple[Any, Any]]:
        deadline = time.monotonic() + timeout
        while len(got := self.callbacks(run_id)) < count:
            assert time.monotonic() < deadline, f"callbacks of run {run_id}: {got}"
            time.sleep(0.1)
        return got

    def webhooks(self, run_id: int) -> list[Received]:
        return [
            r for r in self.receiver.verified()
            if isinstance(r.data, dict) and r.data.get("agent_run_id") == run_id
        ]  # fmt: skip

    def wait_webhooks(self, run_id: int, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(got := self.webhooks(run_id)) < count:
            assert time.monotonic() < deadline, [(r.event_type, r.data) for r in got]
            time.sleep(0.1)
        return got


@pytest.fixture
def agent_bed(webhook_bed: QueueBed, receiver: WebhookReceiver) -> Iterator[AgentBed]:
    fake = FakeCodegenServer(
        pending_seconds=1.5, active_seconds=2.0, create_limit=(10, CREATE_WINDOW)
    ).start()
    webhook_bed.configure(
        CODEGEN_TOKEN=fake.token,
        CODEGEN_ORG_ID=fake.org_id,
        CODEGEN_BASE_URL=fake.url,
        CODEGEN_TIMEOUT=5,
        CODEGEN_MAX_RETRIES=5,
        CODEGEN_CREATE_WINDOW=CREATE_WINDOW,
        AIW_AGENT_POLL_SWEEP_INTERVAL=0.5,
        AIW_AGENT_POLL_INTERVAL=0.5,
        AIW_AGENT_POLL_MAX_INTERVAL=2,
        AIW_IMPORTS="tests.integration.callback_tasks,tests.integration.agent_run_callbacks",
    )
    reset_budgets()
    reset_gateways()
    reset_cooldowns()
    _, secret = register_endpoint(receiver.url, ["agent_run.*"])
    receiver.secret = secret
    yield AgentBed(webhook_bed, fake, receiver)
    webhook_bed.celery.stop_all()
    fake.stop()
    reset_budgets()
    reset_gateways()
    reset_cooldowns()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached after {timeout}s"
        time.sleep(0.1)


def kinds(handle: AgentRunHandle) -> list[str]:
    return sorted({a.kind for a in handle.artifacts()})


def _poll_messages(bed: AgentBed) -> int:
    worker = next(p for p in bed.queue.celery.processes if p.kind == "worker")
    return worker.log().count("Task aiw.agent_run.poll[")  # "received" lines: one a message


def test_the_poller_runs_while_runs_are_followed_and_is_quiet_otherwise(
    agent_bed: AgentBed,
) -> None:
    # Beat's tick (the safety net) an hour away: only the self-scheduled chain polls.
    agent_bed.start(AIW_AGENT_POLL_SWEEP_INTERVAL=3600, AIW_AGENT_RUN_LOGS=False)
    time.sleep(3)
    assert _poll_messages(agent_bed) == 0  # nothing followed: no poll message at all
    handle = submit_agent_run("Quiet when idle", repo_id=3)  # the creation wakes the chain
    record = handle.wait(timeout=30)
    assert (record.state, record.status) == (AgentRunState.FINISHED, "COMPLETE")
    while_followed = _poll_messages(agent_bed)
    assert while_followed >= 2  # the chain kept itself going until the end
    time.sleep(4)
    assert _poll_messages(agent_bed) - while_followed <= 1  # at most the tick in flight
    # A run tracked from here (not created by a worker) wakes the chain too.
    tracked = track_agent_run(agent_bed.codegen.add_run("tracked from outside"))
    assert tracked.wait(timeout=30).status == "COMPLETE"


def test_a_run_goes_pending_active_complete_with_callbacks_webhooks_and_artifacts(
    agent_bed: AgentBed,
) -> None:
    agent_bed.start()
    handle = submit_agent_run(
        "Fix the flaky test", repo_id=3, metadata={"ticket": "T-9"}, tags=["it"],
        callbacks=[CALLBACK],
    )  # fmt: skip
    assert agent_bed.wait_callbacks(handle.id, 3) == [
        (None, "PENDING"),
        ("PENDING", "ACTIVE"),
        ("ACTIVE", "COMPLETE"),
    ]
    record = handle.wait(timeout=30)
    assert (record.state, record.status) == (AgentRunState.FINISHED, "COMPLETE")
    assert record.result == "Done: Fix the flaky test"
    assert [(e.kind, e.old_status, e.new_status) for e in handle.events()] == [
        ("status_changed", None, "PENDING"),
        ("status_changed", "PENDING", "ACTIVE"),
        ("status_changed", "ACTIVE", "COMPLETE"),
    ]
    wait_for(lambda: "logs" in kinds(handle), 30, "the logs artifact")
    assert kinds(handle) == ["logs", "pull_request", "result", "summary"]
    (pr,) = [a for a in handle.artifacts() if a.kind == "pull_request"]
    assert pr.content and pr.content.startswith("https://github.com/")

    hooks = agent_bed.wait_webhooks(handle.id, 4)
    changes = [r.data for r in hooks if r.event_type == "agent_run.status_changed"]
    assert [(c["old_status"], c["new_status"]) for c in changes] == [
        (None, "PENDING"),
        ("PENDING", "ACTIVE"),
        ("ACTIVE", "COMPLETE"),
    ]  # fmt: skip, and in the order they arrived
    (completed,) = [r.data for r in hooks if r.event_type == "agent_run.completed"]
    assert completed["result"] == "Done: Fix the flaky test" and completed["web_url"]
    assert completed["pull_requests"][0]["url"] == pr.content
    assert completed["tags"] == ["it"] and completed["metadata"] == {"ticket": "T-9"}
    assert len({r.webhook_id for r in hooks}) == 4  # one delivery each, all verified
    assert agent_bed.codegen.rate_limited_count == 0
    assert agent_bed.codegen.run_count == 1


def test_a_failed_run(agent_bed: AgentBed) -> None:
    agent_bed.codegen.default_outcome = "FAILED"
    agent_bed.start()
    handle = submit_agent_run("This will not work", callbacks=[CALLBACK])
    assert agent_bed.wait_callbacks(handle.id, 3)[-1] == ("ACTIVE", "FAILED")
    record = handle.wait(timeout=30)
    assert (record.state, record.status) == (AgentRunState.FINISHED, "FAILED")
    hooks = agent_bed.wait_webhooks(handle.id, 4)
    (failed,) = [r.data for r in hooks if r.event_type == "agent_run.failed"]
    assert failed["status"] == "FAILED" and "ended FAILED" in failed["summary"]
    assert failed["pull_requests"] == []
    assert not [r for r in hooks if r.event_type == "agent_run.completed"]


def test_an_unknown_remote_run_is_refused_and_nothing_is_written(agent_bed: AgentBed) -> None:
    with pytest.raises(UnknownRemoteRunError):
        track_agent_run(987654)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(AgentRunRow)) == 0


def test_codegen_trouble_keeps_the_last_status_and_the_run_completes_later(
    agent_bed: AgentBed,
) -> None:
    fake = agent_bed.codegen
    agent_bed.start()
    remote = fake.add_run("outside", pending_seconds=2.0, active_seconds=8.0)
    handle = track_agent_run(remote, callbacks=[CALLBACK])
    wait_for(lambda: handle.status() == "ACTIVE", 30, "ACTIVE")
    # Now Codegen answers every request badly for a while.
    fake.faults.set_random(
        1.0, [Fault.rate_limit(), Fault.status_code(503), Fault.bad_json()], seed=3
    )
    trouble_until = time.monotonic() + 5
    worst = 0
    while time.monotonic() < trouble_until:
        record = handle.get()
        assert (record.state, record.status) == (AgentRunState.ACTIVE, "ACTIVE")
        with session_scope() as s:
            worst = max(worst, s.scalar(select(AgentRunRow.poll_failures)) or 0)
        time.sleep(0.2)
    assert worst >= 1 and fake.faults.applied, "the poller did not meet the trouble"
    assert handle.get().last_poll_error
    fake.faults.clear()
    record = handle.wait(timeout=60)
    assert (record.state, record.status) == (AgentRunState.FINISHED, "COMPLETE")
    assert record.error_type is None and record.last_poll_error is None
    assert agent_bed.wait_callbacks(handle.id, 3) == [
        (None, "PENDING"),
        ("PENDING", "ACTIVE"),
        ("ACTIVE", "COMPLETE"),
    ]
    with session_scope() as s:  # nothing else was marked failed or stuck meanwhile
        states = set(s.scalars(select(AgentRunRow.state)))
    assert states == {"finished"}


def test_creations_at_once_stay_within_codegens_limit(agent_bed: AgentBed) -> None:
    agent_bed.start()
    handles = [submit_agent_run(f"task {n}", callbacks=[CALLBACK]) for n in range(14)]
    wait_for(lambda: all(h.status() is not None for h in handles), 90, "every run created")
    fake = agent_bed.codegen
    assert fake.rate_limited_count == 0  # no 429, creations or polls
    assert fake.run_count == 14 == fake.request_count("/agent/run", method="POST")
    assert len({h.get().remote_id for h in handles}) == 14
    created = sorted(r.at for r in fake.requests if r.method == "POST")
    # 10 per window at most, as Codegen counts them (a sliding window)
    assert (
        max(sum(1 for t in created if start <= t < start + CREATE_WINDOW) for start in created)
        <= 10
    )
    for handle in handles:
        assert handle.wait(timeout=60).status == "COMPLETE"
    assert fake.rate_limited_count == 0


def test_resume_sends_a_follow_up_and_the_run_is_followed_to_its_new_end(
    agent_bed: AgentBed,
) -> None:
    agent_bed.start()
    handle = submit_agent_run("First part", callbacks=[CALLBACK])
    assert handle.wait(timeout=60).status == "COMPLETE"
    resume_agent_run(handle.id, "Second part")
    wait_for(lambda: handle.get().resume_count == 1, 30, "the resume")
    record = handle.wait(timeout=60)
    assert (record.state, record.status, record.resume_count) == ("finished", "COMPLETE", 1)
    assert agent_bed.wait_callbacks(handle.id, 5)[-2:] == [
        ("COMPLETE", "ACTIVE"),
        ("ACTIVE", "COMPLETE"),
    ]
    remote = record.remote_id
    assert remote is not None
    assert agent_bed.codegen.run_request(remote)["prompts"] == ["First part", "Second part"]
    assert "resumed" in [e.kind for e in handle.events()]
    assert agent_bed.codegen.run_count == 1


def test_a_run_past_its_deadline_is_reported_stuck(agent_bed: AgentBed) -> None:
    fake = agent_bed.codegen
    remote = fake.add_run("never ends", pending_seconds=3600)
    agent_bed.start(AIW_AGENT_RUN_DEADLINE=2)
    handle = track_agent_run(remote)
    record = handle.wait(timeout=30)
    assert (record.state, record.status) == (AgentRunState.STUCK, "PENDING")
    hooks = agent_bed.wait_webhooks(handle.id, 2)
    assert [r.event_type for r in hooks] == ["agent_run.status_changed", "agent_run.stuck"]
    assert hooks[1].data["deadline_at"] and hooks[1].data["status"] == "PENDING"
    polls = fake.request_count(f"/agent/run/{remote}")
    time.sleep(2)
    assert fake.request_count(f"/agent/run/{remote}") == polls  # no longer polled
