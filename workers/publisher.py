"""The Celery side of ``app.jobs.publisher.Publisher`` (entry point ``celery``)."""

from __future__ import annotations

from workers.celery_app import TASK_RUN_AI_REQUEST, celery_app


class CeleryPublisher:
    def publish_job(self, job_id: str, *, countdown: float | None = None) -> None:
        celery_app.send_task(TASK_RUN_AI_REQUEST, args=[job_id], countdown=countdown)

    def send_callback(self, task_name: str, args: list[object]) -> None:
        celery_app.send_task(task_name, args=args)
