"""Database fixtures: throwaway PostgreSQL databases, SQLite files, rolled-back sessions.

PostgreSQL is the real server on 127.0.0.1:5432 (trust auth, user ``postgres``
or ``root``). If it is down, one attempt is made to start the local cluster
(``pg_ctlcluster --skip-systemctl-redirect <version> main start``); if it still
cannot be reached, the tests that need it are skipped with the reason.

- ``pg_database_factory`` (session): ``make()`` creates a fresh empty database
  ``aiw_test_<pid>_<random>`` and returns its URL; every one is dropped at the
  end of the session (leftover connections are terminated first).
- ``pg_url`` (session): one such database, empty.
- ``migrated_pg_url`` (session): ``pg_url`` upgraded to head, once.
- ``pg_engine`` (session): an engine on ``migrated_pg_url``.
- ``db_session`` (function): a Session on the migrated database inside an outer
  transaction that is rolled back after the test. Code under test may call
  ``session.commit()``: with ``join_transaction_mode="create_savepoint"`` that
  only releases a SAVEPOINT, so nothing outlives the test.
- ``sqlite_url`` (function): a SQLite file URL in ``tmp_path`` (no schema).
- ``migrated_sqlite_url`` (function): the same, upgraded to head.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, pool
from sqlalchemy.orm import Session

from app.db import migrate
from app.db.session import create_engine_for, dispose_engines

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USERS = ("postgres", "root")


def _admin_connect(user: str) -> psycopg.Connection:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True, connect_timeout=3
    )


def _find_pg_user() -> tuple[str | None, str]:
    """A user that can connect, or None and the last error."""
    error = ""
    for user in PG_USERS:
        try:
            with _admin_connect(user):
                return user, ""
        except psycopg.OperationalError as exc:
            error = str(exc).strip()
    return None, error


def _try_start_postgres() -> None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return
    for version in sorted(os.listdir("/etc/postgresql")):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            timeout=60,
            check=False,
        )


def _pg_user_or_skip() -> str:
    user, error = _find_pg_user()
    if user is None:
        _try_start_postgres()
        for _ in range(20):
            user, error = _find_pg_user()
            if user is not None:
                break
            time.sleep(0.5)
    if user is None:
        pytest.skip(
            f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} ({error}); start it with "
            "pg_ctlcluster --skip-systemctl-redirect <version> main start"
        )
    return user


def _drop_database(user: str, name: str) -> None:
    with _admin_connect(user) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    user = _pg_user_or_skip()
    created: list[str] = []

    def make() -> str:
        name = f"aiw_test_{os.getpid()}_{secrets.token_hex(4)}"
        with _admin_connect(user) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"

    yield make

    dispose_engines()
    for name in created:
        _drop_database(user, name)


@pytest.fixture(scope="session")
def pg_url(pg_database_factory: Callable[[], str]) -> str:
    return pg_database_factory()


@pytest.fixture(scope="session")
def migrated_pg_url(pg_url: str) -> str:
    migrate.upgrade(pg_url)
    return pg_url


@pytest.fixture(scope="session")
def pg_engine(migrated_pg_url: str) -> Iterator[Engine]:
    engine = create_engine_for(migrated_pg_url, poolclass=pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(pg_engine: Engine) -> Iterator[Session]:
    with pg_engine.connect() as connection:
        outer = connection.begin()
        session = Session(
            bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
        )
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'aiw.sqlite3'}"
    yield url
    dispose_engines()


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str) -> str:
    migrate.upgrade(sqlite_url)
    return sqlite_url
