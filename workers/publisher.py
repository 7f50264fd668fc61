"""The Celery side of ``app.jobs.publisher.Publisher`` (entry point ``celery``)."""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import KombuError

from app.jobs.publisher import PublishError
from workers.celery_app import TASK_DELIVER_WEBHOOK, TASK_RUN_AI_REQUEST, celery_app, queues


class CeleryPublisher:
    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or celery_app

    def ensure_routes(self) -> None:
        """Declare our queues again. On Redis a queue's routing lives in keys that a
        FLUSHDB (or a restart without persistence) removes while publishers still
        believe it declared: messages would go nowhere. Cheap and idempotent."""
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in queues():
                queue.bind(channel).declare()

    def publish_job(self, job_id: str, *, countdown: float | None = None) -> None:
        self.app.send_task(TASK_RUN_AI_REQUEST, args=[job_id], countdown=countdown)

    def send_callback(self, task_name: str, args: list[object]) -> None:
        self.app.send_task(task_name, args=args)

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        try:
            self.app.send_task(TASK_DELIVER_WEBHOOK, args=[delivery_id], countdown=countdown)
        except (KombuError, OSError) as exc:
            raise PublishError(f"webhook delivery {delivery_id} not published: {exc}") from exc
