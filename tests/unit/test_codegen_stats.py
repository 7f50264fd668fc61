"""``CodegenProvider.get_enhanced_stats``: this provider's runs, the database's, each once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from app.ai.codegen_provider import CodegenProvider
from app.ai.codegen_stats import NO_STATUS, RunRecord
from app.codegen import Task
from app.core.errors import AgentRunFailedError
from app.db.agent_run_models import AgentRunRow
from app.db.session import session_scope
from app.sandbox.codegen_server import FakeCodegenServer


def add_rows(url: str, *rows: tuple[int | None, str | None, str]) -> None:
    """``agent_runs`` rows: (Codegen id, Codegen status, our state)."""
    with session_scope(url) as session:
        for remote_id, status, state in rows:
            session.add(
                AgentRunRow(
                    remote_id=remote_id,
                    remote_status=status,
                    state=state,
                    source="submitted",
                    prompt="p",
                    poll_interval=10.0,
                )
            )


def three_runs(srv: FakeCodegenServer, provider: CodegenProvider) -> Task:
    """One COMPLETE, one FAILED, one started and not waited for (its id)."""
    provider.generate_response("fine")
    srv.default_outcome = "FAILED"
    with pytest.raises(AgentRunFailedError):
        provider.generate_response("broken")
    srv.default_outcome = "COMPLETE"
    srv.pending_seconds = 60
    return provider.start_run(provider.build_request("later"))


def test_this_providers_runs_by_status(codegen_env: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    pending = three_runs(codegen_env, provider)
    stats = provider.get_enhanced_stats(include_tracked=False)
    basic = provider.get_stats()
    assert {k: stats[k] for k in basic} == basic  # everything get_stats() has
    assert stats["success_rate"] == 0.5  # of the calls: one answered, one failed
    assert stats["task_count"] == 3
    assert stats["runs_by_state"] == {"COMPLETE": 1, "FAILED": 1, "PENDING": 1}
    assert stats["task_success_rate"] == 0.5  # COMPLETE / ended
    assert stats["local"] == {
        "task_count": 3,
        "runs_by_state": {"COMPLETE": 1, "FAILED": 1, "PENDING": 1},
        "task_success_rate": 0.5,
    }
    assert stats["tracked"] is None and "include_tracked=False" in stats["tracked_error"]
    json.dumps(stats)
    assert codegen_env.token not in json.dumps(stats)
    # a later status seen by the run's task counts
    codegen_env.set_status(pending.id, "COMPLETE")
    pending.wait_for_completion(timeout=5)
    assert provider.get_enhanced_stats(include_tracked=False)["runs_by_state"] == {
        "COMPLETE": 2, "FAILED": 1,
    }


def test_tracked_runs_are_counted_once_with_the_databases_status(
    codegen_env: FakeCodegenServer, migrated_sqlite_url: str, env: Callable[..., None]
) -> None:
    env(DATABASE_URL=migrated_sqlite_url)
    provider = CodegenProvider()
    pending_id = three_runs(codegen_env, provider).id
    add_rows(
        migrated_sqlite_url,
        (9001, "COMPLETE", "finished"),
        (9002, "COMPLETE", "finished"),
        (9003, "ACTIVE", "active"),
        (9004, "SOMETHING_NEW", "active"),
        (None, None, "creating"),
        (pending_id, "ERROR", "finished"),  # the workers track it too, and saw it end
    )
    stats = provider.get_enhanced_stats()
    assert stats["tracked_error"] is None
    assert stats["tracked"] == {
        "task_count": 6,
        "runs_by_state": {
            "ACTIVE": 1, "COMPLETE": 2, "ERROR": 1, NO_STATUS: 1, "SOMETHING_NEW": 1,
        },
        "task_success_rate": 2 / 3,
        "by_tracking_state": {"active": 2, "creating": 1, "finished": 3},
    }
    assert stats["local"]["runs_by_state"] == {"COMPLETE": 1, "FAILED": 1, "PENDING": 1}
    # 6 rows + the 2 local runs the database does not have; the pending one counts once
    assert stats["task_count"] == 8
    assert stats["runs_by_state"] == {
        "ACTIVE": 1, "COMPLETE": 3, "ERROR": 1, "FAILED": 1, NO_STATUS: 1, "SOMETHING_NEW": 1,
    }
    assert stats["task_success_rate"] == 3 / 5
    json.dumps(stats)


def test_an_unreachable_database_is_reported_not_raised(
    codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(DATABASE_URL="postgresql+psycopg://aiw:s3cret-pw@127.0.0.1:1/nothing")
    provider = CodegenProvider()
    provider.generate_response("x")
    stats = provider.get_enhanced_stats()
    assert stats["tracked"] is None
    assert stats["tracked_error"].startswith("the database could not be read (OperationalError")
    assert "s3cret-pw" not in stats["tracked_error"]
    assert stats["runs_by_state"] == {"COMPLETE": 1} and stats["task_count"] == 1


def test_an_unmigrated_database_is_reported(
    codegen_env: FakeCodegenServer, sqlite_url: str, env: Callable[..., None]
) -> None:
    env(DATABASE_URL=sqlite_url)
    stats = CodegenProvider().get_enhanced_stats()
    assert stats["tracked"] is None and "agent_runs" in stats["tracked_error"]
    assert stats["task_count"] == 0 and stats["task_success_rate"] is None


def test_no_database_is_said_and_none_is_made(
    codegen_env: FakeCodegenServer, env: Callable[..., None], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env(AIW_DATA_DIR=data)
    stats = CodegenProvider().get_enhanced_stats()
    assert stats["tracked"] is None and stats["tracked_error"].startswith("no database")
    assert not data.exists()


def test_run_record_is_bounded_and_ignores_strangers() -> None:
    record = RunRecord(limit=2)
    record.started(1, "PENDING")
    record.started(2, None)
    record.seen(3, "COMPLETE")  # not started here
    record.started(4, "ACTIVE")
    record.seen(2, "COMPLETE")
    assert record.snapshot() == {2: "COMPLETE", 4: "ACTIVE"}
