"""``aiw agent run|track|resume|show|list``: Codegen agent runs followed as jobs."""

from __future__ import annotations

import sys
from typing import Any

import click

from app.cli.boundary import EXIT_ERROR, friendly
from app.cli.common import console, print_json, read_prompt


def _run_ok(record: Any) -> bool:
    from app.codegen.status import SUCCESS

    return str(record.state) == "finished" and record.remote_status in SUCCESS


def _print_run(record: Any, as_json: bool) -> None:
    if as_json:
        from app.jobs.agent_runs.service import get_agent_run_artifacts, get_agent_run_events

        print_json(
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

    console().print(
        agent_run_view(
            record, get_agent_run_events(record.id), get_agent_run_artifacts(record.id), final=True
        )
    )


@click.group()
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
        read_prompt(prompt),
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

    record = resume_agent_run(run_id, read_prompt(prompt)).get()
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
        print_json([r.model_dump(mode="json") for r in found])
        return
    console().print(agent_runs_table(found))


COMMANDS = (agent,)
