"""The ``aiw`` command line.

Every command prints one clear line and exits non-zero on a user error (bad id,
bad argument, unreachable database), never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from app.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    click.echo(f"aiw: {message}", err=True)
    sys.exit(1)


def friendly(fn: F) -> F:
    """Turn the errors a user can cause into one line and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        from app.ai.errors import AIProviderError
        from app.jobs.errors import JobError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, AIProviderError, JobError) as exc:
            _fail(str(exc))
        except OperationalError as exc:
            _fail(
                f"database unreachable: {exc.orig.__class__.__name__}: "
                f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}"
            )

    return wrapper  # type: ignore[return-value]


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ai-worker: AI requests (OpenAI, Codegen agents) as background jobs."""


@main.command()
@click.argument("prompt", required=False)
@click.option("--system", "system_prompt", help="System prompt.")
@click.option("--provider", help="Force a provider (openai, codegen); default: automatic.")
@click.option("--model", help="Model name.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--max-tokens", type=int)
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--idempotency-key")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to N seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly
def submit(
    prompt: str | None,
    system_prompt: str | None,
    provider: str | None,
    model: str | None,
    temperature: float,
    max_tokens: int | None,
    tags: tuple[str, ...],
    idempotency_key: str | None,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Queue an AI request (PROMPT, or standard input when omitted or '-')."""
    from app.jobs import submit as submit_job

    if prompt in (None, "-"):
        if sys.stdin.isatty():
            _fail("give a PROMPT argument or pipe one on standard input")
        prompt = sys.stdin.read()
    handle = submit_job(
        prompt,
        system_prompt=system_prompt,
        provider=provider,
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
        tags=list(tags) or None,
        idempotency_key=idempotency_key,
    )
    job = handle.wait(wait_s) if wait_s else handle.get()
    if as_json:
        _print_json(job.model_dump(mode="json"))
    else:
        click.echo(f"{job.id} {job.status}")
        if job.result:
            click.echo(job.result.get("content", ""))


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def show(job_id: str, as_json: bool) -> None:
    """Show one job and its attempts."""
    from app.jobs import get_attempts, get_job

    job = get_job(job_id)
    attempts = get_attempts(job_id)
    if as_json:
        _print_json(
            {
                **job.model_dump(mode="json"),
                "attempts": [a.model_dump(mode="json") for a in attempts],
            }
        )
        return
    click.echo(
        f"job {job.id}: {job.status} (provider {job.provider_used or '-'}, "
        f"model {job.model or '-'}, {job.attempt_count} attempt(s))"
    )
    for a in attempts:
        click.echo(
            f"  #{a.number} {a.provider} {a.outcome} "
            f"{'' if a.http_status is None else a.http_status} {a.error_type or ''}"
        )
    if job.result:
        click.echo(job.result.get("content", ""))
    elif job.error_type:
        click.echo(f"error: {job.error_type}: {job.error_message}")


@main.command()
@click.option("--status", multiple=True, help="Filter by status (repeatable).")
@click.option("--provider")
@click.option("--tag")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def jobs(
    status: tuple[str, ...], provider: str | None, tag: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    from app.jobs import list_jobs

    found = list_jobs(status=list(status) or None, provider=provider, tag=tag, limit=limit)
    if as_json:
        _print_json([j.model_dump(mode="json") for j in found])
        return
    for j in found:
        click.echo(
            f"{j.id} {j.status:<9} {j.provider_used or '-':<8} "
            f"{j.created_at:%Y-%m-%d %H:%M:%S} {j.prompt[:50]!r}"
        )


@main.command()
@click.argument("job_id")
@friendly
def cancel(job_id: str) -> None:
    """Cancel a job that has not finished."""
    from app.jobs import cancel as cancel_job

    click.echo("cancelled" if cancel_job(job_id) else "already finished")


@main.command()
@click.option("--group-by", default="provider,model,day", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def stats(group_by: str, as_json: bool) -> None:
    """Usage and cost from the database."""
    from app.jobs import usage_stats

    rows = usage_stats(group_by=[g.strip() for g in group_by.split(",") if g.strip()])
    if as_json:
        _print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="usage")
    keys = [g.strip() for g in group_by.split(",") if g.strip()]
    for k in [*keys, "requests", "ok %", "tokens", "cost $", "p50 s", "p95 s"]:
        table.add_column(k)
    for r in rows:
        rate = "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}"
        table.add_row(
            *[str(r[k]) for k in keys],
            str(r["requests"]),
            rate,
            str(r["total_tokens"]),
            f"{r['cost_usd']:.6f}",
            "-" if r["p50_latency_s"] is None else f"{r['p50_latency_s']:.3f}",
            "-" if r["p95_latency_s"] is None else f"{r['p95_latency_s']:.3f}",
        )
    Console().print(table)


@main.command()
@click.option("--validate", is_flag=True, help="Also ask each provider if its credentials work.")
@friendly
def providers(validate: bool) -> None:
    """Provider status and comparison (never any secret)."""
    from app.ai.providers import get_provider_comparison

    _print_json(get_provider_comparison(validate=validate))


@main.command()
@click.option("--revision", default="head", show_default=True)
@friendly
def migrate(revision: str) -> None:
    """Upgrade the database schema."""
    from app.db.migrate import upgrade
    from app.db.session import database_url

    upgrade(revision=revision)
    click.echo(f"database at {revision}: {_safe_url(database_url())}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _exec_celery(args: list[str]) -> None:
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args])


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on every queue (extra arguments go to celery)."""
    _exec_celery(
        [
            "worker",
            "-Q",
            "ai_requests,agent_runs,webhooks,maintenance",
            "--loglevel",
            "INFO",
            *celery_args,
        ]
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run Celery beat (the sweep). Run exactly one."""
    _exec_celery(["beat", "--loglevel", "INFO", *celery_args])


@main.command()
@click.option("--jobs", "count", type=int, default=5, show_default=True)
@friendly
def demo(count: int) -> None:
    """Run the whole path against the built-in fake providers: no keys, no services."""
    from app.demo import run_demo

    run_demo(count)


if __name__ == "__main__":  # pragma: no cover
    main()
