"""Periodic maintenance (beat)."""

from __future__ import annotations

from app.jobs.sweep import sweep as sweep_jobs
from app.webhooks.sweep import sweep_deliveries
from workers.celery_app import QUEUE_MAINTENANCE, TASK_SWEEP, celery_app


@celery_app.task(name=TASK_SWEEP, queue=QUEUE_MAINTENANCE, ignore_result=True)
def sweep() -> int:
    return sweep_jobs() + sweep_deliveries()
