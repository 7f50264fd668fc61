"""The agent run tasks: create a run, send a follow-up prompt, poll (beat)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from app.jobs.agent_runs.actions import create_run, resume_run
from app.jobs.agent_runs.constants import TASK_CREATE, TASK_POLL, TASK_RESUME
from app.jobs.agent_runs.poller import poll
from workers.celery_app import QUEUE_AGENT_RUNS, celery_app

# The database unreachable: retry the message with backoff; the row is untouched (or
# still claimed by this message, which takes its claim back).
DATABASE_DOWN = (OperationalError, InterfaceError)

_RETRY_OPTIONS: dict[str, Any] = {
    "max_retries": None,  # the row counts Codegen retries; the broker only waits
    "autoretry_for": DATABASE_DOWN,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}


@celery_app.task(bind=True, name=TASK_CREATE, queue=QUEUE_AGENT_RUNS, **_RETRY_OPTIONS)
def create_agent_run(self: Any, run_id: int) -> str:
    outcome = create_run(int(run_id), claim_token=self.request.id)
    if outcome.action == "retry":
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    return outcome.action


@celery_app.task(bind=True, name=TASK_RESUME, queue=QUEUE_AGENT_RUNS, **_RETRY_OPTIONS)
def resume_agent_run(self: Any, run_id: int) -> str:
    outcome = resume_run(int(run_id), claim_token=self.request.id)
    if outcome.action == "retry":
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    return outcome.action


@celery_app.task(name=TASK_POLL, queue=QUEUE_AGENT_RUNS, ignore_result=True)
def poll_agent_runs(round_token: str | None = None, cursor: int | None = 0) -> str:
    """A beat tick starts a round; a round short of budget goes on in a new message
    (never a sleep in this worker slot). A lost continuation costs nothing: its runs
    come back to the next tick when their lease ends."""
    outcome = poll(round_token, cursor)
    if outcome.countdown is not None:
        poll_agent_runs.apply_async(
            args=[outcome.token, outcome.cursor], countdown=outcome.countdown
        )
    return str(outcome)
