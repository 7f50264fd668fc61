"""What ``aiw`` shows: rich tables and the live view of ``aiw watch``."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from app.shell.tables import ago as _ago
from app.shell.tables import money, status_text, total_tokens

if TYPE_CHECKING:
    from app.jobs import Attempt, Job


def attempts_table(attempts: Sequence[Attempt]) -> Table:
    table = Table(title="attempts", title_justify="left", expand=False)
    for column in ("#", "provider", "model", "outcome", "http", "latency s", "error"):
        table.add_column(column)
    for a in attempts:
        table.add_row(
            str(a.number),
            a.provider,
            a.model or "-",
            status_text(a.outcome),
            "" if a.http_status is None else str(a.http_status),
            "" if a.latency_s is None else f"{a.latency_s:.3f}",
            " ".join(
                part
                for part in (
                    a.error_type or "",
                    f"retry after {a.retry_after_s:g}s" if a.retry_after_s else "",
                    f"(agent run {a.agent_run_id})" if a.agent_run_id else "",
                    f"- {a.detail}" if a.detail and a.outcome != "started" else "",
                )
                if part
            ),
        )
    return table


def job_view(job: Job, attempts: Sequence[Attempt], *, final: bool = False) -> RenderableType:
    """The job: a header line, its attempts, and at the end its answer or error."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    status_cell: RenderableType = status_text(job.status)
    if not final and not job.is_finished:
        status_cell = Spinner("dots", text=status_text(job.status))
    head.add_row("job", str(job.id))
    head.add_row("status", status_cell)
    head.add_row("provider", f"{job.provider_used or job.provider_requested or 'automatic'}")
    head.add_row("model", job.model or "-")
    head.add_row("attempts", str(job.attempt_count))
    run_line = _linked_run(job, attempts)
    if run_line:
        head.add_row("agent run", run_line)
    if job.next_attempt_at and not job.is_finished:
        head.add_row("next try", f"{job.next_attempt_at:%H:%M:%S} UTC")
    head.add_row("created", _ago(job.created_at))
    if job.finished_at and job.started_at:
        head.add_row("took", f"{(job.finished_at - job.created_at).total_seconds():.2f}s")
    parts: list[RenderableType] = [head]
    if attempts:
        parts.append(attempts_table(attempts))
    if job.is_finished:
        if job.result:
            usage = job.result.get("usage") or {}
            cost = job.result.get("cost_usd")
            parts.append(
                Panel(
                    Text(str(job.result.get("content") or "")),
                    title="answer",
                    subtitle=(
                        f"{total_tokens(usage)} tokens"
                        + ("" if cost is None else f", ${money(cost)}")
                    ),
                    title_align="left",
                )
            )
        elif job.error_type:
            parts.append(Text(f"error: {job.error_type}: {job.error_message}", style="red"))
    return Group(*parts)


def _linked_run(job: Job, attempts: Sequence[Attempt]) -> str | None:
    """The tracked agent run that answers (or answered) the job, in one line."""
    run_id = job.agent_run_id or next(
        (a.agent_run_id for a in reversed(attempts) if a.agent_run_id), None
    )
    if run_id is None:
        return None
    from app.jobs import AgentRunNotFoundError, get_agent_run

    try:
        run = get_agent_run(run_id)
    except AgentRunNotFoundError:
        return f"{run_id} (no longer tracked)"
    parts = [str(run.id), run.state.value]
    if run.remote_id is not None:
        parts.append(f"Codegen run {run.remote_id}: {run.remote_status or '?'}")
    if run.web_url:
        parts.append(run.web_url)
    return "  ".join(parts)


