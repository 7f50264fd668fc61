"""The agent run tasks: create a run, send a follow-up prompt, poll (while runs are followed)."""

from __future__ import annotations

from app.config import get_settings
from app.core.publisher import QUEUE_AGENT_RUNS
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.jobs.agent_runs import wakeup
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
def poll_agent_runs(
    round_token: str | None = None, cursor: int | None = 0, tick: str | None = None
) -> str:
    """A tick (beat's, or the one the last round scheduled) starts a round; a round
    short of budget goes on in a new message (never a sleep in this worker slot). A
    round that ends schedules the next tick while runs are followed (``wakeup``). A
    lost message costs nothing: its runs come back when their lease ends, and beat's
    tick restarts the chain."""
    settings = get_settings()
    wakeup.tick_started(tick, settings)
    outcome = poll(round_token, cursor, settings=settings)
    if outcome.countdown is not None:
        poll_agent_runs.apply_async(
            args=[outcome.token, outcome.cursor], countdown=outcome.countdown
        )
    elif (planned := wakeup.plan_next_tick(settings)) is not None:
        token, delay = planned
        poll_agent_runs.apply_async(args=[None, 0, token], countdown=delay)
    return str(outcome)
