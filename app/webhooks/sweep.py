"""The delivery sweep: the database brings back what the broker lost, and publishes
the long waits parked there.

Called by the periodic ``aiw.maintenance.sweep`` task (beat), next to the job
sweep. It publishes again every ``pending`` delivery that is due and has no live
message: parked deliveries (``published_at`` NULL) and deliveries whose message
went out more than ``AIW_REPUBLISH_AFTER`` seconds ago (lost by the broker, or
published after a commit by a process that then died). A duplicate message is
harmless: the claim lets one try through.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update

from app.config import get_settings
from app.db.base import utcnow
from app.db.session import session_scope
from app.db.webhook_models import DeliveryStatus, WebhookDeliveryRow
from app.webhooks.events import publish_deliveries

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)


def due_deliveries(settings: Settings, limit: int) -> list[uuid.UUID]:
    """Take up to ``limit`` deliveries that need a message, stamping them published now."""
    D = WebhookDeliveryRow
    now = utcnow()
    stale = now - timedelta(seconds=settings.aiw_republish_after)
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(D.id)
                .where(
                    D.status == DeliveryStatus.PENDING,
                    D.next_attempt_at <= now,
                    or_(D.published_at.is_(None), D.published_at < stale),
                    or_(D.lease_expires_at.is_(None), D.lease_expires_at < now),
                )
                .order_by(D.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if ids:
            session.execute(
                update(D)
                .where(D.id.in_(ids))
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
    return ids


def sweep_deliveries(
    settings: Settings | None = None, batch: int = 500, max_batches: int = 20
) -> int:
    """Publish every delivery that needs it; returns how many were published."""
    settings = settings or get_settings()
    published = 0
    for _ in range(max_batches):
        ids = due_deliveries(settings, batch)
        done = publish_deliveries(ids)
        published += done
        if done < len(ids):  # the broker is down: their published_at lets the next sweep retry
            break
        if len(ids) < batch:
            break
    if published:
        log.info(
            "sweep published %d webhook deliver%s", published, "y" if published == 1 else "ies"
        )
    return published
