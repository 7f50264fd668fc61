"""The one claim machine (app.db.claims): heartbeat leases, hand-back, the sweeps' rule,
and records that wait out a database outage. SQLite; the rows are jobs, but every kind
(deliveries, agent-run creations) goes through the same functions."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from app.config import get_settings
from app.db.base import utcnow
from app.db.claims import claimable, needs_message, record_durably
from app.db.heartbeat import Heartbeat
from app.db.models import AIRequestRow, JobStatus
from app.db.session import dispose_engines, get_engine, session_scope


@pytest.fixture
def db(migrated_sqlite_url: str, env: Any) -> Iterator[None]:
    env(DATABASE_URL=migrated_sqlite_url, AIW_LEASE=30, AIW_HEARTBEAT_INTERVAL=10)
    yield
    dispose_engines()


def add_job(**values: Any) -> uuid.UUID:
    job_id = uuid.uuid4()
    now = utcnow()
    with session_scope() as s:
        s.add(AIRequestRow(id=job_id, prompt="p", created_at=now, updated_at=now, **values))
    return job_id


def lease_of(job_id: uuid.UUID) -> Any:
    with session_scope() as s:
        return s.scalar(select(AIRequestRow.lease_expires_at).where(AIRequestRow.id == job_id))


def test_one_beat_renews_every_held_lease_in_one_statement(db: None) -> None:
    soon = utcnow() + timedelta(seconds=2)
    held = {str(uuid.uuid4()): None for _ in range(50)}
    for token in held:
        held[token] = add_job(status=JobStatus.RUNNING, claim_token=token, lease_expires_at=soon)
    other = add_job(status=JobStatus.RUNNING, claim_token="someone-else", lease_expires_at=soon)
    heartbeat = Heartbeat()
    statements: list[str] = []
    engine = get_engine()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with contextlib_hold_all(heartbeat, held):
            assert heartbeat.count() == 50
            assert heartbeat.beat() == 50
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1  # one per table, whatever the number of rows
    renewed = lease_of(next(iter(held.values())))
    assert renewed - utcnow() > timedelta(seconds=25)
    assert lease_of(other) == soon  # not ours: untouched
    assert heartbeat.count() == 0  # released when the blocks end


class contextlib_hold_all:
    """Hold many rows at once (an ExitStack of ``hold`` blocks)."""

    def __init__(self, heartbeat: Heartbeat, held: dict[str, Any]) -> None:
        import contextlib

        self._stack = contextlib.ExitStack()
        self._heartbeat = heartbeat
        self._held = held

    def __enter__(self) -> None:
        for token, job_id in self._held.items():
            self._stack.enter_context(self._heartbeat.hold(AIRequestRow, job_id, token))

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def test_the_thread_keeps_a_lease_alive_and_a_dead_holder_lets_it_run_out(
    db: None, env: Any
) -> None:
    env(AIW_LEASE=1, AIW_HEARTBEAT_INTERVAL=0.2)
    get_settings.cache_clear()
    token = str(uuid.uuid4())
    job_id = add_job(
        status=JobStatus.RUNNING,
        claim_token=token,
        lease_expires_at=utcnow() + timedelta(seconds=1),
    )
    heartbeat = Heartbeat()
    with heartbeat.hold(AIRequestRow, job_id, token):
        time.sleep(2.0)  # twice the lease
        assert lease_of(job_id) > utcnow()
        now = utcnow()
        with session_scope() as s:  # another worker cannot take it meanwhile
            assert (
                s.scalar(select(AIRequestRow.id).where(claimable(AIRequestRow, now, "other")))
                is None
            )
    time.sleep(1.5)  # nobody renews it now
    now = utcnow()
    with session_scope() as s:
        assert s.scalar(select(AIRequestRow.id).where(claimable(AIRequestRow, now, "other")))
    heartbeat.stop()


def test_hand_back_ends_the_leases_at_once_and_the_sweep_finds_them(db: None) -> None:
    settings = get_settings()
    token = str(uuid.uuid4())
    job_id = add_job(
        status=JobStatus.RUNNING, claim_token=token,
        lease_expires_at=utcnow() + timedelta(seconds=30), published_at=utcnow(),
    )  # fmt: skip
    heartbeat = Heartbeat()
    with heartbeat.hold(AIRequestRow, job_id, token):
        now = utcnow()
        with session_scope() as s:
            assert (
                s.scalar(select(AIRequestRow.id).where(needs_message(AIRequestRow, now, settings)))
                is None
            )
        assert heartbeat.hand_back() == 1
        now = utcnow()
        with session_scope() as s:
            assert (
                s.scalar(select(AIRequestRow.id).where(needs_message(AIRequestRow, now, settings)))
                == job_id
            )
            # The claim stays ours until someone else takes it: a late answer still counts.
            assert s.scalar(select(AIRequestRow.claim_token)) == token


def test_a_countdown_whose_holder_died_is_found_after_the_lease(db: None) -> None:
    settings = get_settings()
    now = utcnow()
    job_id = add_job(
        status=JobStatus.WAITING,
        next_attempt_at=now - timedelta(seconds=5),
        published_at=now - timedelta(seconds=10),  # the countdown message, sent before due
    )
    with session_scope() as s:
        found = lambda: s.scalar(  # noqa: E731
            select(AIRequestRow.id).where(needs_message(AIRequestRow, utcnow(), settings))
        )
        assert found() is None  # its message may still fire: not yet
        s.execute(
            update(AIRequestRow).values(
                next_attempt_at=now - timedelta(seconds=31),
                published_at=now - timedelta(seconds=40),
            )
        )
        assert found() == job_id  # due for longer than a lease: its worker died holding it


def test_record_durably_waits_out_an_outage_and_raises_anything_else(db: None) -> None:
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return "recorded"

    assert record_durably(flaky, what="test") == "recorded" and len(tries) == 3

    def broken() -> str:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        record_durably(broken, what="test")


def test_record_durably_gives_up_once_the_process_stops(db: None) -> None:
    from app.db import heartbeat

    stop = threading.Timer(0.5, heartbeat.get_heartbeat().stop)
    stop.start()

    def down() -> str:
        raise OperationalError("UPDATE", {}, Exception("connection refused"))

    try:
        with pytest.raises(OperationalError):
            record_durably(down, what="test")
    finally:
        stop.cancel()
        heartbeat._heartbeat = None  # a fresh heartbeat for the next tests


def test_a_message_held_unclaimed_is_vouched_for_and_found_lost_when_the_holder_dies(
    db: None, env: Any
) -> None:
    env(AIW_LEASE=1, AIW_HEARTBEAT_INTERVAL=0.3)
    get_settings.cache_clear()
    settings = get_settings()
    now = utcnow()
    job_id = add_job(status=JobStatus.QUEUED, published_at=now)
    waiting = AIRequestRow.status.in_([JobStatus.QUEUED, JobStatus.WAITING])

    def lost() -> bool:
        with session_scope() as s:
            return (
                s.scalar(
                    select(AIRequestRow.id).where(needs_message(AIRequestRow, utcnow(), settings))
                )
                == job_id
            )

    heartbeat = Heartbeat()
    heartbeat.reserve(AIRequestRow, job_id, waiting)  # a worker received its message
    time.sleep(0.5)
    assert lease_of(job_id) is not None  # vouched for: the message lives in this worker
    time.sleep(1.5)  # renewed meanwhile, past the lease
    assert not lost()
    heartbeat.stop()  # the worker dies holding it: nobody vouches any more
    time.sleep(1.5)
    assert lost()  # the sweep publishes it again at once, not after AIW_REPUBLISH_AFTER

    # A reservation whose row got claimed meanwhile is forgotten.
    other = Heartbeat()
    claimed = add_job(status=JobStatus.RUNNING, claim_token="t", published_at=now)
    other.reserve(AIRequestRow, claimed, waiting)
    time.sleep(0.3)
    assert other.vouch(renew=True) == 0 and lease_of(claimed) is None
    other.stop()