def watch_any(given: str, *, timeout: float | None, interval: float, as_json: bool) -> bool:
    """An agent run (a number), else a job (a UUID or the start of one: digits too)."""
    from app.core.errors import AgentRunNotFoundError, JobNotFoundError

    if not given.isdigit():
        return watch_job(given, timeout=timeout, interval=interval, as_json=as_json)
    try:
        return watch_agent_run(int(given), timeout=timeout, interval=interval, as_json=as_json)
    except AgentRunNotFoundError as missing:
        if len(given) < 4:  # too short for the start of a job's id
            raise
        try:
            return watch_job(given, timeout=timeout, interval=interval, as_json=as_json)
        except JobNotFoundError as exc:
            raise JobNotFoundError(f"{missing}, and {exc}") from None


def watch_job(job_id: str, *, timeout: float | None, interval: float, as_json: bool) -> bool:
    """Follow a job until it ends (True if it succeeded). Raises JobNotFoundError."""
    from app.jobs import JobTimeoutError, get_attempts, get_job

    deadline = None if timeout is None else time.monotonic() + timeout
    job = get_job(job_id)
    job_id = str(job.id)  # a prefix is looked up once
    if as_json:
        last: tuple[Any, ...] | None = None
        while True:
            attempts = get_attempts(job_id)
            key = (job.status, job.attempt_count, len(attempts), job.updated_at)
            if key != last:
                last = key
                data = {
                    **job.model_dump(mode="json"),
                    "attempts": [a.model_dump(mode="json") for a in attempts],
                }
                print(json.dumps(data, default=str), flush=True)
            if job.is_finished:
                return job.status == "succeeded"
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job.id} still {job.status} after {timeout}s")
            time.sleep(interval)
            job = get_job(job_id)

    console = Console()
    attempts = get_attempts(job_id)
    with Live(
        job_view(job, attempts), console=console, refresh_per_second=8, transient=True
    ) as live:
        while not job.is_finished:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
            job = get_job(job_id)
            attempts = get_attempts(job_id)
            live.update(job_view(job, attempts))
    console.print(job_view(job, attempts, final=True))
    if not job.is_finished:
        raise JobTimeoutError(f"job {job.id} still {job.status} after {timeout}s")
    return job.status == "succeeded"


def providers_table(data: dict[str, Any]) -> Table:
    table = Table(title="providers", title_justify="left")
    for column in ("provider", "usable", "configured", "valid", "kind", "base URL"):
        table.add_column(column, overflow="fold")
    for name, p in data["providers"].items():
        table.add_row(
            name,
            Text("yes", style="green") if p["available"] else Text("no", style="red"),
            "yes" if p["configured"] else "no",
            {None: "not checked", True: "yes", False: "NO"}[p.get("valid")],
            str(p.get("kind", "")),
            str(p.get("base_url") or "-"),
        )
    summary = data["summary"]
    table.caption = (
        f"automatic choice: {', '.join(summary['available_providers']) or 'none'}"
        f"; recommended: {summary['recommended_provider'] or '-'}"
        f"; fallback {'possible' if summary['fallback_possible'] else 'not possible'}"
    )
    if not summary["available_providers"]:
        table.caption += (
            " -- set OPENAI_API_KEY, or CODEGEN_TOKEN and CODEGEN_ORG_ID (or try aiw sandbox)"
        )
    return table


# --- agent runs --------------------------------------------------------------------------

RUN_STATE_STYLE = {
    "creating": "yellow",
    "resuming": "yellow",
    "active": "cyan",
    "finished": "green",
    "stuck": "red",
    "create_failed": "red",
}


def _run_state(record: Any) -> Text:
    state = str(record.state)
    text = Text(state, style=f"bold {RUN_STATE_STYLE.get(state, 'white')}")
    if record.remote_status:
        text.append(f"  (Codegen: {record.remote_status})", style="dim")
    return text


def _pull_requests(artifacts: Sequence[Any]) -> list[str]:
    found = []
    for a in artifacts:
        if a.kind == "pull_request":
            data = a.data if isinstance(a.data, dict) else {}
            found.append(str(data.get("url") or data.get("html_url") or a.name or a.content))
    return found


