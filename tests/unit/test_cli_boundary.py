"""The error boundary of ``aiw`` (``app.cli.boundary``): a database without its schema
is told by types (and, on SQLite, by asking the database), not by the words of the
message."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
import sqlalchemy.exc
from click.testing import CliRunner
from psycopg.errors import UndefinedTable

from app.cli import main
from app.cli.boundary import describe_error
from app.db import migrate

NO_SCHEMA = "has no schema yet: run `aiw migrate`"


def test_a_sqlite_database_without_its_schema_says_run_migrate(sqlite_url: str, env: Any) -> None:
    env(DATABASE_URL=sqlite_url)
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code == 1, result.output
    assert NO_SCHEMA in result.output and "no such table" in result.output, result.output
    assert result.output.count("\n") == 1


def test_a_sqlite_database_behind_the_newest_revision_says_run_migrate(
    sqlite_url: str, env: Any
) -> None:
    migrate.upgrade(sqlite_url, "0005")  # before the budgets tables
    env(DATABASE_URL=sqlite_url)
    result = CliRunner().invoke(main, ["budgets"])
    assert result.exit_code == 1, result.output
    assert NO_SCHEMA in result.output and "budgets" in result.output, result.output


def test_another_sqlite_error_on_a_migrated_database_is_not_a_missing_schema(
    migrated_sqlite_url: str, env: Any
) -> None:
    env(DATABASE_URL=migrated_sqlite_url)
    locked = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, sqlite3.OperationalError("database is locked")
    )
    message = describe_error(locked)
    assert message is not None and NO_SCHEMA not in message
    assert message.startswith("database unreachable at sqlite:///"), message
    assert message.endswith(": OperationalError: database is locked"), message


def test_a_postgresql_undefined_table_says_run_migrate(env: Any) -> None:
    missing = sqlalchemy.exc.ProgrammingError(
        "SELECT 1", {}, UndefinedTable('relation "ai_requests" does not exist')
    )
    message = describe_error(missing)
    assert message is not None and NO_SCHEMA in message, message
    assert 'relation "ai_requests" does not exist' in message


def test_the_words_alone_mean_nothing(env: Any) -> None:
    """A PostgreSQL error that only says the words is not a missing schema."""
    worded = sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, psycopg.OperationalError("no such table: ai_requests")
    )
    message = describe_error(worded)
    assert message is not None and NO_SCHEMA not in message, message
    assert message.startswith("database unreachable at "), message
