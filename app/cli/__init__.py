"""The ``aiw`` command line.

Every command prints one clear line and exits non-zero on a user error (bad id,
missing argument, bad URL, unreachable database or broker), never a traceback
(``aiw -v ...`` shows it); no secret in it, nor in a log line (``app.core.redact``: the
error lines and every log handler are redacted; what the database holds was redacted
before it was stored). Exit status: 0 done, 1 error, 2 usage error, 3 job
accepted but the broker is unreachable (``submit --wait`` only), 130 interrupted.

Commands that a script would read take ``--json``. The Celery processes
(``worker``, ``beat``, ``flower``) are ``celery`` itself, exec'd: ``app`` never
imports Celery.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from app.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_PUBLISHED = 3
EXIT_INTERRUPTED = 130

log = logging.getLogger("aiw")


def _redact(message: str) -> str:
    from app.core.redact import redact

    return redact(message)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"aiw: {_redact(message)}", err=True)
    sys.exit(code)


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


def _describe_error(exc: BaseException) -> str | None:
    """One line for an error a user can cause, or None for a bug."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from app.core.errors import AIProviderError, JobError
    from app.shell.runtime import RuntimeStartError

    if isinstance(exc, ConfigError | AIProviderError | JobError | RuntimeStartError):
        return str(exc)
    from app.webhooks.errors import WebhookError

    if isinstance(exc, WebhookError):
        return str(exc)
    if isinstance(exc, DBAPIError):
        from app.shell.topology import safe_url

        where = ""
        try:
            from app.db.session import database_url

            where = f" at {safe_url(database_url())}"
        except Exception:  # noqa: BLE001 - the message must not fail on a bad URL
            pass
        orig = exc.orig if exc.orig is not None else exc
        text = _first_line(orig)
        if "no such table" in text or type(orig).__name__ == "UndefinedTable":
            return f"the database{where} has no schema yet: run `aiw migrate` ({text})"
        return f"database unreachable{where}: {type(orig).__name__}: {text}"
    if isinstance(exc, ArgumentError):
        return f"bad database URL (DATABASE_URL): {_first_line(exc)}"
    try:
        import redis

        if isinstance(exc, redis.RedisError):
            return f"Redis unreachable: {type(exc).__name__}: {_first_line(exc)}"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError):
        return f"{type(exc).__name__}: {exc}"
    return None


