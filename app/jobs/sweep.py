"""The sweep: the database brings back what the broker lost.

Run periodically (Celery beat). It publishes again:

- jobs still ``queued`` whose message went out more than ``AIW_REPUBLISH_AFTER``
  seconds ago (the broker lost it, or it was never published);
- jobs ``waiting`` whose ``next_attempt_at`` has come and that have no live
  message (parked long waits, or a countdown message the broker lost);
- jobs ``running`` whose lease expired (the worker died or lost its connection).

Running it twice at once does no harm: rows are taken with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL and stamped ``published_at`` in the
same transaction, and a duplicate message would claim nothing anyway.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update

from app.config import get_settings
from app.db.base import utcnow
from app.db.models import AIRequestRow, JobStatus
from app.db.session import session_scope
from app.jobs.publisher import get_publisher
from app.jobs.service import publish

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)


def due_jobs(settings: Settings, limit: int) -> list[uuid.UUID]:
    """Take up to ``limit`` jobs that need a message, stamping them published now."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.aiw_republish_after)
    not_recent = or_(AIRequestRow.published_at.is_(None), AIRequestRow.published_at < stale)
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(AIRequestRow.id)
                .where(
                    or_(
                        and_(AIRequestRow.status == JobStatus.QUEUED, not_recent),
                        and_(
                            AIRequestRow.status == JobStatus.WAITING,
                            AIRequestRow.next_attempt_at <= now,
                            not_recent,
                        ),
                        and_(
                            AIRequestRow.status == JobStatus.RUNNING,
                            AIRequestRow.lease_expires_at < now,
                            not_recent,
                        ),
                    )
                )
                .order_by(AIRequestRow.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            session.execute(
                update(AIRequestRow)
                .where(AIRequestRow.id.in_(ids))
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
    return ids


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
        for job_id in ids:
            if publish(job_id):
                published += 1
        if len(ids) < batch:
            break
    if published:
        log.info("sweep published %d job(s) again", published)
    return published
