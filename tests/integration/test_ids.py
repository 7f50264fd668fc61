"""Ids by their start (``app.db.ids``) on PostgreSQL and SQLite: the range on the primary
key finds the same rows as the text of the id would, and PostgreSQL can answer it from
the index."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from app.core.errors import JobNotFoundError
from app.db.ids import prefix_bounds, resolve_id
from app.db.models import AIRequestRow

pytestmark = pytest.mark.integration

IDS = [
    "abcd1234-0000-4000-8000-000000000001",
    "abcd1234-ffff-4000-8000-000000000002",
    "abcd1235-0000-4000-8000-000000000003",
    "abcd0fff-ffff-4fff-bfff-ffffffffffff",
    "abce0000-0000-4000-8000-000000000000",
]


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request: pytest.FixtureRequest, migrated_sqlite_url: str) -> Iterator[Session]:
    if request.param == "postgresql":
        db_session: Session = request.getfixturevalue("db_session")
        yield db_session
        return
    engine = create_engine(migrated_sqlite_url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def _resolve(session: Session, value: str) -> uuid.UUID:
    return resolve_id(session, AIRequestRow.id, value, JobNotFoundError, "job")


def test_a_prefix_finds_one_job_or_is_refused(session: Session) -> None:
    session.add_all(AIRequestRow(id=uuid.UUID(i), prompt="p") for i in IDS)
    session.flush()
    assert _resolve(session, "abcd1235") == uuid.UUID(IDS[2])
    assert _resolve(session, "ABCD1234-F") == uuid.UUID(IDS[1])
    assert _resolve(session, "abcd0") == uuid.UUID(IDS[3])  # the top of its range
    assert _resolve(session, "abce") == uuid.UUID(IDS[4])  # the bottom of its range
    assert _resolve(session, IDS[0]) == uuid.UUID(IDS[0])  # a whole id: not looked up
    with pytest.raises(JobNotFoundError, match=r"ambiguous id 'abcd': 4 jobs start with it"):
        _resolve(session, "abcd")
    with pytest.raises(JobNotFoundError, match=r"2 jobs start with it \(abcd1234-0000-.*, abcd"):
        _resolve(session, "abcd1234")
    with pytest.raises(JobNotFoundError, match="no job starting with 'abcf'"):
        _resolve(session, "abcf")
    for bad in ("abc", "xyz12345", "", "abcd 1234"):
        with pytest.raises(JobNotFoundError, match="no job"):
            _resolve(session, bad)


def test_postgresql_answers_a_prefix_from_the_primary_key(db_session: Session) -> None:
    low, high = prefix_bounds("abcd1234")
    db_session.execute(text("SET LOCAL enable_seqscan = off"))
    query = select(AIRequestRow.id).where(AIRequestRow.id >= low, AIRequestRow.id <= high)
    compiled = query.compile(db_session.get_bind(), compile_kwargs={"literal_binds": True})
    plan = " ".join(row[0] for row in db_session.execute(text(f"EXPLAIN {compiled}")))
    assert "Index Cond: ((id >= " in plan and "pk_ai_requests" in plan, plan  # no Filter
