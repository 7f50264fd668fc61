"""The AI request tasks: run one (ids only), and accept one sent by name (Flower's API)."""

from __future__ import annotations

import uuid
from typing import Any

from app.core.publisher import QUEUE_AI
from app.db.models import AIRequestRow, JobStatus
from app.jobs import submit
from app.jobs.runner import run_job
from workers.celery_app import TASK_RUN_AI_REQUEST, TASK_SUBMIT_AI_REQUEST
from workers.tasks.base import aiw_task, claimed_task

run_ai_request = claimed_task(
    TASK_RUN_AI_REQUEST,
    QUEUE_AI,
    AIRequestRow,
    lambda value: uuid.UUID(str(value)),
    AIRequestRow.status.in_([JobStatus.QUEUED, JobStatus.WAITING]),
)(run_job)


@aiw_task(TASK_SUBMIT_AI_REQUEST, QUEUE_AI, bind=True, max_retries=10)
def submit_ai_request(self: Any, prompt: str | None = None, **options: Any) -> str:
    """Accept an AI request sent by task name, e.g. from Flower::

        POST /api/task/async-apply/aiw.ai_request.submit
        {"kwargs": {"prompt": "...", "model": "gpt-4o-mini", "tags": ["flower"]}}

    Takes exactly ``app.jobs.submit``'s arguments; bad ones (a missing prompt included)
    fail this task with the reason and write nothing. The job then runs like any other (its own
    ``aiw.ai_request.run`` message, carrying its id). Without an ``idempotency_key``
    the key is ``celery:<this task's id>``, so a redelivered message never makes a
    second job. Returns the job id (shown by Flower as the task's result).
    """
    options.setdefault("idempotency_key", f"celery:{self.request.id}")
    return str(submit(prompt, **options).id)  # type: ignore[arg-type]  # None: refused
