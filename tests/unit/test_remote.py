"""AI requests answered by a tracked Codegen agent run, one step at a time: the runner
hands the job to a tracked run, the creation and poll steps run it, and the run's end
finishes (or hands on) the job. SQLite, the fake Codegen and OpenAI servers over HTTP,
the broker replaced by a recording publisher. The real worker path is in
tests/integration/test_tracked_answers.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.budget import reset_budgets
from app.core.cooldown import reset_cooldowns
from app.core.errors import InvalidRequestError
from app.core.lease import reset_leases
from app.core.publisher import set_publisher
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.db.models import AIRequestRow, ArtifactRow, JobStatus, UsageRow
from app.db.session import dispose_engines, session_scope
from app.jobs import cancel, get_attempts, get_job, submit, submit_agent_run
from app.jobs.agent_runs.actions import create_run
from app.jobs.agent_runs.codegen import reset_gateways
from app.jobs.agent_runs.constants import TASK_CREATE
from app.jobs.agent_runs.poller import poll
from app.jobs.runner import reset_providers, run_job
from app.jobs.sweep import sweep
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer


class RecordingPublisher:
    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.tasks: list[tuple[str, list[object]]] = []

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        self.jobs.append(job_id)

    def send_callback(self, task_name: str, args: list[object]) -> None:
        self.tasks.append((task_name, args))

    def ensure_routes(self) -> None:
        pass

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        pass

    def take(self, name: str) -> list[list[object]]:
        taken = [args for task, args in self.tasks if task == name]
        self.tasks = [(task, args) for task, args in self.tasks if task != name]
        return taken


@pytest.fixture
def bed(
    migrated_sqlite_url: str,
    codegen_env: FakeCodegenServer,
    openai_env: FakeOpenAIServer,
    env: Callable[..., None],
) -> Iterator[RecordingPublisher]:
    env(
        DATABASE_URL=migrated_sqlite_url,
        AIW_AGENT_POLL_INTERVAL=0.05,
        AIW_AGENT_POLL_MAX_INTERVAL=1,
        AIW_AGENT_RUN_LOGS="false",
        CODEGEN_MAX_RETRIES=2,
        PREFER_CODEGEN="true",
    )
    publisher = RecordingPublisher()
    set_publisher(publisher)
    for reset in (reset_budgets, reset_gateways, reset_cooldowns, reset_leases, reset_providers):
        reset()
    _continuation.clear()
    yield publisher
    set_publisher(None)
    for reset in (reset_budgets, reset_gateways, reset_cooldowns, reset_leases, reset_providers):
        reset()
    dispose_engines()


_continuation: dict[str, Any] = {}


def step(pub: RecordingPublisher) -> None:
    """What the workers would do next: run published jobs and creations, one poll step
    (a round short of budget goes on where it stopped, as its task would)."""
    while pub.jobs:
        run_job(pub.jobs.pop(0))
    for (run_id,) in pub.take(TASK_CREATE):
        outcome = create_run(int(str(run_id)))
        if outcome.action == "retry":
            time.sleep(outcome.countdown or 0)
            pub.tasks.append((TASK_CREATE, [run_id]))
    due = _continuation.pop("at", None)
    if due is not None and time.monotonic() < due:
        _continuation["at"] = due
        return
    polled = poll(_continuation.pop("token", None), _continuation.pop("cursor", 0))
    if polled.countdown is not None:
        _continuation.update(
            at=time.monotonic() + polled.countdown, token=polled.token, cursor=polled.cursor
        )


def drive(pub: RecordingPublisher, job_id: uuid.UUID, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if job.is_finished:
            return job
        step(pub)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {get_job(job_id).status}")


def runs_of(job_id: uuid.UUID) -> list[AgentRunRow]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(AgentRunRow)
                .where(AgentRunRow.ai_request_id == job_id)
                .order_by(AgentRunRow.id)
            )
        )


def test_a_codegen_answer_is_a_tracked_run_and_no_worker_waits_for_it(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, openai_env: FakeOpenAIServer
) -> None:
    handle = submit(
        "Add a CHANGELOG entry", system_prompt="Be brief.", callback="my.callback",
        repo_id=7, tags=["release"],
    )  # fmt: skip
    bed.jobs.clear()
    outcome = run_job(handle.id)
    # The job waits in the database: no claim, no lease, no message; a run is queued.
    assert outcome.action == "done" and outcome.status == JobStatus.AWAITING_RUN
    job = get_job(handle.id)
    assert job.status == JobStatus.AWAITING_RUN and job.agent_run_id is not None
    with session_scope() as s:
        row = s.get(AIRequestRow, handle.id)
        assert row is not None and row.claim_token is None and row.lease_expires_at is None
    (run,) = runs_of(handle.id)
    assert run.state == AgentRunState.CREATING and run.source == "ai_request"
    assert "## Instructions" in (run.prompt or "") and run.repo_id == 7
    assert bed.tasks == [(TASK_CREATE, [run.id])]
    assert [(a.outcome, a.agent_run_id) for a in get_attempts(handle.id)] == [("started", run.id)]
    # A redelivered message, or the sweep, changes nothing: the run finishes the job.
    assert run_job(handle.id).action == "skipped"
    assert sweep() == 0

    done = drive(bed, handle.id)
    assert done.status == JobStatus.SUCCEEDED and done.provider_used == "codegen"
    answer = done.response()
    assert answer is not None and answer.content.startswith("Done:")
    assert answer.metadata["web_url"] and answer.metadata["tracked_run_id"] == run.id
    assert answer.metadata["pull_requests"]
    (attempt,) = get_attempts(handle.id)
    assert attempt.outcome == "succeeded" and attempt.latency_s and attempt.latency_s > 0
    assert codegen_env.run_count == 1 and openai_env.chat_requests() == []
    with session_scope() as s:
        usage = s.scalar(select(func.count()).select_from(UsageRow))
        linked = set(s.scalars(select(ArtifactRow.kind).where(ArtifactRow.request_id == handle.id)))
    assert usage == 1
    assert {"result", "pull_request"} <= linked
    assert ("my.callback", [str(handle.id)]) in bed.tasks


def test_a_failed_run_hands_over_to_the_next_provider(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, openai_env: FakeOpenAIServer
) -> None:
    codegen_env.default_outcome = "FAILED"
    handle = submit("fall back from a failed run")
    done = drive(bed, handle.id)
    assert done.status == JobStatus.SUCCEEDED and done.provider_used == "openai"
    assert [(a.provider, a.outcome, a.error_type) for a in get_attempts(handle.id)] == [
        ("codegen", "failed", "AgentRunFailedError"),
        ("openai", "succeeded", None),
    ]
    assert codegen_env.run_count == 1


def test_a_refused_creation_keeps_codegens_error_and_a_forced_provider_fails(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, openai_env: FakeOpenAIServer
) -> None:
    codegen_env.faults.push(Fault.status_code(403))
    handle = submit("codegen only", provider="codegen")
    done = drive(bed, handle.id)
    assert done.status == JobStatus.FAILED
    assert done.error_type == "ProviderAuthenticationError"
    assert openai_env.chat_requests() == []
    (run,) = runs_of(handle.id)
    assert run.state == AgentRunState.CREATE_FAILED


def test_a_run_stuck_past_its_deadline_fails_the_job_clearly(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(AIW_AGENT_RUN_DEADLINE=0.5)
    codegen_env.active_seconds = 3600
    handle = submit("never ends", provider="codegen")
    done = drive(bed, handle.id)
    assert done.status == JobStatus.FAILED and done.error_type == "AgentRunTimeoutError"
    assert "deadline" in (done.error_message or "")
    (run,) = runs_of(handle.id)
    assert run.state == AgentRunState.STUCK


def test_cancel_stops_waiting_and_the_run_is_still_followed(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    handle = submit("cancel me", provider="codegen")
    while (
        get_job(handle.id).status != JobStatus.AWAITING_RUN or not runs_of(handle.id)[0].remote_id
    ):
        step(bed)
    assert cancel(handle.id)
    (attempt,) = get_attempts(handle.id)
    assert attempt.outcome == "superseded" and "Codegen cannot cancel" in (attempt.detail or "")
    deadline = time.monotonic() + 10
    while runs_of(handle.id)[0].state != AgentRunState.FINISHED:
        assert time.monotonic() < deadline
        step(bed)
        time.sleep(0.05)
    assert get_job(handle.id).status == JobStatus.CANCELLED  # the run's end changed nothing
    assert runs_of(handle.id)[0].remote_status == "COMPLETE"


def test_options_codegen_refuses_are_refused_at_submit(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, openai_env: FakeOpenAIServer
) -> None:
    with pytest.raises(InvalidRequestError, match="repo_id"):
        submit("bad option for codegen", provider="codegen", repo_id="seven")
    assert bed.jobs == [] and codegen_env.run_count == 0


def test_the_seed_example_repository_branch_priority_through_the_queue(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    repo_id = codegen_env.add_repo("acme/shop")
    handle = submit(
        "Generate a test function", system_prompt="You are a test writing expert",
        provider="codegen", priority="normal", tags=["test", "generation"],
        repository="acme/shop", branch="main",
    )  # fmt: skip
    done = drive(bed, handle.id)
    assert done.status == JobStatus.SUCCEEDED
    (run,) = runs_of(handle.id)
    assert run.repo_id == repo_id and run.remote_id is not None
    sent = codegen_env.run_request(run.remote_id)
    assert sent["repo_id"] == repo_id and "`main`" in sent["prompts"][0]
    assert sent["metadata"]["priority"] == "normal" and sent["metadata"]["branch"] == "main"
    assert sent["metadata"]["tags"] == ["test", "generation"]


def test_an_unknown_repository_fails_the_job_before_any_run(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    handle = submit("anything", provider="codegen", repository="acme/nope")
    done = drive(bed, handle.id)
    assert done.status == JobStatus.FAILED and done.error_type == "InvalidRequestError"
    assert "acme/nope" in (done.error_message or "")
    assert codegen_env.run_count == 0
    # Bad values are refused at submit: nothing written.
    for bad in ({"priority": "urgent"}, {"branch": "a..b"}, {"repository": "no-slash"}):
        with pytest.raises(InvalidRequestError):
            submit_agent_run("x", **bad)  # type: ignore[arg-type]


def test_codegen_trouble_while_a_job_waits_loses_nothing_and_makes_no_second_run(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    handle = submit("weather the storm", provider="codegen")
    while not (runs_of(handle.id) and runs_of(handle.id)[0].remote_id):
        step(bed)
    # Every kind of trouble while the poller follows the run: 429, 5xx, a garbled body.
    for fault in (Fault.rate_limit(), Fault.status_code(503), Fault.bad_json()):
        codegen_env.faults.push(fault)
    done = drive(bed, handle.id, timeout=60)  # a 429 without Retry-After waits a refill
    assert done.status == JobStatus.SUCCEEDED
    assert codegen_env.run_count == 1
    assert [a.outcome for a in get_attempts(handle.id)] == ["succeeded"]
