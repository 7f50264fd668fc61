"""``app.db.hot.hot_cursor`` on real PostgreSQL: the errors callers see are SQLAlchemy's
(what ``exec_driver_sql`` raised before), and a connection that died leaves the pool.

The hot path's retries rest on this: ``record_durably`` waits out
``sqlalchemy.exc.OperationalError``, and the task retries a claim that raised it."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from sqlalchemy import exc

from app.db.hot import hot_cursor
from app.db.session import dispose_engines, get_hot_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def url(pg_database_factory: Callable[[], str]) -> str:
    return pg_database_factory()


def _backend_pid(url: str) -> int:
    with hot_cursor(url) as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def test_a_connection_killed_under_the_pool_raises_operational_error_and_is_dropped(
    url: str,
) -> None:
    try:
        first = _backend_pid(url)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        # The pool hands back the same (now dead) connection: no ping on the hot engine.
        with pytest.raises(exc.OperationalError) as raised, hot_cursor(url) as cur:
            cur.execute("SELECT 1")
        assert isinstance(raised.value.orig, psycopg.OperationalError)
        assert raised.value.connection_invalidated
        # Invalidated: the next cursor is on a new connection, which works.
        assert _backend_pid(url) != first
        assert get_hot_engine(url).pool.checkedout() == 0
    finally:
        dispose_engines()


def test_other_errors_keep_their_sqlalchemy_class_and_the_connection(url: str) -> None:
    try:
        pid = _backend_pid(url)
        with pytest.raises(exc.ProgrammingError, match="no_such_table"), hot_cursor(url) as cur:
            cur.execute("SELECT * FROM no_such_table")
        with pytest.raises(exc.IntegrityError), hot_cursor(url) as cur:
            cur.execute("CREATE TEMP TABLE t (id int PRIMARY KEY)")
            cur.execute("INSERT INTO t VALUES (1), (1)")
        assert _backend_pid(url) == pid  # still the one pooled connection
        assert get_hot_engine(url).pool.checkedout() == 0
    finally:
        dispose_engines()
