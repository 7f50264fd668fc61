"""The delivery sweep: the database brings back what the broker lost, and publishes
the long waits parked there.

Called by the periodic ``aiw.maintenance.sweep`` task (beat), next to the job
sweep. It publishes again every ``pending`` delivery that is due and has no live
message (``app.db.claims.needs_message``): parked deliveries (``published_at``
NULL), deliveries whose message went out more than ``AIW_REPUBLISH_AFTER`` seconds
ago (lost by the broker, or published after a commit by a process that then died),
and deliveries held by a worker that stopped renewing its lease (it died). A duplicate message is
harmless: the claim lets one try through.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import and_

from app.config import get_settings
from app.core.publisher import QUEUE_WEBHOOKS, queue_is_empty
from app.db.base import utcnow
from app.db.claims import needs_message
from app.db.outbox import take_for_publishing
from app.db.webhook_models import DeliveryStatus, WebhookDeliveryRow
from app.webhooks.events import publish_deliveries

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)


def due_deliveries(settings: Settings, limit: int) -> list[uuid.UUID]:
    """Take up to ``limit`` deliveries that need a message, stamping them published now."""
    D = WebhookDeliveryRow
    now = utcnow()
    empty = queue_is_empty(QUEUE_WEBHOOKS)
    condition = and_(
        D.status == DeliveryStatus.PENDING, needs_message(D, now, settings, queue_empty=empty)
    )
    return take_for_publishing(D, condition, D.next_attempt_at, limit, now)


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
