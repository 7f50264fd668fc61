"""Periodic maintenance (beat)."""

from __future__ import annotations

from app.core.publisher import QUEUE_MAINTENANCE
from app.jobs.sweep import sweep as sweep_jobs
from app.webhooks.sweep import sweep_deliveries
from workers.celery_app import TASK_SWEEP
from workers.tasks.base import aiw_task


@aiw_task(TASK_SWEEP, QUEUE_MAINTENANCE, autoretry_for=(), ignore_result=True)
def sweep() -> int:
    return sweep_jobs() + sweep_deliveries()
