"""The agent run tasks: create a run, send a follow-up prompt, poll (beat)."""

from __future__ import annotations

from app.core.publisher import QUEUE_AGENT_RUNS
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.jobs.agent_runs.actions import create_run, resume_run
from app.jobs.agent_runs.constants import TASK_CREATE, TASK_POLL, TASK_RESUME
from app.jobs.agent_runs.poller import poll
from workers.tasks.base import aiw_task, claimed_task

create_agent_run = claimed_task(
    TASK_CREATE, QUEUE_AGENT_RUNS, AgentRunRow, int, AgentRunRow.state == AgentRunState.CREATING
)(create_run)
resume_agent_run = claimed_task(
    TASK_RESUME, QUEUE_AGENT_RUNS, AgentRunRow, int, AgentRunRow.state == AgentRunState.RESUMING
)(resume_run)


@aiw_task(TASK_POLL, QUEUE_AGENT_RUNS, autoretry_for=(), ignore_result=True)
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
