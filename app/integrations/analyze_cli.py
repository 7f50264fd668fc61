"""``aiw analyze``: the command (registered by ``app.cli``); the work is in ``analyze.py``.

Only click is imported with this module; graph-sitter, the database and the
providers are imported when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

EXIT_ERROR = 1
EXIT_INCOMPLETE = 4  # the report was written, but some jobs had not finished
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"aiw: {message}", err=True)
    sys.exit(code)


def _console() -> Any:
    """Messages on standard error, one line each (no wrapping: scripts grep them)."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _quiet_graph_sitter() -> None:
    """graph-sitter logs every parsing step at INFO on its own handlers."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name == "graph_sitter" or name.startswith("graph_sitter."):
            logging.getLogger(name).setLevel(logging.WARNING)


@click.command("analyze")
@click.argument("path", type=click.Path(file_okay=True, dir_okay=True, path_type=Path))
@click.option("--prompt", "-p", required=True, help="The question asked about every symbol.")
@click.option(
    "--filter",
    "filter_",
    type=click.Choice(["functions", "classes", "files"]),
    default="functions",
    show_default=True,
    help="Which symbols: functions (and methods), classes, or files.",
)
@click.option("--provider", help="Force a provider (openai, codegen, ...); default: automatic.")
@click.option("--model", help="Model name; default: the provider's.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Report directory (report.json, report.md); default aiw-analysis/<repo>-<id>.",
)
@click.option("--timeout", type=float, help="Stop following after N seconds (jobs go on).")
@click.option(
    "--retry-failed/--no-retry-failed",
    default=True,
    show_default=True,
    help="Ask again about symbols whose earlier job failed.",
)
@click.option(
    "--priority",
    type=click.Choice(["high", "normal", "low"]),
    default="low",
    show_default=True,
    help="The jobs' priority (low: other jobs go first).",
)
@click.option("--agent", is_flag=True, help="Hand the whole task to one Codegen agent run.")
@click.option("--repo-id", type=int, help="Codegen repository id (with --agent).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's JSON at the end.")
def analyze_command(
    path: Path,
    prompt: str,
    filter_: str,
    provider: str | None,
    model: str | None,
    out_dir: Path | None,
    timeout: float | None,
    retry_failed: bool,
    priority: str,
    agent: bool,
    repo_id: int | None,
    as_json: bool,
) -> None:
    """Ask PROMPT about every function, class or file of the repository at PATH.

    One background job per symbol (a worker must be running: `aiw worker`), a
    progress bar while they finish, then a report (JSON and Markdown) with every
    answer and the totals of tokens and cost. Interrupt at any time: the jobs go
    on, and running the same command again resumes where it stopped.
    """
    from sqlalchemy.exc import DBAPIError

    from app.config import ConfigError
    from app.core.errors import AIProviderError, JobError
    from app.integrations.graph_sitter import GraphSitterUnavailableError

    try:
        if agent:
            _run_agent(path, prompt, filter_, model, out_dir, timeout, repo_id, as_json)
        else:
            _run(
                path,
                prompt,
                filter_,
                provider,
                model,
                out_dir,
                timeout,
                retry_failed,
                as_json,
                priority,
            )
    except (AIProviderError, ConfigError, GraphSitterUnavailableError, JobError) as exc:
        _fail(str(exc))
    except DBAPIError as exc:
        _fail(f"database error: {type(exc.orig).__name__}: {str(exc.orig).strip()[:200]}")
    except KeyboardInterrupt:  # while parsing or queueing (following has its own)
        _fail(
            "interrupted; the jobs already queued go on, run the same command again to resume",
            EXIT_INTERRUPTED,
        )


def _plan(path: Path, prompt: str, filter_: str, provider: str | None, model: str | None) -> Any:
    from app.integrations.analyze import plan_analysis
    from app.integrations.graph_sitter import graph_sitter_api

    graph_sitter_api()  # imported first: its loggers exist from then on
    _quiet_graph_sitter()
    with _console().status(f"parsing {escape(str(path))} with graph-sitter"):
        return plan_analysis(path, prompt, filter=filter_, provider=provider, model=model)


def _run(
    path: Path,
    prompt: str,
    filter_: str,
    provider: str | None,
    model: str | None,
    out_dir: Path | None,
    timeout: float | None,
    retry_failed: bool,
    as_json: bool,
    priority: str = "low",
) -> None:
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from app.integrations import analyze as an

    console = _console()
    plan = _plan(path, prompt, filter_, provider, model)
    queued = an.queue_analysis(plan, retry_failed=retry_failed, priority=priority)
    counts = {o: sum(1 for q in queued if q.origin == o) for o in ("new", "reused", "retried")}
    skipped = sum(1 for q in queued if q.origin == "skipped")
    console.print(
        f"{len(plan.symbols)} {filter_} in {escape(plan.repository)}: {counts['new']} queued, "
        f"{counts['reused']} from an earlier run, {counts['retried']} asked again"
        + (f", {skipped} skipped (too long)" if skipped else "")
        + f"  [dim](tag {plan.tag})[/dim]"
    )
    ids = [q.job_id for q in queued if q.job_id is not None]
    interrupted = False
    stalled_since: list[float] = [0.0]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("answers", total=len(ids), detail="")

        def on_progress(p: an.Progress) -> None:
            if p.changed:
                stalled_since[0] = p.elapsed
            failed = p.by_status.get("failed", 0) + p.by_status.get("cancelled", 0)
            running = p.by_status.get("running", 0)
            detail = f"{running} running" + (f", {failed} failed" if failed else "")
            if p.elapsed - stalled_since[0] > 15 and p.finished == 0 and running == 0:
                detail = "waiting for a worker (is `aiw worker` running?)"
            bar.update(task, completed=p.finished, detail=detail)

        try:
            an.follow(ids, on_progress=on_progress, timeout=timeout)
        except KeyboardInterrupt:
            interrupted = True
    report = an.build_report(plan, queued)
    json_path, md_path = an.write_report(report, out_dir or an.default_out_dir(plan))
    t = report["totals"]
    console.print(
        f"{t['succeeded']} answered, {t['failed']} failed, {t['pending']} unfinished; "
        f"{t['total_tokens']} tokens, ${t['cost_usd']:.6f}"
        + (
            f" ({t['answers_without_price']} answers without a price)"
            if t["answers_without_price"]
            else ""
        )
    )
    console.print(f"report: {escape(str(md_path))} and {escape(str(json_path))}")
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    if interrupted or not report["complete"]:
        console.print(
            "the unfinished jobs go on in the workers; run the same command again to resume"
        )
        sys.exit(EXIT_INTERRUPTED if interrupted else EXIT_INCOMPLETE)


def _run_agent(
    path: Path,
    prompt: str,
    filter_: str,
    model: str | None,
    out_dir: Path | None,
    timeout: float | None,
    repo_id: int | None,
    as_json: bool,
) -> None:
    import json
    import time

    from app.integrations import analyze as an
    from app.jobs.agent_runs import get_agent_run

    console = _console()
    plan = _plan(path, prompt, filter_, "codegen", model)
    hand_off = an.hand_to_agent(plan, repo_id=repo_id, model=model)
    console.print(
        f"{'following the earlier' if hand_off.reused else 'started a'} Codegen agent run "
        f"for {len(plan.symbols)} {filter_} of {escape(plan.repository)} "
        f"(run {hand_off.run_id}; also `aiw watch {hand_off.run_id}`)"
    )
    interrupted = False
    started = time.monotonic()
    try:
        with console.status("agent run: creating") as status:
            while True:
                record = get_agent_run(hand_off.run_id)
                status.update(f"agent run: {record.remote_status or record.state}")
                if record.is_finished:
                    break
                if timeout is not None and time.monotonic() - started >= timeout:
                    break
                time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
    report = an.agent_report(hand_off)
    json_path, md_path = an.write_agent_report(report, out_dir or an.default_out_dir(plan))
    console.print(
        f"agent run {report['status'] or report['state']}; report: {escape(str(md_path))} "
        f"and {escape(str(json_path))}"
    )
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    if interrupted or not report["complete"]:
        console.print("the agent run goes on; run the same command again to follow it")
        sys.exit(EXIT_INTERRUPTED if interrupted else EXIT_INCOMPLETE)
    if report["error"]:
        sys.exit(EXIT_ERROR)


COMMANDS = (analyze_command,)  # what `aiw` registers (app.cli.COMMAND_MODULES)
