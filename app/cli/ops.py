"""Running ai-worker: ``aiw migrate``, ``check``, ``up``, ``worker``, ``beat``,
``flower``, ``metrics``.

The Celery processes (``worker``, ``beat``, ``flower``) are ``celery`` itself, exec'd
(``app`` never imports Celery); their command lines are built in ``app.shell.runtime``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from app.cli.boundary import describe_error, fail, friendly
from app.cli.common import block_until_signal, print_json
from app.cli.sandbox import start_sandbox


@click.command()
@click.option("--revision", default="head", show_default=True)
@click.option("--check", is_flag=True, help="Change nothing; exit 1 unless at the newest revision.")
@friendly
def migrate(revision: str, check: bool) -> None:
    """Upgrade the database schema (Alembic)."""
    from app.db.migrate import current, head, upgrade
    from app.db.session import database_url
    from app.shell.topology import safe_url

    url = safe_url(database_url())
    if check:
        now, newest = current(), head()
        if now != newest:
            fail(f"database {url} is at {now}, the newest revision is {newest}: run aiw migrate")
        click.echo(f"database at {now} (newest): {url}")
        return
    upgrade(revision=revision)
    click.echo(f"database at {current()}: {url}")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@friendly
def check(as_json: bool) -> None:
    """Check that the database answers and is migrated, that the broker answers, and that
    the key of the webhook secrets works for every process (AIW_SECRET_KEY)."""
    from app.config import get_settings
    from app.db.migrate import current, head
    from app.shell.runtime import RuntimeStartError, check_broker
    from app.shell.topology import safe_url, topology

    topo = topology(get_settings())
    result: dict[str, Any] = {"shape": topo.shape}
    problems: list[str] = []
    try:
        now, newest = current(), head()
        result["database"] = {"url": safe_url(topo.database_url), "revision": now, "ok": True}
        if now != newest:
            result["database"]["ok"] = False
            problems.append(f"database at {now}, newest is {newest}: run aiw migrate")
    except Exception as exc:  # noqa: BLE001 - reported, one line
        result["database"] = {"url": safe_url(topo.database_url), "ok": False}
        problems.append(describe_error(exc) or f"database: {type(exc).__name__}: {exc}")
    try:
        check_broker(topo.broker_url)
        result["broker"] = {"url": safe_url(topo.broker_url), "ok": True}
    except RuntimeStartError as exc:
        result["broker"] = {"url": safe_url(topo.broker_url), "ok": False}
        problems.append(str(exc))
    if result["database"]["ok"]:
        from app.webhooks.crypto import key_problems, key_warning

        key = key_problems(get_settings())
        warning = key_warning(get_settings())
        result["webhook_key"] = {"ok": not key, "problems": key, "warning": warning}
        problems.extend(key)
        if warning:
            click.echo(f"aiw: warning: {warning}", err=True)
    result["ok"] = not problems
    if as_json:
        print_json(result)
    else:
        click.echo(f"mode: {topo.shape}")
        for part in ("database", "broker"):
            state = "ok" if result[part]["ok"] else "FAILED"
            click.echo(f"{part}: {result[part]['url']}: {state}")
        if "webhook_key" in result:
            click.echo(f"webhook key: {'ok' if result['webhook_key']['ok'] else 'FAILED'}")
    if problems:
        fail("; ".join(problems))


@click.command()
@click.option(
    "--sandbox",
    is_flag=True,
    help="Also run the fake OpenAI and Codegen servers and "
    "point the worker at them (no keys needed).",
)
@click.option("--flower/--no-flower", "with_flower", default=True, show_default=True)
@click.option("--beat/--no-beat", "with_beat", default=True, show_default=True)
@click.option("--metrics/--no-metrics", "with_metrics", default=True, show_default=True)
@click.option("--flower-address", help="Default AIW_FLOWER_ADDRESS (127.0.0.1).")
@click.option("--flower-port", type=click.IntRange(1, 65535), help="Default AIW_FLOWER_PORT.")
@click.option(
    "--unauthenticated",
    is_flag=True,
    help="Serve Flower without a login (refused on a non-loopback address).",
)
@click.option("--metrics-address", help="Default AIW_METRICS_ADDRESS (127.0.0.1).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Default AIW_METRICS_PORT.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 2000),
    help="Worker threads (default AIW_WORKER_CONCURRENCY).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds the worker may finish running tasks on Ctrl-C.",
)
@friendly
def up(
    sandbox: bool,
    with_flower: bool,
    with_beat: bool,
    with_metrics: bool,
    flower_address: str | None,
    flower_port: int | None,
    unauthenticated: bool,
    metrics_address: str | None,
    metrics_port: int | None,
    concurrency: int | None,
    grace: float,
) -> None:
    """Run everything on this machine: migrate, then a worker, beat, Flower and the
    metrics exporter, with their logs; Ctrl-C stops all of them cleanly.

    With no configuration: a SQLite database and an embedded Redis-protocol broker
    (valkey-server, append-only persistence) under AIW_DATA_DIR.
    With DATABASE_URL and CELERY_BROKER_URL: PostgreSQL and Redis.
    """
    from app.config import get_settings
    from app.shell.runtime import UpOptions
    from app.shell.runtime import up as run_up

    extra_env: dict[str, str] = {}
    servers: list[Any] = []
    notes: list[str] = []
    if sandbox:
        servers, extra_env = start_sandbox(0, 0)
        for key, value in extra_env.items():
            os.environ[key] = value
        get_settings.cache_clear()
        from app.shell.topology import write_sandbox_env

        written = write_sandbox_env(get_settings(), extra_env)
        notes = [
            f"sandbox   fake OpenAI and Codegen at {', '.join(s.url for s in servers)}",
            f"sandbox   settings in {written}: every aiw command of this directory uses "
            "them while this runs",
        ]
    settings = get_settings()
    options = UpOptions(
        flower=with_flower,
        flower_address=flower_address or settings.aiw_flower_address,
        flower_port=flower_port or settings.aiw_flower_port,
        unauthenticated=unauthenticated,
        metrics=with_metrics,
        metrics_address=metrics_address or settings.aiw_metrics_address,
        metrics_port=metrics_port or settings.aiw_metrics_port,
        beat=with_beat,
        grace=grace,
        concurrency=concurrency,
        extra_env=extra_env,
        notes=notes,
    )
    try:
        code = run_up(settings, options)
    finally:
        if sandbox:
            from app.shell.topology import remove_sandbox_env

            remove_sandbox_env(settings)
        for server in servers:
            server.stop()
    sys.exit(code)


def _exec(argv: list[str], env: dict[str, str] | None = None) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env if env is not None else dict(os.environ))


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--kind",
    type=click.Choice(["all", "ai", "webhooks", "agent-runs", "maintenance"]),
    default="all",
    show_default=True,
    help="Which kind of work: one worker process of it; `all` runs one process per kind.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 2000),
    help="Threads of the process (default: AIW_WORKER_CONCURRENCY for ai, "
    "AIW_WEBHOOK_CONCURRENCY, AIW_AGENT_RUN_CONCURRENCY, AIW_MAINTENANCE_CONCURRENCY).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@friendly
def worker(kind: str, concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """Run Celery workers: one process per kind of work, each on its own queue with its
    own threads, so a stalled webhook receiver or a slow Codegen never holds the threads of
    AI calls (extra arguments go to `celery worker`)."""
    from app.config import get_settings
    from app.shell.runtime import Supervisor, add_workers, worker_argv
    from app.shell.topology import WORKER_KINDS, worker_concurrency

    settings = get_settings()
    if not settings.celery_broker_url:
        from app.shell.runtime import check_broker
        from app.shell.topology import broker_url

        check_broker(broker_url(settings))  # the embedded broker: `aiw up` runs it
    if kind != "all":
        threads = concurrency or worker_concurrency(kind, settings)
        _exec(
            worker_argv(
                settings,
                queues=WORKER_KINDS[kind],
                name=f"{kind}@%h",
                extra=["--concurrency", str(threads), *celery_args],
            )
        )
    sup = Supervisor(grace=settings.aiw_shutdown_grace + 10)
    add_workers(sup, settings, dict(os.environ), ai_concurrency=concurrency, extra=celery_args)
    sup.install_signal_handlers()
    sup.start()
    sys.exit(sup.wait())


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@friendly
def beat(celery_args: tuple[str, ...]) -> None:
    """Run Celery beat (the sweep). Run exactly one per deployment."""
    from app.config import get_settings
    from app.shell.runtime import beat_argv, check_broker
    from app.shell.topology import broker_url, data_dir

    settings = get_settings()
    if not settings.celery_broker_url:
        check_broker(broker_url(settings))  # the embedded broker: `aiw up` runs it
    _exec(beat_argv(settings, data_dir(settings), celery_args))


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--address", help="Listen address (default AIW_FLOWER_ADDRESS, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Default AIW_FLOWER_PORT (5555).")
@click.option(
    "--unauthenticated",
    is_flag=True,
    help="No login, on purpose (refused on a non-loopback address).",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@friendly
def flower(
    address: str | None, port: int | None, unauthenticated: bool, flower_args: tuple[str, ...]
) -> None:
    """Run Flower, the dashboard, with the login from FLOWER_BASIC_AUTH.

    Refuses to start without a login unless --unauthenticated is given, and
    never serves a non-loopback address without one.
    """
    from app.config import get_settings
    from app.shell.runtime import flower_argv, flower_auth
    from app.shell.topology import topology

    settings = get_settings()
    address = address or settings.aiw_flower_address
    auth = flower_auth(settings, address, unauthenticated=unauthenticated)
    if topology(settings).embedded_broker:
        from app.shell.runtime import check_broker

        check_broker(topology(settings).broker_url)  # the embedded broker: `aiw up` runs it
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWER_BASIC_AUTH",)}
    env.update(auth.env())
    _exec(flower_argv(address, port or settings.aiw_flower_port, flower_args), env)


@click.command()
@click.option("--address", help="Listen address (default AIW_METRICS_ADDRESS, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Default AIW_METRICS_PORT (9808).")
@click.option("--once", is_flag=True, help="Print the metrics once and exit.")
@friendly
def metrics(address: str | None, port: int | None, once: bool) -> None:
    """Serve Prometheus metrics read from the database and the broker (run one)."""
    from app.config import get_settings
    from app.shell.metrics import registry, serve
    from app.shell.runtime import check_port

    settings = get_settings()
    if once:
        from prometheus_client import generate_latest

        click.echo(generate_latest(registry(settings)).decode(), nl=False)
        return
    address = address or settings.aiw_metrics_address
    port = port or settings.aiw_metrics_port
    check_port(address, port, "metrics", "--port")
    server, _ = serve(settings, address, port)
    click.echo(f"serving metrics on http://{address}:{port}/metrics")
    block_until_signal()
    server.shutdown()


COMMANDS = (migrate, check, up, worker, beat, flower, metrics)
