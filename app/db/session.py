"""Engines and sessions, built lazily (nothing connects at import time).

Dialects:

- **PostgreSQL** in production (``DATABASE_URL=postgresql+psycopg://...``; a
  bare ``postgresql://`` or ``postgres://`` URL is switched to the installed
  psycopg 3 driver). Engines use ``pool_pre_ping`` so a restarted server or a
  dropped idle connection costs a reconnect, not a failed task. Every connection
  has a deadline: ``connect_timeout`` (``AIW_CONNECT_TIMEOUT``, the whole handshake),
  TCP keepalives and ``tcp_user_timeout`` (``AIW_READ_TIMEOUT``: a server whose
  packets go unanswered is given up), and, on the engines of ``get_engine`` and
  ``get_hot_engine``, ``statement_timeout`` (``AIW_STATEMENT_TIMEOUT``; at most
  ``HOT_STATEMENT_TIMEOUT`` on the hot path; migrations run without it) with a
  client-side deadline past it (``app.db.deadline``): a server that keeps the
  connection and never answers costs an error, not a hang.
- **SQLite** embedded, when ``DATABASE_URL`` is unset:
  ``sqlite:///<AIW_DATA_DIR>/aiw.sqlite3``. Each connection gets WAL journal
  mode (readers do not block the writer), a ``busy_timeout`` (a writer waits
  for the lock instead of failing at once), ``foreign_keys=ON`` (so ``ON DELETE
  CASCADE`` works) and real transactions: pysqlite's own transaction handling
  is switched off and SQLAlchemy emits ``BEGIN IMMEDIATE``, so ``SAVEPOINT`` /
  ``session.begin_nested()`` behave as on PostgreSQL.

The transaction boundary is ``session_scope()``: it commits on success, rolls
back on any exception and always closes (``statement_scope()`` is its Core
counterpart for a statement that stands alone: ``aiw submit`` imports no ORM).
Helpers that take a ``Session`` flush if they need ids but never commit.
Sessions do not expire objects on commit, so plain attributes of rows stay
readable after the scope closes (relationships are ``lazy="raise"`` anyway).

Engines are made on first use, so a Celery prefork child normally builds its
own. If a child may have inherited engines from its parent, call
``dispose_engines(close=False)`` in ``worker_process_init`` so no pooled
connection is shared across processes.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from app.config import Settings

SQLITE_FILENAME = "aiw.sqlite3"
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Seconds a statement of the hot path (one row's submit, claim or record) may take:
#: far more than it needs, and a submit on a server gone silent fails within this plus
#: ``AIW_READ_TIMEOUT``.
HOT_STATEMENT_TIMEOUT = 10.0

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def database_url(settings: Settings | None = None) -> str:
    """The database URL: ``DATABASE_URL``, else the embedded SQLite file.

    For the default, ``AIW_DATA_DIR`` is made absolute and created.
    """
    if settings is None:
        from app.config import get_settings

        settings = get_settings()
    if settings.database_url:
        return _normalize(settings.database_url)
    data_dir = settings.aiw_data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / SQLITE_FILENAME}"


@functools.lru_cache(maxsize=16)
def _normalize(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_engine_for(
    url: str | URL,
    *,
    sqlite_foreign_keys: bool = True,
    statement_timeout: float | None = None,
    **kwargs: Any,
) -> Engine:
    """A new (uncached) engine with the per-dialect settings described above.

    ``get_engine()`` is the normal entry point; this one exists for callers that
    need their own pool (migrations, tests). Alembic passes
    ``sqlite_foreign_keys=False``: SQLite's batch migrations copy and drop
    tables, which must not fire ``ON DELETE CASCADE``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine, foreign_keys=sqlite_foreign_keys)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if parsed.get_backend_name() != "postgresql":
        return create_engine(parsed, **kwargs)
    from app.db.deadline import connector

    settings = _settings()
    given = kwargs.get("connect_args", {})
    kwargs["connect_args"] = {**_pg_deadlines(statement_timeout, settings), **given}
    engine = create_engine(parsed, **kwargs)
    connect = connector(
        statement_timeout + settings.aiw_read_timeout if statement_timeout else None
    )

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        return connect(*cargs, **cparams)

    return engine


