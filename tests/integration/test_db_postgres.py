"""The models on PostgreSQL, and the rolled-back ``db_session`` fixture itself."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import migrate
from app.db.models import AIRequestRow, ArtifactRow, AttemptRow, JobStatus, UsageRow
from app.db.session import get_engine, session_scope

pytestmark = pytest.mark.integration


def _count(session: Session, model: type[object]) -> int | None:
    return session.scalar(select(func.count()).select_from(model))


def test_db_session_commits_are_rolled_back_after_the_test(
    db_session: Session, pg_engine: Engine
) -> None:
    db_session.add(AIRequestRow(prompt="p", idempotency_key="rolled-back"))
    db_session.commit()  # releases a SAVEPOINT only
    assert _count(db_session, AIRequestRow) == 1
    with Session(pg_engine) as other:  # another connection sees nothing committed
        assert _count(other, AIRequestRow) == 0


def test_db_session_recovers_from_an_integrity_error(db_session: Session) -> None:
    db_session.add(AIRequestRow(prompt="p", idempotency_key="dup"))
    db_session.commit()
    db_session.add(AIRequestRow(prompt="p", idempotency_key="dup"))
    with pytest.raises(IntegrityError, match="uq_ai_requests_idempotency_key"):
        db_session.commit()
    db_session.rollback()
    assert _count(db_session, AIRequestRow) == 1


def test_types_on_postgresql(db_session: Session) -> None:
    when = datetime(2030, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=-4)))
    job = AIRequestRow(
        prompt="p",
        provider_chain=["codegen", "openai"],
        parameters={"temperature": 0.2, "max_tokens": 10},
        result={"content": "hi", "usage": {"total_tokens": 3}},
        next_attempt_at=when,
    )
    db_session.add(job)
    db_session.flush()
    db_session.expire_all()
    row = db_session.get_one(AIRequestRow, job.id)
    assert isinstance(row.id, uuid.UUID)
    assert row.provider_chain == ["codegen", "openai"]
    assert row.result == {"content": "hi", "usage": {"total_tokens": 3}}
    assert row.next_attempt_at == when and row.next_attempt_at.tzinfo is UTC
    # Stored as JSONB: its operators work in SQL.
    found = db_session.execute(
        text("SELECT count(*) FROM ai_requests WHERE provider_chain @> '[\"openai\"]'::jsonb")
    ).scalar()
    assert found == 1


def test_str_enums_bind_as_their_values(db_session: Session) -> None:
    job = AIRequestRow(prompt="p", status=JobStatus.RUNNING)
    db_session.add(job)
    db_session.flush()
    db_session.execute(
        update(AIRequestRow)
        .where(AIRequestRow.status.not_in(list(JobStatus.TERMINAL)))
        .values(status=JobStatus.CANCELLED)
    )
    assert db_session.scalar(select(AIRequestRow.status)) == "cancelled"


def test_constraints_on_postgresql(db_session: Session) -> None:
    job = AIRequestRow(prompt="p")
    db_session.add(job)
    db_session.flush()
    attempt = AttemptRow(request_id=job.id, number=1, provider="openai", outcome="succeeded")
    db_session.add(attempt)
    db_session.flush()
    db_session.add(UsageRow(attempt_id=attempt.id, request_id=job.id, provider="o", model="m"))
    db_session.flush()

    with pytest.raises(IntegrityError, match="uq_ai_usage_attempt_id"), db_session.begin_nested():
        db_session.add(UsageRow(attempt_id=attempt.id, request_id=job.id, provider="o", model="m"))
    with pytest.raises(IntegrityError, match="ck_ai_requests_status"), db_session.begin_nested():
        db_session.add(AIRequestRow(prompt="p", status="done"))
    with pytest.raises(IntegrityError, match="ck_ai_attempts_outcome"), db_session.begin_nested():
        db_session.add(AttemptRow(request_id=job.id, number=2, provider="x", outcome="maybe"))

    db_session.add(ArtifactRow(request_id=job.id, kind="result", content="c"))
    db_session.flush()
    db_session.delete(job)
    db_session.flush()
    assert [_count(db_session, m) for m in (AttemptRow, UsageRow, ArtifactRow)] == [0, 0, 0]


def test_session_scope_on_postgresql(pg_database_factory: Callable[[], str]) -> None:
    url = pg_database_factory()
    migrate.upgrade(url)
    assert get_engine(url).pool._pre_ping  # type: ignore[attr-defined]
    with session_scope(url) as session:
        session.add(AIRequestRow(prompt="kept"))
    with pytest.raises(RuntimeError), session_scope(url) as session:
        session.add(AIRequestRow(prompt="dropped"))
        session.flush()
        raise RuntimeError
    with session_scope(url) as session:
        assert list(session.scalars(select(AIRequestRow.prompt))) == ["kept"]
