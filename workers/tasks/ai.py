"""The AI request tasks: run one (ids only), and accept one sent by name (Flower's API)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from app.jobs import submit
from app.jobs.runner import run_job
from workers.celery_app import QUEUE_AI, TASK_RUN_AI_REQUEST, TASK_SUBMIT_AI_REQUEST, celery_app

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


@celery_app.task(
    bind=True,
    name=TASK_SUBMIT_AI_REQUEST,
    queue=QUEUE_AI,
    max_retries=10,
    autoretry_for=DATABASE_DOWN,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
)
def submit_ai_request(self: Any, prompt: str, **options: Any) -> str:
    """Accept an AI request sent by task name, e.g. from Flower::

        POST /api/task/async-apply/aiw.ai_request.submit
        {"kwargs": {"prompt": "...", "model": "gpt-4o-mini", "tags": ["flower"]}}

    Takes exactly ``app.jobs.submit``'s arguments; bad ones fail this task with the
    reason and write nothing. The job then runs like any other (its own
    ``aiw.ai_request.run`` message, carrying its id). Without an ``idempotency_key``
    the key is ``celery:<this task's id>``, so a redelivered message never makes a
    second job. Returns the job id (shown by Flower as the task's result).
    """
    options.setdefault("idempotency_key", f"celery:{self.request.id}")
    return str(submit(prompt, **options).id)
