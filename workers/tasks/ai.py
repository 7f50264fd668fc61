"""The AI request task."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from app.jobs.runner import run_job
from workers.celery_app import QUEUE_AI, TASK_RUN_AI_REQUEST, celery_app

# The database unreachable (PostgreSQL restarting): retry the message with backoff; the
# job row is untouched, so nothing is lost and nothing runs twice.
DATABASE_DOWN = (OperationalError, InterfaceError)


@celery_app.task(
    bind=True,
    name=TASK_RUN_AI_REQUEST,
    queue=QUEUE_AI,
    max_retries=None,  # the job row counts provider retries; the broker only waits
    autoretry_for=DATABASE_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
)
def run_ai_request(self: Any, job_id: str) -> str:
    outcome = run_job(job_id, claim_token=self.request.id)
    if outcome.action == "retry":
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    if outcome.callback:
        self.app.send_task(outcome.callback, args=[outcome.job_id])
    return outcome.action
