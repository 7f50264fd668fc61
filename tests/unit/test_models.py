"""Models, constraints and the session boundary, on SQLite (the migrated schema)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError, StatementError
from sqlalchemy.orm import Session

from app.config import load_settings
from app.db.agent_run_models import AgentRunRow
from app.db.models import (
    AIRequestRow,
    ArtifactRow,
    AttemptOutcome,
    AttemptRow,
    JobStatus,
    UsageRow,
)
from app.db.session import (
    database_url,
    dispose_engines,
    get_engine,
    get_sessionmaker,
    session_scope,
)
from app.db.types import utcnow


def _request(**values: object) -> AIRequestRow:
    values.setdefault("prompt", "hello")
    return AIRequestRow(**values)


def _job_with_usage(session: Session) -> tuple[uuid.UUID, int]:
    job = _request(provider_chain=["openai"])
    session.add(job)
    session.flush()
    attempt = AttemptRow(
        request_id=job.id, number=1, provider="openai", outcome=AttemptOutcome.SUCCEEDED
    )
    session.add(attempt)
    session.flush()
    session.add(
        UsageRow(
            attempt_id=attempt.id, request_id=job.id, provider="openai", model="gpt-4o-mini",
            prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=0.0000123,
        )
    )  # fmt: skip
    session.add(ArtifactRow(request_id=job.id, kind="result", content="hi"))
    session.flush()
    return job.id, attempt.id


@pytest.fixture
def url(migrated_sqlite_url: str) -> str:
    return migrated_sqlite_url


# --- defaults and types ----------------------------------------------------------------


def test_defaults_and_round_trip(url: str) -> None:
    with session_scope(url) as session:
        job = _request(subject={"repository": "r", "file": "a.py"})
        session.add(job)
        session.flush()
        job_id = job.id
    with session_scope(url) as session:
        row = session.get_one(AIRequestRow, job_id)
        assert isinstance(row.id, uuid.UUID)
        assert row.kind == "ai_request"
        assert row.status == JobStatus.QUEUED == "queued"
        assert row.provider_chain == [] and row.tags == [] and row.parameters == {}
        assert row.provider_index == row.attempt_count == row.retries_on_provider == 0
        assert row.subject == {"repository": "r", "file": "a.py"}
        assert row.created_at.tzinfo is UTC and row.updated_at.tzinfo is UTC
        assert abs(row.created_at - utcnow()) < timedelta(seconds=5)


def test_datetimes_come_back_aware_utc_and_naive_ones_are_refused(url: str) -> None:
    paris = timezone(timedelta(hours=2))
    when = datetime(2030, 1, 1, 14, 0, tzinfo=paris)
    with session_scope(url) as session:
        job = _request(next_attempt_at=when)
        session.add(job)
        session.flush()
        job_id = job.id
    with session_scope(url) as session:
        got = session.get_one(AIRequestRow, job_id).next_attempt_at
        assert got == when and got is not None and got.tzinfo is UTC and got.hour == 12
        # Comparisons in SQL work on UTC values.
        due = session.scalar(
            select(func.count()).where(
                AIRequestRow.next_attempt_at < datetime(2030, 1, 1, 13, tzinfo=UTC)
            )
        )
        assert due == 1
    with pytest.raises(StatementError, match="naive datetime"), session_scope(url) as session:
        session.add(_request(next_attempt_at=datetime(2030, 1, 1)))
        session.flush()


def test_server_defaults_fill_rows_written_with_plain_sql(url: str) -> None:
    job_id = uuid.uuid4()
    with session_scope(url) as session:
        session.execute(
            text(
                "INSERT INTO ai_requests (id, status, prompt, provider_chain, parameters, tags) "
                "VALUES (:id, 'queued', 'p', '[]', '{}', '[]')"
            ),
            {"id": job_id.hex},
        )
    with session_scope(url) as session:
        row = session.get_one(AIRequestRow, job_id)
        assert row.kind == "ai_request" and row.attempt_count == 0
        assert row.created_at.tzinfo is UTC


def test_updated_at_moves_on_update(url: str) -> None:
    with session_scope(url) as session:
        job = _request()
        session.add(job)
        session.flush()
        job_id, created = job.id, job.updated_at
    with session_scope(url) as session:
        session.get_one(AIRequestRow, job_id).status = JobStatus.RUNNING
    with session_scope(url) as session:
        assert session.get_one(AIRequestRow, job_id).updated_at > created


def test_cost_is_a_float_and_none_means_unknown(url: str) -> None:
    with session_scope(url) as session:
        job_id, _ = _job_with_usage(session)
        attempt2 = AttemptRow(request_id=job_id, number=2, provider="codegen", outcome="succeeded")
        session.add(attempt2)
        session.flush()
        session.add(
            UsageRow(attempt_id=attempt2.id, request_id=job_id, provider="codegen", model="agent")
        )
    with session_scope(url) as session:
        costs = dict(session.execute(select(UsageRow.provider, UsageRow.cost_usd)).all())
        assert costs == {"openai": pytest.approx(0.0000123), "codegen": None}
        assert isinstance(costs["openai"], float)


def test_relationships_do_not_load_lazily(url: str) -> None:
    with session_scope(url) as session:
        job_id, _ = _job_with_usage(session)
    with session_scope(url) as session:
        job = session.get_one(AIRequestRow, job_id)
        with pytest.raises(InvalidRequestError, match="lazy='raise'"):
            _ = job.attempts


def test_job_status_terminal() -> None:
    assert {"succeeded", "failed", "cancelled"} == JobStatus.TERMINAL
    assert JobStatus.FAILED.is_terminal and not JobStatus.WAITING.is_terminal
    assert [s.value for s in JobStatus] == [
        "queued", "running", "waiting", "awaiting_run", "succeeded", "failed", "cancelled"
    ]  # fmt: skip


# --- constraints -----------------------------------------------------------------------


def test_idempotency_key_is_unique(url: str) -> None:
    with session_scope(url) as session:
        session.add(_request(idempotency_key="k1"))
    with pytest.raises(IntegrityError, match="UNIQUE"), session_scope(url) as session:
        session.add(_request(idempotency_key="k1"))
    with session_scope(url) as session:  # None is not a key: many rows may have none
        session.add_all([_request(), _request()])
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(AIRequestRow)) == 3


def test_usage_is_unique_per_attempt(url: str) -> None:
    with session_scope(url) as session:
        job_id, attempt_id = _job_with_usage(session)
    with pytest.raises(IntegrityError, match="UNIQUE"), session_scope(url) as session:
        session.add(
            UsageRow(attempt_id=attempt_id, request_id=job_id, provider="openai", model="m")
        )
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(UsageRow)) == 1


def test_attempt_number_is_unique_per_request(url: str) -> None:
    with session_scope(url) as session:
        job_id, _ = _job_with_usage(session)
    with pytest.raises(IntegrityError), session_scope(url) as session:
        session.add(AttemptRow(request_id=job_id, number=1, provider="openai", outcome="retry"))


def test_status_check_refuses_an_unknown_status(url: str) -> None:
    with pytest.raises(IntegrityError, match="ck_ai_requests_status"), session_scope(url) as s:
        s.add(_request(status="done"))
    for status in JobStatus:
        with session_scope(url) as s:
            s.add(_request(status=status))


def test_outcome_check_refuses_an_unknown_outcome(url: str) -> None:
    with session_scope(url) as session:
        job_id, _ = _job_with_usage(session)
    with pytest.raises(IntegrityError, match="ck_ai_attempts_outcome"), session_scope(url) as s:
        s.add(AttemptRow(request_id=job_id, number=2, provider="openai", outcome="maybe"))


def test_foreign_keys_are_enforced(url: str) -> None:
    with pytest.raises(IntegrityError, match="FOREIGN KEY"), session_scope(url) as session:
        session.add(AttemptRow(request_id=uuid.uuid4(), number=1, provider="x", outcome="retry"))


def _counts(session: Session) -> tuple[int | None, ...]:
    return tuple(
        session.scalar(select(func.count()).select_from(model))
        for model in (AIRequestRow, AttemptRow, UsageRow, ArtifactRow)
    )


def test_deleting_a_request_cascades_with_the_orm(url: str) -> None:
    with session_scope(url) as session:
        job_id, _ = _job_with_usage(session)
    with session_scope(url) as session:
        assert _counts(session) == (1, 1, 1, 1)
        session.delete(session.get_one(AIRequestRow, job_id))
    with session_scope(url) as session:
        assert _counts(session) == (0, 0, 0, 0)


def test_deleting_a_request_cascades_in_sql(url: str) -> None:
    with session_scope(url) as session:
        job_id, _ = _job_with_usage(session)
        _job_with_usage(session)
    with session_scope(url) as session:
        session.execute(delete(AIRequestRow).where(AIRequestRow.id == job_id))
    with session_scope(url) as session:
        assert _counts(session) == (1, 1, 1, 1)


def test_artifacts_of_agent_runs_need_no_request(url: str) -> None:
    with session_scope(url) as session:
        run = AgentRunRow(state="active", source="tracked", remote_id=7, poll_interval=10.0)
        session.add(run)
        session.flush()
        run_id = run.id
        session.add_all(
            [
                ArtifactRow(agent_run_id=run_id, kind="pull_request", name="#1", data={"url": "u"}),
                ArtifactRow(agent_run_id=run_id, kind="pull_request", name="#1", data={"url": "u"}),
            ]
        )
    with session_scope(url) as session:
        rows = session.scalars(select(ArtifactRow).where(ArtifactRow.agent_run_id == run_id)).all()
        assert [r.data for r in rows] == [{"url": "u"}, {"url": "u"}]
    with session_scope(url) as session:  # an artifact of an unknown run is refused
        session.add(ArtifactRow(agent_run_id=run_id + 1000, kind="result", content="x"))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()


# --- session boundary ------------------------------------------------------------------


def test_session_scope_commits_on_success(url: str) -> None:
    with session_scope(url) as session:
        session.add(_request(idempotency_key="a"))
    with session_scope(url) as session:
        assert session.scalar(select(AIRequestRow.idempotency_key)) == "a"


def test_session_scope_rolls_back_on_error(url: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), session_scope(url) as session:
        session.add(_request(idempotency_key="b"))
        session.flush()
        raise Boom
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(AIRequestRow)) == 0


def test_session_scope_closes_and_objects_stay_readable(url: str) -> None:
    with session_scope(url) as session:
        job = _request(idempotency_key="c")
        session.add(job)
    assert job not in session
    assert job.idempotency_key == "c" and job.status == "queued"


def test_savepoints_work_on_sqlite(url: str) -> None:
    with session_scope(url) as session:
        session.add(_request(idempotency_key="outer"))
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(_request(idempotency_key="outer"))
        session.add(_request(idempotency_key="after"))
    with session_scope(url) as session:
        keys = set(session.scalars(select(AIRequestRow.idempotency_key)))
        assert keys == {"outer", "after"}


# --- engines and URLs ------------------------------------------------------------------


def test_sqlite_connections_get_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_engines_are_cached_per_url_and_disposed(sqlite_url: str, tmp_path: Path) -> None:
    engine = get_engine(sqlite_url)
    assert get_engine(sqlite_url) is engine
    assert get_sessionmaker(sqlite_url) is get_sessionmaker(sqlite_url)
    other = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    assert get_engine(other) is not engine
    dispose_engines()
    assert get_engine(sqlite_url) is not engine


def test_default_database_url_is_sqlite_in_the_data_dir(
    env: Callable[..., None], tmp_path: Path
) -> None:
    env(AIW_DATA_DIR=str(tmp_path / "d" / "e"))
    assert database_url() == f"sqlite:///{tmp_path / 'd' / 'e' / 'aiw.sqlite3'}"
    assert (tmp_path / "d" / "e").is_dir()


def test_relative_data_dir_is_made_absolute(tmp_path: Path) -> None:
    url = database_url(load_settings(aiw_data_dir=Path("rel")))
    assert url == f"sqlite:///{Path.cwd() / 'rel' / 'aiw.sqlite3'}"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p%40ss@db:5432/aiw", "postgresql+psycopg://u:p%40ss@db:5432/aiw"),
        ("postgres://u@db/aiw", "postgresql+psycopg://u@db/aiw"),
        ("postgresql+psycopg://u@db/aiw", "postgresql+psycopg://u@db/aiw"),
        ("sqlite:////tmp/x.sqlite3", "sqlite:////tmp/x.sqlite3"),
    ],
)
def test_database_url_from_settings(given: str, expected: str) -> None:
    assert database_url(load_settings(database_url=given)) == expected


def test_default_session_scope_uses_the_default_database(
    env: Callable[..., None], tmp_path: Path
) -> None:
    from app.db import migrate

    env(AIW_DATA_DIR=str(tmp_path))
    migrate.upgrade()
    try:
        with session_scope() as session:
            session.add(_request())
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(AIRequestRow)) == 1
    finally:
        dispose_engines()
