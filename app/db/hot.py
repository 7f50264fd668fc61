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

``insert_row`` is one INSERT of a Core table's row as driver SQL on that cursor (submit's
row: every job's first statement).

PostgreSQL only; SQLite takes the portable path of its callers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import JSON, Table, exc

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


def insert_row(table: Table, values: Mapping[str, Any], url: str | None = None) -> None:
    """INSERT ``values`` (column name -> value) into ``table``, committed: the JSON
    columns (by the table's types) sent as JSON text, the rest as psycopg adapts them.
    Constraint errors leave as SQLAlchemy's (``IntegrityError``)."""
    columns = tuple(values)
    json_columns = _json_columns(table)
    params = {c: json.dumps(v) if c in json_columns else v for c, v in values.items()}
    with hot_cursor(url) as cur:
        cur.execute(_insert_sql(table.name, columns, json_columns), params)


@functools.cache
def _json_columns(table: Table) -> frozenset[str]:
    return frozenset(c.name for c in table.c if isinstance(c.type, JSON))


@functools.cache
def _insert_sql(name: str, columns: tuple[str, ...], json_columns: frozenset[str]) -> str:
    values = (f"%({c})s::jsonb" if c in json_columns else f"%({c})s" for c in columns)
    return f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join(values)})"


__all__ = ["hot_cursor", "insert_row"]
