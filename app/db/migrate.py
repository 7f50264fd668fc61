"""Run the Alembic migrations from Python: ``upgrade()`` / ``downgrade()``.

Where the scripts are: the repository's ``migrations/`` directory, found next
to the ``app`` package (``<root>/app/db/migrate.py`` -> ``<root>/migrations``).
That holds in a source checkout, in an editable install (``pip install -e``)
and in any image that copies the repository. A plain (non-editable) wheel does
not ship ``migrations/`` (it is not a package); ``migrations_dir()`` then
raises ``FileNotFoundError`` saying so.

The ``Config`` is built in code (``script_location`` only), so it does not
depend on the working directory and does not read ``alembic.ini``'s logging
sections: running migrations from a worker or a test leaves the application's
logging alone. The ``alembic`` command line uses ``alembic.ini`` at the root of
the repository and the same ``migrations/env.py``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from app.db.session import create_engine_for, database_url

_ROOT = Path(__file__).resolve().parents[2]


def migrations_dir() -> Path:
    """The directory holding ``env.py`` and ``versions/``."""
    path = _ROOT / "migrations"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(
            f"Alembic scripts not found at {path}: ai-worker's migrations ship with the "
            "source tree; run from a checkout or an editable install (pip install -e .)"
        )
    return path


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for our scripts.

    ``url`` sets ``sqlalchemy.url`` (default: ``database_url()``, resolved by
    env.py); ``connection`` makes env.py run on that open connection instead,
    inside the caller's transaction (the caller commits).
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["configure_logger"] = False
    if url is not None:
        # ConfigParser interpolation: a %-escaped password must survive.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Upgrade the database at ``url`` (default: the configured one) to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None, revision: str) -> None:
    """Downgrade the database at ``url`` (None: the configured one) to ``revision``."""
    command.downgrade(alembic_config(url), revision)


def current(url: str | None = None) -> str | None:
    """The revision the database at ``url`` is at (None: not under Alembic yet)."""
    engine = create_engine_for(url or database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str | None:
    """The newest revision among the scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