def friendly(fn: F) -> F:
    """Turn any error into one line and a non-zero exit status (``-v``: the traceback too)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:  # the command line is the outermost boundary
            if _verbose():
                log.exception("failed")
            message = _describe_error(exc)
            if message is None:
                message = (
                    f"unexpected error: {type(exc).__name__}: {_first_line(exc)} "
                    "(run `aiw -v ...` for the traceback)"
                )
            _fail(message)

    return wrapper  # type: ignore[return-value]


def _verbose() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("verbose"))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _console() -> Any:
    from rich.console import Console

    return Console()


class AiwGroup(click.Group):
    """A click group whose usage errors are one line: ``aiw show: missing argument ...``."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "aiw")  # also under `python -m app.cli`
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # `aiw` alone: the help text
            sys.exit(0)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "aiw"
            message = _redact(exc.format_message().rstrip("."))
            click.echo(f"{where}: {message} (see '{where} --help')", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"aiw: {_redact(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aiw: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=AiwGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log more, and show tracebacks of errors.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """ai-worker: AI requests (OpenAI, Codegen agents) as background jobs.

    Start everything on this machine with `aiw up` (or `aiw up --sandbox` for fake
    providers and no keys), then `aiw submit "..." --wait 60`.
    """
    ctx.obj = {"verbose": verbose, "sandbox": _adopt_sandbox(ctx.invoked_subcommand)}
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="aiw: %(levelname)s %(name)s: %(message)s",
    )
    from app.core.redact import install_log_redaction

    install_log_redaction()  # no secret in a log line (app.core.redact)


def _adopt_sandbox(command: str | None) -> Any:
    """While ``aiw up --sandbox`` runs in this directory, every other command uses its
    settings (the fakes' URLs and keys): the second shell sees the first."""
    if command in ("up", "sandbox"):
        return None
    from app.config import ConfigError, get_settings
    from app.shell.topology import read_sandbox_env

    try:
        running = read_sandbox_env(get_settings())
    except (ConfigError, OSError):
        return None  # the command reports a bad configuration itself
    if running is not None:
        os.environ.update(running.values)
        get_settings.cache_clear()
    return running


# --- jobs --------------------------------------------------------------------------------


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


@main.command()
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
            _fail("give a PROMPT argument or pipe one on standard input", EXIT_USAGE)
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
        _print_json(job.model_dump(mode="json"))
    else:
        click.echo(f"{job.id} {job.status}")
        if job.result:
            click.echo(job.result.get("content") or "")
        elif job.error_type:
            click.echo(f"error: {job.error_type}: {job.error_message}")


@main.command()
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


@main.command()
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
        _print_json(
            {
                **job.model_dump(mode="json"),
                "attempts": [a.model_dump(mode="json") for a in attempts],
            }
        )
        return
    _console().print(job_view(job, attempts, final=True))


@main.command()
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
        _print_json([j.model_dump(mode="json") for j in found])
        return
    _console().print(jobs_table(found))


@main.command()
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
        _print_json({"id": str(job.id), "cancelled": cancelled, "status": job.status})
    elif cancelled:
        click.echo(f"{job.id} cancelled")
    else:
        click.echo(f"{job.id} already {job.status}: nothing to cancel")


@main.command()
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
        _print_json(rows)
        return
    _console().print(stats_table(rows, keys))


@main.command()
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
        _print_json({**data, "environment": whose})
        return
    click.echo(f"settings: {whose}")
    _console().print(providers_table(data))


# --- Codegen agent runs ------------------------------------------------------------------


def _run_ok(record: Any) -> bool:
    from app.codegen.status import SUCCESS

    return str(record.state) == "finished" and record.remote_status in SUCCESS


def _print_run(record: Any, as_json: bool) -> None:
    if as_json:
        from app.jobs.agent_runs.service import get_agent_run_artifacts, get_agent_run_events

        _print_json(
            {
                **record.model_dump(mode="json"),
                "events": [e.model_dump(mode="json") for e in get_agent_run_events(record.id)],
                "artifacts": [
                    a.model_dump(mode="json")
                    for a in get_agent_run_artifacts(record.id)
                    if a.kind != "logs"
                ],
            }
        )
        return
    from app.jobs.agent_runs.service import get_agent_run_artifacts, get_agent_run_events
    from app.shell.display import agent_run_view

    _console().print(
        agent_run_view(
            record, get_agent_run_events(record.id), get_agent_run_artifacts(record.id), final=True
        )
    )


def _read_prompt(prompt: str | None) -> str:
    if prompt in (None, "-"):
        if sys.stdin.isatty():
            _fail("give a PROMPT argument or pipe one on standard input", EXIT_USAGE)
        return sys.stdin.read()
    return prompt


@main.group()
def agent() -> None:
    """Codegen agent runs followed as jobs: start, track, resume (watch with `aiw watch ID`)."""


@agent.command("run")
@click.argument("prompt", required=False)
@click.option("--repo-id", type=click.IntRange(min=1), help="Codegen repository id.")
@click.option("--repository", help="owner/repo: resolved to its repository id by Codegen.")
@click.option("--branch", help="The branch to work on (told in the prompt, kept in metadata).")
@click.option("--priority", help="high, normal or low (kept in the run's metadata).")
@click.option("--model")
@click.option("--agent-type")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option(
    "--callback",
    "callbacks",
    multiple=True,
    help="A Celery task name sent (run id, old, new status) on each change.",
)
@click.option("--no-webhook", is_flag=True, help="Keep this run out of the webhooks.")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Wait up to SECONDS for the run to end; exit 1 unless it completed.",
)
@click.option("--json", "as_json", is_flag=True)
@friendly
def agent_run(
    prompt: str | None,
    repo_id: int | None,
    repository: str | None,
    branch: str | None,
    priority: str | None,
    model: str | None,
    agent_type: str | None,
    tags: tuple[str, ...],
    callbacks: tuple[str, ...],
    no_webhook: bool,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Start a Codegen agent run (PROMPT, or standard input) and follow it in the background."""
    from app.jobs.agent_runs import submit_agent_run

    handle = submit_agent_run(
        _read_prompt(prompt),
        repo_id=repo_id,
        repository=repository,
        branch=branch,
        priority=priority,
        model=model,
        agent_type=agent_type,
        tags=list(tags) or None,
        callbacks=list(callbacks) or None,
        webhook=not no_webhook,
    )
    record = handle.wait(wait_s) if wait_s else handle.get()
    if as_json or wait_s:
        _print_run(record, as_json)
    else:
        click.echo(f"{record.id} {record.state} (follow it: aiw watch {record.id})")
    if wait_s and not _run_ok(record):
        sys.exit(EXIT_ERROR)


@agent.command("track")
@click.argument("remote_id", type=click.IntRange(min=1))
@click.option("--tag", "tags", multiple=True)
@click.option("--callback", "callbacks", multiple=True)
@click.option("--no-webhook", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def agent_track(
    remote_id: int,
    tags: tuple[str, ...],
    callbacks: tuple[str, ...],
    no_webhook: bool,
    as_json: bool,
) -> None:
    """Follow a run created elsewhere, by its Codegen run id."""
    from app.jobs.agent_runs import track_agent_run

    record = track_agent_run(
        remote_id,
        callbacks=list(callbacks) or None,
        webhook=not no_webhook,
        tags=list(tags) or None,
    ).get()
    if as_json:
        _print_run(record, True)
    else:
        click.echo(
            f"{record.id} {record.state} {record.remote_status or ''} "
            f"(follow it: aiw watch {record.id})"
        )


@agent.command("resume")
@click.argument("run_id", type=int)
@click.argument("prompt", required=False)
@click.option("--json", "as_json", is_flag=True)
@friendly
def agent_resume(run_id: int, prompt: str | None, as_json: bool) -> None:
    """Give a run a follow-up prompt (PROMPT, or standard input)."""
    from app.jobs.agent_runs import resume_agent_run

    record = resume_agent_run(run_id, _read_prompt(prompt)).get()
    if as_json:
        _print_run(record, True)
    else:
        click.echo(f"{record.id} {record.state} (follow it: aiw watch {record.id})")


@agent.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def agent_show(run_id: str, as_json: bool) -> None:
    """One run: its status history, pull requests, web_url, result."""
    from app.jobs.agent_runs import get_agent_run

    _print_run(get_agent_run(run_id), as_json)  # type: ignore[arg-type]


@agent.command("list")
@click.option("--state", multiple=True, help="Ours: creating, resuming, active, finished...")
@click.option("--status", multiple=True, help="Codegen's, verbatim: RUNNING, COMPLETE...")
@click.option("--tag")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def agent_list(
    state: tuple[str, ...], status: tuple[str, ...], tag: str | None, limit: int, as_json: bool
) -> None:
    """List agent runs, newest first."""
    from app.jobs.agent_runs import list_agent_runs
    from app.shell.display import agent_runs_table

    found = list_agent_runs(
        state=list(state) or None, status=list(status) or None, tag=tag, limit=limit
    )
    if as_json:
        _print_json([r.model_dump(mode="json") for r in found])
        return
    _console().print(agent_runs_table(found))


# --- webhooks ----------------------------------------------------------------------------


@main.group()
def webhooks() -> None:
    """Signed webhooks (Standard Webhooks): endpoints and their deliveries."""


def _endpoint_dict(endpoint: Any) -> dict[str, Any]:
    return dict(endpoint.model_dump(mode="json"))


def _attempt_line(attempt: Any) -> str:
    if attempt.ok:
        return f"delivered: HTTP {attempt.status_code} in {attempt.latency_s:.3f}s"
    answer = f"HTTP {attempt.status_code}" if attempt.status_code is not None else "no answer"
    return f"not delivered: {answer}" + (f" ({attempt.error})" if attempt.error else "")


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    help="An event type or group.* (repeatable); default: every event.",
)
@click.option("--secret", help="Signing secret (whsec_...); default: a new one.")
@click.option("--description")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_add(
    url: str, events: tuple[str, ...], secret: str | None, description: str | None, as_json: bool
) -> None:
    """Register an endpoint; prints its signing secret this once (it is stored encrypted)."""
    from app.webhooks import register_endpoint

    endpoint, signing_secret = register_endpoint(
        url, list(events) or None, secret=secret, description=description
    )
    if as_json:
        _print_json({**_endpoint_dict(endpoint), "secret": signing_secret})
        return
    click.echo(f"endpoint {endpoint.id} -> {endpoint.url}")
    click.echo(f"events: {', '.join(endpoint.event_types) or 'all'}")
    click.echo(f"signing secret (shown once, give it to the receiver): {signing_secret}")


@webhooks.command("list")
@click.option("--enabled/--disabled", "enabled", default=None, help="Filter.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_list(enabled: bool | None, as_json: bool) -> None:
    """List endpoints (never their secrets)."""
    from app.shell.tables import endpoints_table
    from app.webhooks import list_endpoints

    found = list_endpoints(enabled=enabled)
    if as_json:
        _print_json([_endpoint_dict(e) for e in found])
        return
    _console().print(endpoints_table(found))


def _report_attempt(attempt: Any, as_json: bool) -> None:
    """Print one manual delivery attempt; exit 1 unless the receiver answered 2xx."""
    if as_json:
        _print_json(attempt.model_dump(mode="json"))
    else:
        click.echo(_attempt_line(attempt))
    if not attempt.ok:
        sys.exit(EXIT_ERROR)


@webhooks.command("test")
@click.argument("endpoint_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_test(endpoint_id: str, as_json: bool) -> None:
    """Send a signed webhook.test event now and show the answer (exit 1 if not 2xx)."""
    from app.webhooks import send_test_event

    _report_attempt(send_test_event(endpoint_id), as_json)


@webhooks.command("deliveries")
@click.option("--endpoint", "endpoint_id", help="Only this endpoint's.")
@click.option("--status", type=click.Choice(["pending", "succeeded", "failed", "abandoned"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_deliveries(
    endpoint_id: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List deliveries (one event to one endpoint), newest first."""
    from app.shell.tables import deliveries_table
    from app.webhooks import list_deliveries

    found = list_deliveries(endpoint_id, status, limit=limit)
    if as_json:
        _print_json([d.model_dump(mode="json") for d in found])
        return
    _console().print(deliveries_table(found))


@webhooks.command("redeliver")
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_redeliver(delivery_id: str, as_json: bool) -> None:
    """Send a delivery again now, same webhook-id (exit 1 if not 2xx)."""
    from app.webhooks import redeliver

    _report_attempt(redeliver(delivery_id), as_json)


@webhooks.command("disable")
@click.argument("endpoint_id")
@click.option("--reason", default="by the operator", show_default=True)
@friendly
def webhooks_disable(endpoint_id: str, reason: str) -> None:
    """Stop sending to an endpoint (its pending deliveries are abandoned)."""
    from app.webhooks import disable_endpoint

    endpoint = disable_endpoint(endpoint_id, reason)
    click.echo(f"endpoint {endpoint.id} disabled ({endpoint.disabled_reason})")


@webhooks.command("enable")
@click.argument("endpoint_id")
@friendly
def webhooks_enable(endpoint_id: str) -> None:
    """Send to a disabled endpoint again (new events only)."""
    from app.webhooks import enable_endpoint

    endpoint = enable_endpoint(endpoint_id)
    click.echo(f"endpoint {endpoint.id} enabled")


# --- running it --------------------------------------------------------------------------


@main.command()
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
            _fail(f"database {url} is at {now}, the newest revision is {newest}: run aiw migrate")
        click.echo(f"database at {now} (newest): {url}")
        return
    upgrade(revision=revision)
    click.echo(f"database at {current()}: {url}")


@main.command()
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
        problems.append(_describe_error(exc) or f"database: {type(exc).__name__}: {exc}")
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
        _print_json(result)
    else:
        click.echo(f"mode: {topo.shape}")
        for part in ("database", "broker"):
            state = "ok" if result[part]["ok"] else "FAILED"
            click.echo(f"{part}: {result[part]['url']}: {state}")
        if "webhook_key" in result:
            click.echo(f"webhook key: {'ok' if result['webhook_key']['ok'] else 'FAILED'}")
    if problems:
        _fail("; ".join(problems))


@main.command()
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
        servers, extra_env = _start_sandbox(0, 0)
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


@main.command(context_settings={"ignore_unknown_options": True})
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


@main.command(context_settings={"ignore_unknown_options": True})
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


@main.command(context_settings={"ignore_unknown_options": True})
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


@main.command()
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
    _block_until_signal()
    server.shutdown()


def _block_until_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.is_set():
        stop.wait(0.5)


def _start_sandbox(openai_port: int, codegen_port: int) -> tuple[list[Any], dict[str, str]]:
    from app.sandbox.codegen_server import FakeCodegenServer
    from app.sandbox.openai_server import FakeOpenAIServer

    try:
        openai = FakeOpenAIServer(port=openai_port).start()
    except OSError as exc:
        _fail(f"cannot start the fake OpenAI server on port {openai_port}: {exc.strerror}")
    try:
        codegen = FakeCodegenServer(port=codegen_port).start()
    except OSError as exc:
        openai.stop()
        _fail(f"cannot start the fake Codegen server on port {codegen_port}: {exc.strerror}")
    env = {
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.url,
        "CODEGEN_TOKEN": codegen.token,
        "CODEGEN_ORG_ID": str(codegen.org_id),
        "CODEGEN_BASE_URL": codegen.url,
        "CODEGEN_POLL_INTERVAL": "1",
        # The fake's runs end in about a second: poll them often so the tour is quick
        # (rounds come only while runs are followed; beat's tick stays the minute).
        "AIW_AGENT_POLL_INTERVAL": "1",
        "PREFER_CODEGEN": "false",
        # A webhook receiver on this machine is what a sandbox tour has.
        "AIW_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    return [openai, codegen], env


@main.command()
@click.option("--openai-port", type=click.IntRange(0, 65535), default=8901, show_default=True)
@click.option("--codegen-port", type=click.IntRange(0, 65535), default=8902, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the environment as one JSON line.")
def sandbox(openai_port: int, codegen_port: int, as_json: bool) -> None:
    """Run the fake OpenAI and Codegen servers (the tests' fakes) on loopback until Ctrl-C,
    and print the environment that points ai-worker at them. No keys, no network."""
    servers, env = _start_sandbox(openai_port, codegen_port)
    if as_json:
        click.echo(json.dumps(env))
    else:
        click.echo("# fake OpenAI and Codegen servers are running; in another shell:")
        for key, value in env.items():
            click.echo(f"export {key}={value}")
        click.echo("# then: aiw up   (or aiw worker), and aiw submit 'Hello' --wait 60")
        click.echo("# Ctrl-C stops the fakes.")
    sys.stdout.flush()
    try:
        _block_until_signal()
    finally:
        for server in servers:
            server.stop()


@main.command()
@click.option("--jobs", "count", type=click.IntRange(1, 100), default=5, show_default=True)
@friendly
def demo(count: int) -> None:
    """A guided tour: fake providers, a worker, a few jobs (one meets a 429, one a 503),
    the usage table, and a fallback from a failing Codegen to OpenAI."""
    from app.shell.demo import run_demo

    run_demo(count)


# `aiw analyze` (graph-sitter repository analysis): only click is imported here.
from app.integrations.analyze_cli import analyze_command  # noqa: E402

main.add_command(analyze_command)
from app.cli.budgets import budgets_group  # noqa: E402  (`aiw budgets`: only click imported)

main.add_command(budgets_group)
