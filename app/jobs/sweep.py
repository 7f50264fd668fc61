"""The sweep: the database brings back what the broker lost.

Run periodically (Celery beat). It publishes again:

- jobs still ``queued`` whose message went out more than ``AIW_REPUBLISH_AFTER``
  seconds ago (the broker lost it, or it was never published);
- jobs ``waiting`` whose ``next_attempt_at`` has come and that have no live
  message (parked long waits, or a countdown message that should have fired
  ``AIW_LEASE`` seconds ago: the worker holding it died);
- jobs ``running`` whose lease ran out (the worker died, stopped renewing it, or
  handed it back while stopping).

It also settles the spend-budget reservations a dead worker left (``app.jobs.spend``).

The condition is the claim machine's (``app.db.claims.needs_message``), shared with
the webhook delivery sweep and the agent-run creations. Jobs ``awaiting_run`` have no
message to lose: their tracked agent run finishes them.

Each message goes out at the job's priority (``ai_requests.priority``).

Running it twice at once does no harm: rows are taken with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL and stamped ``published_at`` in the
same transaction, and a duplicate message would claim nothing anyway.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import and_, select

from app.config import get_settings
from app.core.priorities import NORMAL
from app.core.publisher import QUEUE_AI, get_publisher, queue_is_empty
from app.db.base import utcnow
from app.db.claims import needs_message
from app.db.models import AIRequestRow, JobStatus
from app.db.outbox import take_for_publishing
from app.db.session import session_scope
from app.jobs import spend
from app.jobs.service import publish

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)


def due_jobs(settings: Settings, limit: int) -> list[tuple[uuid.UUID, str]]:
    """Take up to ``limit`` jobs that need a message, stamping them published now; each
    with its priority (the message goes out at the job's priority again)."""
    now = utcnow()
    condition = and_(
        AIRequestRow.status.in_([JobStatus.QUEUED, JobStatus.WAITING, JobStatus.RUNNING]),
        needs_message(AIRequestRow, now, settings, queue_empty=queue_is_empty(QUEUE_AI)),
    )
    ids = take_for_publishing(AIRequestRow, condition, AIRequestRow.created_at, limit, now)
    if not ids:
        return []
    with session_scope() as session:
        rows = session.execute(
            select(AIRequestRow.id, AIRequestRow.priority).where(AIRequestRow.id.in_(ids))
        )
        found = {job_id: priority for job_id, priority in rows}
    return [(job_id, found.get(job_id, NORMAL)) for job_id in ids]


def sweep(settings: Settings | None = None, batch: int = 500, max_batches: int = 20) -> int:
    """Publish every job that needs it; returns how many were published."""
    settings = settings or get_settings()
    published = 0
    try:
        get_publisher().ensure_routes()
    except Exception as exc:  # noqa: BLE001 - the broker may be down: publish() logs it too
        log.warning("could not declare the queues (%s)", type(exc).__name__)
    for _ in range(max_batches):
        ids = due_jobs(settings, batch)
        for job_id, priority in ids:
            if publish(job_id, priority=priority):
                published += 1
        if len(ids) < batch:
            break
    if published:
        log.info("sweep published %d job(s) again", published)
    spend.settle_orphans(settings)  # budget reservations a dead worker left behind
    return published
