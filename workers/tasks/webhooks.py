"""The webhook delivery task."""

from __future__ import annotations

import uuid

from app.core.publisher import QUEUE_WEBHOOKS
from app.db.webhook_models import DeliveryStatus, WebhookDeliveryRow
from app.webhooks.delivery import deliver
from workers.celery_app import TASK_DELIVER_WEBHOOK
from workers.tasks.base import claimed_task

deliver_webhook = claimed_task(
    TASK_DELIVER_WEBHOOK,
    QUEUE_WEBHOOKS,
    WebhookDeliveryRow,
    lambda value: uuid.UUID(str(value)),
    WebhookDeliveryRow.status == DeliveryStatus.PENDING,
)(deliver)
