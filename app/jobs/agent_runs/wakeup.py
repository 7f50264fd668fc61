"""Poll rounds only while there is something to poll.

Beat's tick (``AIW_AGENT_POLL_SWEEP_INTERVAL``, a minute) is only the safety net: it
marks stuck runs, publishes lost creations again and restarts the chain below if a
message of it was lost. While runs are followed, the rounds keep themselves going:
a round that ends schedules the next one for when the soonest run is due (at most
``AIW_AGENT_POLL_INTERVAL`` ahead, so a run started meanwhile waits no longer than
its first poll interval). A run that starts being followed (created, resumed,
tracked, no longer stuck) wakes the chain at once. With nothing to follow, no poll
message is sent at all: Flower's task list and the logs show the user's work.

One chain at a time: the next tick is a lease (``app.core.lease``, shared through
Redis, per organization) whose token rides in the tick's message; whoever takes the
lease publishes the tick, whoever fails to take it knows one is coming.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from app.core.cooldown import credential_digest
from app.core.lease import get_leases
from app.core.publisher import get_publisher
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.db.base import utcnow
from app.db.session import session_scope
from app.jobs.agent_runs.constants import TASK_POLL

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

#: The lease naming the one scheduled tick (per Codegen organization).
NEXT_TICK = "agent-poll-next"
#: A tick's lease outlives its countdown by this much: a tick lost with a dead worker
#: frees the way for a new chain then (or beat's tick restarts it).
SLACK = 30.0
#: No tick sooner than this after a round (runs due meanwhile wait for the next one;
#: logs waiting for spare budget do not make a tick every instant).
MIN_DELAY = 2.0


def _lease(settings: Settings) -> str:
    return f"{NEXT_TICK}:{credential_digest(settings, 'codegen')}"


def seconds_to_next_poll(settings: Settings) -> float | None:
    """Seconds until the soonest followed run is due (0: due now); None: nothing to poll."""
    with session_scope() as session:
        soonest = session.scalar(
            select(func.min(AgentRunRow.next_poll_at)).where(
                AgentRunRow.next_poll_at.is_not(None),
                AgentRunRow.state.in_((AgentRunState.ACTIVE, AgentRunState.FINISHED)),
            )
        )
    if soonest is None:
        return None
    return max(0.0, (soonest - utcnow()) / timedelta(seconds=1))


def plan_next_tick(settings: Settings) -> tuple[str, float] | None:
    """After a round: ``(tick token, countdown)`` to publish, or None (nothing to poll,
    or a tick is already coming)."""
    due = seconds_to_next_poll(settings)
    if due is None:
        log.debug("agent-run poller: nothing to follow, the chain stops")
        return None
    delay = min(max(due, MIN_DELAY), settings.aiw_agent_poll_interval)
    token = str(uuid.uuid4())
    if not get_leases(settings).acquire(_lease(settings), token, delay + SLACK):
        return None
    return token, delay


def tick_started(token: str | None, settings: Settings) -> None:
    """A scheduled tick runs: the way is free for the next one."""
    if token:
        get_leases(settings).release(_lease(settings), token)


def wake(settings: Settings) -> None:
    """A run starts being followed: start the chain now unless a tick is coming.

    Never raises: a lost wake-up only means beat's tick starts the chain."""
    token = str(uuid.uuid4())
    try:
        if get_leases(settings).acquire(_lease(settings), token, SLACK):
            get_publisher().send_callback(TASK_POLL, [None, 0, token])
    except Exception as exc:  # noqa: BLE001 - advisory: beat's tick is the safety net
        log.warning("agent-run poller not woken (%s); beat's tick will", type(exc).__name__)
