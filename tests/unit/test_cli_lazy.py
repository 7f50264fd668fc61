"""What ``aiw submit`` imports: the command's own module, settings, SQLAlchemy Core
(not the ORM, nor the models: ``app.db.tables``) and the database driver, Celery (its
publisher); not the other command groups, the worker's tasks and signals, the provider
SDKs, rich, the Codegen HTTP client, the metrics exporter or Alembic (it starts as a new
process each time: every import is paid on every submit)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import click
import pytest

from app.cli import COMMAND_MODULES, main

#: Top-level packages (or modules) ``aiw submit`` must not import.
NOT_ON_SUBMIT = (
    "openai", "httpx", "httpcore", "rich", "requests", "prometheus_client",
    "alembic", "tenacity", "graph_sitter", "flower", "tornado", "standardwebhooks",
    "workers.tasks", "workers.signals",
    "app.cli.agents", "app.cli.webhooks", "app.cli.budgets", "app.cli.ops",
    "app.integrations", "app.codegen.client", "app.codegen.agent",
    "app.ai.openai_provider", "app.shell.display", "app.shell.tables", "app.shell.metrics",
    "app.webhooks", "app.jobs.agent_runs", "app.sandbox",
    # The ORM: submit writes and reads its one row with Core (app.db.tables).
    "sqlalchemy.orm", "app.db.models", "app.db.base", "app.db.agent_run_models",
    "app.db.webhook_models", "app.db.budget_models", "app.jobs.job_admin",
    # Celery's result machinery: ai-worker has no result backend (workers.publisher).
    "celery.backends", "celery.result",
)  # fmt: skip

#: Run ``aiw submit`` in a fresh interpreter and print what it imported (at exit, so the
#: whole command ran: validation, INSERT, publish, the read back).
_DRIVER = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["aiw", "submit", "hello"]
from app.cli import main
main()
"""


def _imported_by_submit(env: dict[str, str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(" queued"), done.stdout
    modules: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return set(modules)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_aiw_submit_imports_nothing_it_does_not_use(
    database: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    from tests.plugins.cli import clean_env

    url = request.getfixturevalue(
        "migrated_sqlite_url" if database == "sqlite" else "migrated_pg_url"
    )
    env = clean_env(
        DATABASE_URL=url, CELERY_BROKER_URL="memory://", OPENAI_API_KEY="sk-test",
        AIW_DATA_DIR=str(tmp_path / "data"),
    )  # fmt: skip
    modules = _imported_by_submit(env)
    found = sorted(
        m for m in modules for name in NOT_ON_SUBMIT if m == name or m.startswith(name + ".")
    )
    assert not found, f"aiw submit imported {found}"
    # ... and it did publish the way a process without Celery does: kombu alone.
    assert "kombu.transport.memory" in modules and "workers.publisher" in modules


def test_every_command_is_found_where_the_lazy_group_looks() -> None:
    """``COMMAND_MODULES`` names each command of each module's ``COMMANDS`` exactly."""
    import importlib

    declared: dict[str, str] = {}
    for module in set(COMMAND_MODULES.values()):
        for command in importlib.import_module(module).COMMANDS:
            declared[command.name] = module
    assert declared == COMMAND_MODULES
    ctx = click.Context(main)
    for name in COMMAND_MODULES:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert main.list_commands(ctx) == sorted(COMMAND_MODULES)
    assert main.get_command(ctx, "no-such-command") is None


def test_get_job_reads_what_the_orm_reads(migrated_sqlite_url: str, env: Any) -> None:
    """``get_job`` selects the row with Core: the same ``Job`` as from the ORM row."""
    from app.db.models import AIRequestRow
    from app.db.session import session_scope
    from app.jobs import get_job, submit
    from app.jobs.service import Job

    env(DATABASE_URL=migrated_sqlite_url, CELERY_BROKER_URL="memory://")
    handle = submit(
        "hi", system_prompt="sys", tags=["a", "b"], idempotency_key=str(uuid.uuid4()),
        subject={"k": [1, 2]}, priority="high", max_tokens=12, temperature=0.5,
    )  # fmt: skip
    with session_scope() as session:
        row = session.get(AIRequestRow, handle.id)
        assert row is not None
        from_orm = Job.model_validate(row)
    assert get_job(handle.id) == from_orm
    assert get_job(str(handle.id)[:8]) == from_orm
