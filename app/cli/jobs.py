"""``aiw submit``, ``watch``, ``show``, ``jobs``, ``cancel``, ``stats``, ``providers``:
AI requests as background jobs.

``submit`` wraps the publisher in a probe (``_PublishProbe``) to learn whether the job
reached the broker: a job is accepted once it is in the database, and when the broker is
down aiw says so and exits 3 (``EXIT_NOT_PUBLISHED``); the sweep publishes it later.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from app.cli.boundary import EXIT_ERROR, EXIT_NOT_PUBLISHED, EXIT_USAGE, fail, friendly
from app.cli.common import console, print_json


class _PublishProbe:
    """Wraps the publisher to learn whether ``submit`` reached the broker."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.error: BaseException | None = None

    def ensure_routes(self) -> None:
        self.inner.ensure_routes()

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        try:
            self.inner.publish_job(job_id, countdown=countdown, priority=priority)
        except BaseException as exc:
            self.error = exc
            raise

    def send_callback(self, task_name: str, args: list[object]) -> None:
        self.inner.send_callback(task_name, args)

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        self.inner.publish_delivery(delivery_id, countdown=countdown)

    def __getattr__(self, name: str) -> Any:  # whatever the port grows later
        return getattr(self.inner, name)


@click.command()
@click.argument("prompt", required=False)
@click.option("--system", "system_prompt", help="System prompt.")
@click.option("--provider", help="Force a provider (openai, codegen); default: automatic.")
@click.option("--model", help="Model name.")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--max-tokens", type=int)
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--idempotency-key", help="The same key twice gives the first job back.")
@click.option(
    "--priority",
    type=click.Choice(["high", "normal", "low"]),
    default="normal",
    show_default=True,
    help="Waiting jobs of a higher priority run first.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Wait up to SECONDS for the job to end; exit 1 unless it succeeded.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
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
    priority: str,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Queue an AI request: PROMPT, or standard input when omitted or '-'.

    Prints the job id and status (and the answer with --wait). If the broker is
    down the job is still accepted (it is in the database) and a warning says
    so: the sweep publishes it once the broker and beat are back. aiw then exits
    3 (with --wait at once, instead of waiting for nothing).
    """
    from app.core.publisher import PublishError, get_publisher, set_publisher
    from app.jobs import submit as submit_job
    from app.shell.topology import broker_url, safe_url

    if prompt in (None, "-"):
        if sys.stdin.isatty():
            fail("give a PROMPT argument or pipe one on standard input", EXIT_USAGE)
        prompt = sys.stdin.read()
    probe: _PublishProbe | None = None
    try:
        probe = _PublishProbe(get_publisher())
        set_publisher(probe)
    except PublishError:
        probe = None  # submit() reports it like any broker failure
    handle = submit_job(
        prompt,
        system_prompt=system_prompt,
        provider=provider,
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
        tags=list(tags) or None,
        idempotency_key=idempotency_key,
        priority=priority,
    )
    published = probe is not None and probe.error is None
    if not published:
        from app.config import get_settings

        reason = f" ({type(probe.error).__name__})" if probe and probe.error else ""
        settings = get_settings()
        back = (
            "the broker is back"
            if settings.celery_broker_url
            else "`aiw up` runs (it runs the embedded broker)"
        )
        click.echo(
            f"aiw: warning: broker unreachable at {safe_url(broker_url(settings))}{reason}; "
            f"job {handle.id} is accepted and will be published by the sweep (beat) once {back}",
            err=True,
        )
        if wait_s:
            click.echo(str(handle.id))  # nothing to wait for: the id, for a script
        else:
            _print_job(handle.get(), as_json)
        sys.exit(EXIT_NOT_PUBLISHED)
    job = handle.wait(wait_s) if wait_s else handle.get()
    _print_job(job, as_json)
    if wait_s and job.status != "succeeded":
        sys.exit(EXIT_ERROR)


def _print_job(job: Any, as_json: bool) -> None:
    if as_json:
        print_json(job.model_dump(mode="json"))
    else:
        click.echo(f"{job.id} {job.status}")
        if job.result:
            click.echo(job.result.get("content") or "")
        elif job.error_type:
            click.echo(f"error: {job.error_type}: {job.error_message}")


@click.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=0.5, show_default=True)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON line per change; the last is final."
)
@friendly
def watch(job_id: str, timeout: float | None, interval: float, as_json: bool) -> None:
    """Follow a job live until it ends: status, attempts, then the answer.

    JOB_ID is an AI request (a UUID) or an agent run (a number): a run shows its
    status changes, pull requests and web_url. Exit status 0 when it succeeded (a
    run: COMPLETE), 1 when it failed, was cancelled, or the timeout ran out.
    """
    from app.shell.display import watch_any

    if not watch_any(job_id, timeout=timeout, interval=interval, as_json=as_json):
        sys.exit(EXIT_ERROR)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def show(job_id: str, as_json: bool) -> None:
    """Show one job, its attempts and its answer."""
    from app.jobs import get_attempts, get_job
    from app.shell.display import job_view

    job = get_job(job_id)
    attempts = get_attempts(job.id)  # a prefix is looked up once
    if as_json:
        print_json(
            {
                **job.model_dump(mode="json"),
                "attempts": [a.model_dump(mode="json") for a in attempts],
            }
        )
        return
    console().print(job_view(job, attempts, final=True))


@click.command()
@click.option("--status", multiple=True, help="Filter by status (repeatable).")
@click.option("--provider", help="The provider that answered.")
@click.option("--tag")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def jobs(
    status: tuple[str, ...], provider: str | None, tag: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, newest first."""
    from app.jobs import list_jobs
    from app.shell.tables import jobs_table

    found = list_jobs(status=list(status) or None, provider=provider, tag=tag, limit=limit)
    if as_json:
        print_json([j.model_dump(mode="json") for j in found])
        return
    console().print(jobs_table(found))


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel a job that has not finished (a call in flight is not interrupted, its answer
    is discarded)."""
    from app.jobs import cancel as cancel_job
    from app.jobs import get_job

    cancelled = cancel_job(job_id)
    job = get_job(job_id)
    if as_json:
        print_json({"id": str(job.id), "cancelled": cancelled, "status": job.status})
    elif cancelled:
        click.echo(f"{job.id} cancelled")
    else:
        click.echo(f"{job.id} already {job.status}: nothing to cancel")


@click.command()
@click.option("--group-by", default="provider,model,day", show_default=True)
@click.option("--days", type=click.IntRange(min=1), help="Only the last N days.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def stats(group_by: str, days: int | None, as_json: bool) -> None:
    """Usage, cost, success rate and latency by provider, model and day (from the database)."""
    from datetime import timedelta

    from app.db.base import utcnow
    from app.jobs import usage_stats
    from app.shell.tables import stats_table

    keys = [g.strip() for g in group_by.split(",") if g.strip()]
    since = utcnow() - timedelta(days=days) if days else None
    rows = usage_stats(since=since, group_by=keys)
    if as_json:
        print_json(rows)
        return
    console().print(stats_table(rows, keys))


@click.command()
@click.option("--validate", is_flag=True, help="Also ask each provider if its credentials work.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def providers(validate: bool, as_json: bool) -> None:
    """Provider status and comparison (never any secret)."""
    from app.ai.providers import get_provider_comparison
    from app.shell.display import providers_table

    data = get_provider_comparison(validate=validate)
    sandbox = click.get_current_context().find_root().obj.get("sandbox")
    whose = (
        f"the sandbox of `aiw up --sandbox` (pid {sandbox.pid}, {sandbox.path})"
        if sandbox is not None
        else "this shell's environment (and .env)"
    )
    if as_json:
        print_json({**data, "environment": whose})
        return
    click.echo(f"settings: {whose}")
    console().print(providers_table(data))


COMMANDS = (submit, watch, show, jobs, cancel, stats, providers)
