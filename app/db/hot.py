"""A cursor of the hot path: one pooled psycopg connection of the hot engine, with
none of SQLAlchemy's Connection and result layers on the way.

Each step of the hot path (a job's claim, a job's record) is one autocommit statement
of SQL written once (``app.jobs.hotpath``). Through ``Connection.exec_driver_sql`` its
CPU was about a third SQLAlchemy's own (the Connection, the ``CursorResult`` metadata
built from the cursor's description on every execution), in the one process whose
GIL bounds the jobs a worker runs per second. ``hot_cursor`` keeps what SQLAlchemy
gives that path and nothing else:

- the hot engine's pool (``app.db.session.get_hot_engine``: its size, no ping, the
  deadline on every wait of ``app.db.deadline``);
- SQLAlchemy's exception classes: a psycopg error leaves as the ``sqlalchemy.exc``
  class that ``exec_driver_sql`` would have raised (``OperationalError`` for a
  database that is down, which ``app.db.claims.record_durably`` waits out), and a
  connection the dialect sees as disconnected is invalidated, so the pool drops it.

PostgreSQL only; SQLite takes the portable path of its callers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import exc

from app.db.session import get_hot_engine


@contextmanager
def hot_cursor(url: str | None = None) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor on a connection of ``get_hot_engine(url)``'s pool, given back on exit."""
    engine = get_hot_engine(url)
    pooled = None
    cursor: psycopg.Cursor[Any] | None = None
    try:
        pooled = engine.raw_connection()
        driver = pooled.driver_connection
        assert driver is not None  # checked out: the connection is there
        cursor = driver.cursor()
        yield cursor
    except psycopg.Error as error:
        gone = pooled is not None and engine.dialect.is_disconnect(
            error,  # type: ignore[arg-type]  # psycopg's Error is the DBAPI's
            pooled.dbapi_connection,
            cursor,  # type: ignore[arg-type]
        )
        if gone and pooled is not None:
            pooled.invalidate(error)
        raise exc.DBAPIError.instance(
            None, None, error, psycopg.Error, connection_invalidated=gone, dialect=engine.dialect
        ) from error
    finally:
        if cursor is not None and not cursor.closed:
            cursor.close()
        if pooled is not None:
            pooled.close()


__all__ = ["hot_cursor"]
