"""The webhook delivery task."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from app.webhooks.delivery import deliver
from workers.celery_app import QUEUE_WEBHOOKS, TASK_DELIVER_WEBHOOK, celery_app

# The database unreachable: retry the message with backoff; the delivery row is
# untouched (or still claimed by this message, which takes its claim back).
DATABASE_DOWN = (OperationalError, InterfaceError)


@celery_app.task(
    bind=True,
    name=TASK_DELIVER_WEBHOOK,
    queue=QUEUE_WEBHOOKS,
    max_retries=None,  # the delivery row counts tries against its schedule
    autoretry_for=DATABASE_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
)
def deliver_webhook(self: Any, delivery_id: str) -> str:
    outcome = deliver(delivery_id, claim_token=self.request.id)
    if outcome.action == "retry":
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    return outcome.action