def agent_run_view(
    record: Any, events: Sequence[Any], artifacts: Sequence[Any], *, final: bool = False
) -> RenderableType:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    state: RenderableType = _run_state(record)
    if not final and not record.is_finished:
        state = Spinner("dots", text=_run_state(record))
    head.add_row("agent run", f"{record.id} (Codegen run {record.remote_id or '-'})")
    head.add_row("state", state)
    head.add_row("web_url", record.web_url or "-")
    head.add_row("created", _ago(record.created_at))
    if record.last_polled_at:
        head.add_row("last poll", _ago(record.last_polled_at))
    if record.last_poll_error:
        head.add_row("poll error", Text(record.last_poll_error, style="yellow"))
    parts: list[RenderableType] = [head]
    if events:
        table = Table(title="status changes", title_justify="left")
        for column in ("at", "event", "from", "to", "detail"):
            table.add_column(column)
        for e in events:
            table.add_row(
                f"{e.created_at:%H:%M:%S}",
                e.kind,
                e.old_status or "-",
                e.new_status or "-",
                (e.detail or "")[:60],
            )
        parts.append(table)
    prs = _pull_requests(artifacts)
    if prs:
        parts.append(Text("pull requests: " + ", ".join(prs), style="bold"))
    if record.is_finished:
        if record.result or record.summary:
            parts.append(
                Panel(
                    Text(record.summary or record.result or ""), title="result", title_align="left"
                )
            )
        if record.error_type:
            parts.append(Text(f"error: {record.error_type}: {record.error_message}", style="red"))
    return Group(*parts)


def watch_agent_run(run_id: int, *, timeout: float | None, interval: float, as_json: bool) -> bool:
    """Follow an agent run until it ends (True if Codegen says COMPLETE)."""
    from app.codegen.status import SUCCESS
    from app.jobs.agent_runs import AgentRunTimeoutError, get_agent_run
    from app.jobs.agent_runs.service import get_agent_run_artifacts, get_agent_run_events

    deadline = None if timeout is None else time.monotonic() + timeout

    def read() -> tuple[Any, list[Any], list[Any]]:
        return (
            get_agent_run(run_id),
            get_agent_run_events(run_id),
            [a for a in get_agent_run_artifacts(run_id) if a.kind != "logs"],
        )

    def ok(record: Any) -> bool:
        return str(record.state) == "finished" and record.remote_status in SUCCESS

    record, events, artifacts = read()
    if as_json:
        last: tuple[Any, ...] | None = None
        while True:
            key = (record.state, record.remote_status, len(events), len(artifacts))
            if key != last:
                last = key
                data = {
                    **record.model_dump(mode="json"),
                    "events": [e.model_dump(mode="json") for e in events],
                    "pull_requests": _pull_requests(artifacts),
                }
                print(json.dumps(data, default=str), flush=True)
            if record.is_finished:
                return ok(record)
            if deadline is not None and time.monotonic() >= deadline:
                raise AgentRunTimeoutError(f"agent run {run_id} still {record.state}")
            time.sleep(interval)
            record, events, artifacts = read()

    console = Console()
    with Live(
        agent_run_view(record, events, artifacts),
        console=console,
        refresh_per_second=8,
        transient=True,
    ) as live:
        while not record.is_finished:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
            record, events, artifacts = read()
            live.update(agent_run_view(record, events, artifacts))
    console.print(agent_run_view(record, events, artifacts, final=True))
    if not record.is_finished:
        raise AgentRunTimeoutError(f"agent run {run_id} still {record.state} after {timeout}s")
    return ok(record)


def agent_runs_table(runs: Sequence[Any]) -> Table:
    table = Table(title=f"{len(runs)} agent run(s), newest first", title_justify="left")
    for column in ("id", "codegen id", "state", "status", "created", "web_url", "prompt"):
        table.add_column(column, overflow="fold")
    for r in runs:
        table.add_row(
            str(r.id),
            str(r.remote_id or "-"),
            Text(str(r.state), style=RUN_STATE_STYLE.get(str(r.state), "white")),
            r.remote_status or "-",
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            r.web_url or "-",
            (r.prompt or "")[:40].replace("\n", " "),
        )
    return table
