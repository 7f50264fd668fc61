"""Alembic environment for ai-worker.

Where the database comes from, first match wins:

1. ``config.attributes["connection"]``: a caller's open Connection (tests,
   ``app.db.migrate`` with ``connection=``); used as is, not closed here.
2. ``alembic -x url=...`` on the command line.
3. the ``sqlalchemy.url`` main option, set by a caller
   (``app.db.migrate`` sets it from its ``url`` argument).
4. ``app.db.session.database_url()``: ``DATABASE_URL``, else the embedded SQLite file.

On SQLite, migrations run in batch mode (``render_as_batch``) so that later
ALTERs work by copying the table, with ``foreign_keys=OFF`` so those copies do
not cascade. Logging is configured from alembic.ini only when run from the
``alembic`` command (``app.db.migrate`` leaves the application's logging alone).
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.types import TypeDecorator

from app.db.base import Base, UTCDateTime
from app.db.session import create_engine_for, database_url

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    x_url = context.get_x_argument(as_dictionary=True).get("url")
    if x_url:
        return x_url
    main_url = config.get_main_option("sqlalchemy.url")
    if main_url:
        return main_url
    return database_url()


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render our column types as plain SQLAlchemy types in new revisions.

    A revision must not import application code that may change later.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, TypeDecorator):
        raise TypeError(f"add a rendering for {type(obj).__name__} in migrations/env.py")
    return False


def _configure_opts(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "render_as_batch": dialect_name == "sqlite",
        # Our SQLite connections run real transactions (see app.db.session),
        # so a failed migration rolls back as a whole there too.
        "transactional_ddl": True,
        "render_item": _render_item,
    }


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) without connecting."""
    url = _url()
    dialect_name = make_url(url).get_backend_name()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_opts(dialect_name),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_opts(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = create_engine_for(_url(), poolclass=pool.NullPool, sqlite_foreign_keys=False)
    try:
        with engine.connect() as connection:
            _run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
