"""The webhook delivery task."""

from __future__ import annotations

from app.webhooks.delivery import deliver
from workers.celery_app import QUEUE_WEBHOOKS, TASK_DELIVER_WEBHOOK
from workers.tasks.base import claimed_task

deliver_webhook = claimed_task(TASK_DELIVER_WEBHOOK, QUEUE_WEBHOOKS)(deliver)