def _pg_deadlines(statement_timeout: float | None, settings: Settings) -> dict[str, Any]:
    """libpq parameters that bound every wait on the server (see the module's doc)."""
    read_ms = int(settings.aiw_read_timeout * 1000)
    args: dict[str, Any] = {
        "connect_timeout": max(2, round(settings.aiw_connect_timeout)),  # libpq's minimum
        "keepalives": 1,
        "keepalives_idle": max(1, read_ms // 2000),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": read_ms,
    }
    if statement_timeout:
        args["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    return args


def _configure_sqlite(engine: Engine, *, foreign_keys: bool) -> None:
    in_memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE: take the write lock at the start. A deferred transaction that
        # reads and then writes cannot wait for the lock (SQLite answers "database
        # is locked" at once to avoid a deadlock); an immediate one waits up to
        # busy_timeout. Our transactions are short and nearly all write.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _settings() -> Settings:
    from app.config import get_settings

    return get_settings()


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: ``database_url()``), made once."""
    key = url or database_url()
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_engine_for(
                key, statement_timeout=_settings().aiw_statement_timeout or None
            )
        return engine


def get_hot_engine(url: str | None = None) -> Engine:
    """PostgreSQL's hot-path engine: autocommit, no ping on checkout (one per process and
    URL). Each hot step (a job's claim or record, a delivery's claim or success) is one
    statement, atomic by itself, so it needs no BEGIN/COMMIT round trips; a connection
    gone stale (a server restart) fails its statement with ``OperationalError``, which
    the caller waits out (``app.db.claims.record_durably``) or the task retries."""
    key = f"hot:{os.getpid()}:{url or database_url()}"
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_engine_for(
                url or database_url(),
                statement_timeout=min(_settings().aiw_statement_timeout, HOT_STATEMENT_TIMEOUT)
                or None,
                pool_pre_ping=False,
                isolation_level="AUTOCOMMIT",
                # Dozens of threads each hold a connection for one statement: keep ten
                # (the default five made a new connection, and dropped it, every few
                # jobs at 32 threads); at most twenty, as the default's fifteen.
                pool_size=10,
                max_overflow=10,
                # Autocommit: a connection given back is never inside a transaction,
                # so the pool's ROLLBACK on return would reset nothing.
                pool_reset_on_return=None,
            )
        return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """The session factory bound to ``get_engine(url)``."""
    key = url or database_url()
    engine = get_engine(key)
    with _lock:
        factory = _sessionmakers.get(key)
        if factory is None:
            from sqlalchemy.orm import sessionmaker  # not on the ORM-free paths (aiw submit)

            factory = _sessionmakers[key] = sessionmaker(bind=engine, expire_on_commit=False)
        return factory


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on exception, always close."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def statement_scope(url: str | None = None) -> Iterator[Connection]:
    """A Core connection for a statement that stands alone, committed when the block ends
    without an error: on PostgreSQL the hot engine's (autocommit: no ping, no BEGIN, each
    statement atomic by itself), elsewhere a transaction on ``get_engine`` (on SQLite a
    ``BEGIN IMMEDIATE``). No ORM: what ``aiw submit`` writes and reads goes through here."""
    key = url or database_url()
    if key.startswith("postgresql"):
        with get_hot_engine(key).connect() as conn:
            yield conn
    else:
        with get_engine(key).begin() as conn:
            yield conn


_AFTER_COMMIT = "aiw.after_commit"


def after_commit(session: Session, action: Callable[[], object]) -> None:
    """Run ``action`` once ``session`` commits (forgotten if it rolls back): what must not
    be announced before the change is durable, e.g. publishing the message of a row the
    transaction writes. An action that raises is the caller's to report (log inside)."""
    actions: list[Callable[[], object]] | None = session.info.get(_AFTER_COMMIT)
    if actions is None:
        actions = session.info[_AFTER_COMMIT] = []
        event.listen(session, "after_commit", _run_after_commit)
        event.listen(session, "after_rollback", _forget_after_commit)
    actions.append(action)


def _run_after_commit(session: Session) -> None:
    actions: list[Callable[[], object]] = session.info.get(_AFTER_COMMIT, [])
    pending = list(actions)
    actions.clear()
    for action in pending:
        action()


def _forget_after_commit(session: Session) -> None:
    session.info.get(_AFTER_COMMIT, []).clear()


def dispose_engines(*, close: bool = True) -> None:
    """Close the pooled connections and forget every engine (tests, shutdown, after fork).

    In a forked child that inherited engines from its parent, pass
    ``close=False``: the inherited connections are dropped without being
    closed, because their sockets still belong to the parent.
    """
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _sessionmakers.clear()
    for engine in engines:
        engine.dispose(close=close)
