"""Tracked agent runs, one step at a time: the API, the creation and resume tries and the
poller, on SQLite and the fake Codegen server over HTTP, with the budget in memory and
the broker replaced by a recording publisher. The real worker/beat path is in
tests/integration/test_agent_runs.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.core.budget import reset_budgets
from app.core.cooldown import credential_digest, get_cooldowns, reset_cooldowns
from app.core.errors import InvalidRequestError
from app.core.lease import reset_leases
from app.core.publisher import set_publisher
from app.db.agent_run_models import AgentRunEventRow, AgentRunRow, AgentRunState
from app.db.base import utcnow
from app.db.models import ArtifactRow
from app.db.session import dispose_engines, session_scope
from app.jobs import (
    AgentRunStateError,
    UnknownRemoteRunError,
    get_agent_run,
    list_agent_runs,
    resume_agent_run,
    submit_agent_run,
    track_agent_run,
)
from app.jobs.agent_runs.actions import create_run, resume_run
from app.jobs.agent_runs.codegen import COOLDOWN_STANDARD, reset_gateways
from app.jobs.agent_runs.constants import MARKER_KEY, TASK_CREATE, TASK_RESUME
from app.jobs.agent_runs.poller import poll
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer

CALLBACK = "tests.agent_run_callback.record"
PNG = "data:image/png;base64,iVBORw0KGgo="


class RecordingPublisher:
    def __init__(self) -> None:
        self.tasks: list[tuple[str, list[object]]] = []
        self.fail = False

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        pass

    def send_callback(self, task_name: str, args: list[object]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.tasks.append((task_name, args))

    def ensure_routes(self) -> None:
        pass

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        pass

    def named(self, name: str) -> list[list[object]]:
        return [args for task, args in self.tasks if task == name]


@pytest.fixture
def bed(
    migrated_sqlite_url: str, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> Iterator[RecordingPublisher]:
    env(
        DATABASE_URL=migrated_sqlite_url,
        AIW_AGENT_POLL_INTERVAL=0.05,
        AIW_AGENT_POLL_MAX_INTERVAL=1,
        CODEGEN_MAX_RETRIES=2,
    )
    publisher = RecordingPublisher()
    set_publisher(publisher)
    reset_budgets()
    reset_gateways()
    reset_cooldowns()
    reset_leases()
    yield publisher
    set_publisher(None)
    reset_budgets()
    reset_gateways()
    reset_cooldowns()
    reset_leases()
    dispose_engines()


def row_of(run_id: int) -> AgentRunRow:
    with session_scope() as s:
        row = s.get(AgentRunRow, run_id)
        assert row is not None
        return row


def events_of(run_id: int) -> list[tuple[str, str | None, str | None]]:
    with session_scope() as s:
        rows = s.scalars(
            select(AgentRunEventRow)
            .where(AgentRunEventRow.agent_run_id == run_id)
            .order_by(AgentRunEventRow.id)
        )
        return [(e.kind, e.old_status, e.new_status) for e in rows]


def artifacts_of(run_id: int) -> list[tuple[str, str | None]]:
    with session_scope() as s:
        rows = s.scalars(
            select(ArtifactRow).where(ArtifactRow.agent_run_id == run_id).order_by(ArtifactRow.id)
        )
        return [(a.kind, a.name) for a in rows]


def count_rows() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(AgentRunRow)) or 0


def poll_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Beat ticks every 10 ms; a round short of budget goes on as its task would."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        outcome = poll()
        while outcome.countdown is not None:
            time.sleep(outcome.countdown)
            outcome = poll(outcome.token, outcome.cursor)
        time.sleep(0.01)


def track_rows(remote_ids: list[int], *, status: str = "PENDING") -> dict[int, int]:
    """Rows following these remote runs, all due now (what track_agent_run leaves)."""
    now = utcnow()
    with session_scope() as s:
        rows = [
            AgentRunRow(
                remote_id=rid, state=AgentRunState.ACTIVE, source="tracked", remote_status=status,
                poll_interval=10.0, next_poll_at=now, deadline_at=now + timedelta(hours=1),
            )
            for rid in remote_ids
        ]  # fmt: skip
        s.add_all(rows)
        s.flush()
        return {r.remote_id: r.id for r in rows if r.remote_id is not None}


# --- the API -------------------------------------------------------------------------


def test_bad_input_is_refused_before_anything_is_written(bed: RecordingPublisher) -> None:
    bad: list[dict[str, Any]] = [
        {"prompt": ""},
        {"prompt": "  "},
        {"prompt": 5},
        {"prompt": "x", "repo_id": 0},
        {"prompt": "x", "repo_id": True},
        {"prompt": "x", "metadata": ["not", "a", "dict"]},
        {"prompt": "x", "metadata": {"k": object()}},
        {"prompt": "x", "metadata": {MARKER_KEY: "mine"}},
        {"prompt": "x", "images": "data:image/png;base64,xx"},
        {"prompt": "x", "images": ["https://example.com/a.png"]},
        {"prompt": "x", "agent_type": "robot"},
        {"prompt": "x", "model": ""},
        {"prompt": "x", "tags": "one"},
        {"prompt": "x", "callbacks": ["bad name"]},
        {"prompt": "x", "webhook": "yes"},
        {"prompt": "x" * 400_001},
    ]
    for kwargs in bad:
        with pytest.raises(InvalidRequestError):
            submit_agent_run(**kwargs)
    with pytest.raises(InvalidRequestError):
        track_agent_run(0)
    assert count_rows() == 0
    assert bed.tasks == []


def test_a_run_from_submit_to_complete(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    handle = submit_agent_run(
        "Fix the bug", repo_id=7, metadata={"ticket": "T-1"}, images=[PNG], model="claude",
        agent_type="codegen", tags=["t1"], callbacks=[CALLBACK],
    )  # fmt: skip
    assert bed.named(TASK_CREATE) == [[handle.id]]
    assert handle.state() == AgentRunState.CREATING and handle.status() is None
    assert row_of(handle.id).images == [PNG]  # kept until Codegen has them

    assert create_run(handle.id).action == "done"
    row = row_of(handle.id)
    assert row.state == AgentRunState.ACTIVE and row.remote_id is not None
    assert row.images is None  # sent: no longer stored
    sent = codegen_env.run_request(row.remote_id)
    assert sent["metadata"] == {"ticket": "T-1", MARKER_KEY: str(row.marker)}
    assert (sent["repo_id"], sent["model"], sent["agent_type"], sent["images"]) == (
        7, "claude", "codegen", [PNG],
    )  # fmt: skip
    assert create_run(handle.id).action == "skipped"  # a duplicate message does nothing
    assert codegen_env.run_count == 1

    poll_until(lambda: row_of(handle.id).logs_fetched_at is not None)
    record = handle.get()
    assert (record.state, record.status) == (AgentRunState.FINISHED, "COMPLETE")
    assert record.result == "Done: Fix the bug" and record.web_url
    assert events_of(handle.id) == [
        ("status_changed", None, "PENDING"),
        ("status_changed", "PENDING", "ACTIVE"),
        ("status_changed", "ACTIVE", "COMPLETE"),
    ]
    assert bed.named(CALLBACK) == [
        [handle.id, None, "PENDING"],
        [handle.id, "PENDING", "ACTIVE"],
        [handle.id, "ACTIVE", "COMPLETE"],
    ]
    kinds = artifacts_of(handle.id)
    assert sorted(k for k, _ in kinds) == ["logs", "pull_request", "result", "summary"]
    logs = next(a for a in handle.artifacts() if a.kind == "logs")
    assert [e["message_type"] for e in logs.data][-1] == "FINAL_ANSWER"
    # Polling again changes nothing and duplicates nothing.
    with session_scope() as s:
        s.execute(update(AgentRunRow).values(state="active", next_poll_at=utcnow()))
    poll()
    assert artifacts_of(handle.id) == kinds
    assert len(events_of(handle.id)) == 3
    assert [r.id for r in list_agent_runs(tag="t1")] == [handle.id]
    assert list_agent_runs(state="creating") == []


def test_a_failed_run_ends_failed_with_its_summary(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    codegen_env.default_outcome = "FAILED"
    handle = submit_agent_run("Doomed")
    create_run(handle.id)
    poll_until(lambda: handle.get().is_finished)
    record = handle.get()
    assert (record.state, record.status) == (AgentRunState.FINISHED, "FAILED")
    assert events_of(handle.id)[-1] == ("status_changed", "ACTIVE", "FAILED")
    assert ("summary", None) in artifacts_of(handle.id)
    assert ("pull_request", "500000") not in artifacts_of(handle.id)


def test_a_creation_that_timed_out_is_found_by_its_marker_not_made_twice(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(CODEGEN_TIMEOUT=0.5)
    reset_gateways()
    codegen_env.faults.push(Fault.slow(1.0))  # answered after the client gave up
    handle = submit_agent_run("Only once")
    first = create_run(handle.id)
    assert first.action == "retry" and first.reason == "ProviderTimeoutError"
    assert row_of(handle.id).outcome_unknown
    deadline = time.monotonic() + 5
    while codegen_env.run_count == 0:  # the slow answer creates the run meanwhile
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(first.countdown or 0)
    assert create_run(handle.id).action == "done"
    assert codegen_env.run_count == 1
    assert row_of(handle.id).remote_id == codegen_env.run_ids()[0]
    assert codegen_env.request_count("/agent/run", method="POST") == 1


def test_refused_creation_fails_the_run_with_the_reason(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    codegen_env.max_runs = 0  # 402: the plan's runs are used up
    handle = submit_agent_run("No quota")
    assert create_run(handle.id).action == "done"
    record = handle.get()
    assert record.state == AgentRunState.CREATE_FAILED and record.is_finished
    assert record.error_type == "ProviderQuotaError"
    assert events_of(handle.id) == [("create_failed", None, None)]
    assert codegen_env.request_count("/agent/run", method="POST") == 1  # never retried


def test_creation_waits_for_the_budget_without_calling(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(CODEGEN_CREATE_LIMIT=3, CODEGEN_CREATE_BURST=2, CODEGEN_CREATE_WINDOW=60)
    reset_gateways()
    handles = [submit_agent_run(f"run {n}") for n in range(3)]
    outcomes = [create_run(h.id) for h in handles]
    assert [o.action for o in outcomes] == ["done", "done", "retry"]
    assert outcomes[2].countdown is not None and outcomes[2].countdown > 10
    assert codegen_env.run_count == 2 and codegen_env.rate_limited_count == 0
    assert row_of(handles[2].id).attempt_count == 0  # nothing was tried
    assert create_run(handles[2].id).reason == "early"  # before its time: not tried


def test_unknown_remote_run_is_refused_and_nothing_is_written(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    with pytest.raises(UnknownRemoteRunError, match="no agent run 424242"):
        track_agent_run(424242)
    assert count_rows() == 0


def test_tracking_a_run_made_elsewhere(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    remote = codegen_env.add_run(
        "elsewhere", metadata={"from": "ui"}, pending_seconds=1.0, active_seconds=0.2
    )
    handle = track_agent_run(remote, callbacks=[CALLBACK], tags=["ext"])
    assert track_agent_run(remote).id == handle.id  # tracked once
    record = handle.get()
    assert (record.remote_id, record.state, record.status) == (remote, "active", "PENDING")
    assert record.metadata == {"from": "ui"}
    assert bed.named(CALLBACK) == [[handle.id, None, "PENDING"]]
    poll_until(lambda: handle.get().is_finished)
    assert handle.status() == "COMPLETE"


def test_resume_sends_the_prompt_and_follows_the_run_again(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    remote = codegen_env.add_run("first", pending_seconds=0, active_seconds=0)
    handle = track_agent_run(remote, callbacks=[CALLBACK])
    assert handle.get().state == AgentRunState.FINISHED
    resumed = resume_agent_run(handle.id, "Also add a test", images=[PNG])
    assert resumed == handle and handle.state() == AgentRunState.RESUMING
    assert bed.named(TASK_RESUME) == [[handle.id]]
    with pytest.raises(AgentRunStateError):
        resume_agent_run(handle.id, "twice")
    assert resume_run(handle.id).action == "done"
    record = handle.get()
    assert (record.state, record.status, record.resume_count) == ("active", "ACTIVE", 1)
    assert codegen_env.run_request(remote)["prompts"] == ["first", "Also add a test"]
    assert row_of(handle.id).images is None
    poll_until(lambda: handle.get().is_finished)
    kinds = [e[0] for e in events_of(handle.id)]
    assert kinds == ["status_changed", "resumed", "status_changed", "status_changed"]
    assert bed.named(CALLBACK)[-2:] == [
        [handle.id, "COMPLETE", "ACTIVE"],
        [handle.id, "ACTIVE", "COMPLETE"],
    ]
    assert ("prompt", "resume-1") in artifacts_of(handle.id)
    creating = submit_agent_run("not yet created")
    with pytest.raises(AgentRunStateError):
        resume_agent_run(creating.id, "too early")


# --- the poller ----------------------------------------------------------------------


def test_paging_reads_only_the_pages_that_pay(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    codegen_env.rate_limits = False
    ids = [codegen_env.add_run(f"r{n}", active_seconds=600) for n in range(1000)]
    newest, deep = ids[-150:], ids[:3]
    track_rows(newest + deep)
    outcome = poll()
    assert outcome.claimed == 153 and outcome.observed == 153
    # two pages for the newest 150, then three GETs for the three deep ones
    assert codegen_env.request_count("/agent/runs") == 2
    assert codegen_env.request_count("/agent/run/") == 3
    assert outcome.calls == 5 and outcome.countdown is None
    with session_scope() as s:
        statuses = set(s.scalars(select(AgentRunRow.remote_status)))
        assert statuses == {"ACTIVE"}


def test_a_round_starts_paging_where_its_runs_were_last_seen(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    codegen_env.rate_limits = False
    ids = [codegen_env.add_run(f"r{n}", active_seconds=600) for n in range(1000)]
    middle = ids[350:500]  # list positions 500..649 (newest first)
    track_rows(middle)
    assert poll().calls == 7  # from the top down to position 699
    with session_scope() as s:
        s.execute(update(AgentRunRow).values(next_poll_at=utcnow()))
    before = codegen_env.request_count("/agent/runs")
    second = poll()
    assert second.observed == 150 and second.calls == 2  # positions 500..699 only
    skips = [int(r.query["skip"][0]) for r in codegen_env.requests[before:]]
    assert skips == [500, 600]


def test_few_due_runs_are_read_one_get_each(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer
) -> None:
    ids = [codegen_env.add_run(f"r{n}", active_seconds=600) for n in range(3)]
    track_rows(ids)
    assert poll().calls == 3
    assert codegen_env.request_count("/agent/runs") == 0


def test_an_empty_budget_defers_the_round_and_it_goes_on_later(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(CODEGEN_RATE_LIMIT=4, CODEGEN_RATE_BURST=2, CODEGEN_RATE_WINDOW=1, CODEGEN_RATE_MARGIN=0,
        AIW_AGENT_POLL_GET_MAX=10)  # fmt: skip
    reset_gateways()
    ids = [codegen_env.add_run(f"r{n}", active_seconds=600) for n in range(6)]
    track_rows(ids)
    started = time.monotonic()
    first = poll()
    assert time.monotonic() - started < 1.0  # it did not wait for tokens
    assert first.calls == 2 and first.countdown is not None and 0 < first.countdown <= 0.6
    with session_scope() as s:  # the rest stay claimed by the round meanwhile
        held = s.scalar(select(func.count()).where(AgentRunRow.claim_token == first.token))
    assert held == 4
    second = poll()  # a beat tick meanwhile: the round holds the lease
    assert second.busy and second.claimed == 0
    with session_scope() as s:
        held = s.scalar(select(func.count()).where(AgentRunRow.claim_token == first.token))
    assert held == 4
    outcome = first
    steps = 0
    while outcome.countdown is not None:
        time.sleep(outcome.countdown)
        outcome = poll(outcome.token, outcome.cursor)
        steps += 1
    assert steps >= 2
    while second.countdown is not None:  # the other round (runs due again) ends too
        time.sleep(second.countdown)
        second = poll(second.token, second.cursor)
    with session_scope() as s:
        assert set(s.scalars(select(AgentRunRow.remote_status))) == {"ACTIVE"}
        assert s.scalar(select(func.count()).where(AgentRunRow.claim_token.is_not(None))) == 0
    assert codegen_env.rate_limited_count == 0


@pytest.mark.parametrize(
    "fault", [Fault.rate_limit(), Fault.status_code(503), Fault.bad_json(), Fault.drop()],
    ids=["429", "503", "bad-json", "dropped"],
)  # fmt: skip
def test_codegen_trouble_keeps_the_status_and_polls_later(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, fault: Fault
) -> None:
    remote = codegen_env.add_run("r", pending_seconds=0, active_seconds=600)
    (row_id,) = track_rows([remote], status="PENDING").values()
    codegen_env.faults.push(fault)
    outcome = poll()
    assert outcome.calls == 1 and outcome.changed == 0
    row = row_of(row_id)
    assert (row.state, row.remote_status, row.poll_failures) == ("active", "PENDING", 1)
    assert row.last_poll_error and row.claim_token is None
    assert row.next_poll_at is not None and row.next_poll_at > utcnow()
    assert events_of(row_id) == []
    if fault.status == 429:  # every worker now waits before asking again
        from app.config import get_settings

        name = f"{COOLDOWN_STANDARD}:{credential_digest(get_settings(), 'codegen')}"
        assert get_cooldowns(get_settings()).remaining(name) > 0
        reset_cooldowns()
        reset_gateways()
    with session_scope() as s:
        s.execute(update(AgentRunRow).values(next_poll_at=utcnow()))
    assert poll().changed == 1
    row = row_of(row_id)
    assert (row.state, row.remote_status, row.poll_failures) == ("active", "ACTIVE", 0)


def test_a_run_past_its_deadline_is_marked_stuck_and_no_longer_polled(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(AIW_AGENT_RUN_DEADLINE=0.2)
    remote = codegen_env.add_run("forever", pending_seconds=3600)
    handle = track_agent_run(remote)
    time.sleep(0.3)
    requests_before = len(codegen_env.requests)
    outcome = poll()
    assert outcome.stuck == 1 and outcome.calls == 0
    record = handle.get()
    assert record.state == AgentRunState.STUCK and record.stuck_at is not None
    assert record.is_finished and record.status == "PENDING"  # Codegen's status kept
    assert events_of(handle.id)[-1] == ("stuck", "PENDING", "PENDING")
    time.sleep(0.1)
    poll()
    assert len(codegen_env.requests) == requests_before
    assert track_agent_run(remote).state() == AgentRunState.ACTIVE  # followed again


def test_the_interval_grows_while_nothing_changes(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(AIW_AGENT_POLL_INTERVAL=0.01, AIW_AGENT_POLL_GROWTH=2, AIW_AGENT_POLL_GROWTH_EVERY=2,
        AIW_AGENT_POLL_MAX_INTERVAL=0.05)  # fmt: skip
    remote = codegen_env.add_run("long", pending_seconds=0, active_seconds=600)
    (row_id,) = track_rows([remote], status="ACTIVE").values()
    seen = []
    for _ in range(7):
        with session_scope() as s:
            s.execute(update(AgentRunRow).values(next_poll_at=utcnow()))
        poll()
        seen.append(row_of(row_id).poll_interval)
    assert seen == [0.01, 0.02, 0.02, 0.04, 0.04, 0.05, 0.05]
    codegen_env.set_status(remote, "EVALUATION")  # a change: back to the base
    with session_scope() as s:
        s.execute(update(AgentRunRow).values(next_poll_at=utcnow()))
    poll()
    assert row_of(row_id).poll_interval == 0.01


def test_a_lost_creation_message_is_published_again(
    bed: RecordingPublisher, codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(AIW_REPUBLISH_AFTER=1)
    bed.fail = True
    handle = submit_agent_run("lost in the broker")
    bed.fail = False
    assert bed.named(TASK_CREATE) == []
    assert poll().republished == 0  # the message may still be on its way
    time.sleep(1.1)
    assert poll().republished == 1
    assert bed.named(TASK_CREATE) == [[handle.id]]
    assert poll().republished == 0  # just published: not again
    assert get_agent_run(handle.id).state == AgentRunState.CREATING


# --- wiring --------------------------------------------------------------------------


def test_the_beat_polls_with_its_own_interval(env: Callable[..., None], tmp_path: Any) -> None:
    from app.config import get_settings
    from app.jobs.agent_runs.constants import TASK_POLL
    from workers.celery_app import TASK_AGENT_RUN_POLL, celery_config

    env(AIW_AGENT_POLL_SWEEP_INTERVAL=3, AIW_DATA_DIR=str(tmp_path))
    entry = celery_config(get_settings())["beat_schedule"]["agent-run-poll"]
    assert entry["task"] == TASK_POLL == TASK_AGENT_RUN_POLL
    assert entry["schedule"] == 3
    assert entry["options"] == {"queue": "agent_runs", "expires": 3}


@pytest.mark.parametrize(
    "bad",
    [
        {"codegen_rate_burst": 60},
        {"codegen_create_burst": 10},
        {"aiw_agent_poll_interval": 30, "aiw_agent_poll_max_interval": 20},
        {"aiw_agent_poll_growth": 0.5},
    ],
)
def test_inconsistent_agent_run_settings_are_refused(bad: dict[str, Any]) -> None:
    from app.config import ConfigError, load_settings

    with pytest.raises(ConfigError):
        load_settings(**bad)
