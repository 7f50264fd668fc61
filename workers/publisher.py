"""The Celery side of ``app.core.publisher.Publisher`` (entry point ``celery``)."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from kombu.exceptions import KombuError

from app.core.priorities import HIGH, LOW, NORMAL
from app.core.publisher import PublishError
from workers.celery_app import TASK_DELIVER_WEBHOOK, TASK_RUN_AI_REQUEST, celery_app, queues

#: One more try on a fresh connection (a pooled one gone stale), then the caller's
#: fallback: the row is safe and the sweep publishes it. Celery's default (3 more
#: tries) would keep a submit waiting four socket timeouts on a silent broker.
RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
#: A job's priority as a Celery message priority. Redis (kombu's transport) keeps one
#: list per priority step of a queue (steps 0, 3, 6, 9), and a worker's BRPOP names
#: the lists of step 0 first: lower is sooner. A message without a priority is step 0,
#: so the other queues' tasks (webhooks, polls, the sweep) and messages published
#: before priorities existed are never held behind a backlog of AI jobs.
#: Other brokers get no message priority: RabbitMQ orders the other way round (and
#: only on queues declared with x-max-priority), kombu's SQL transport has none.
REDIS_PRIORITY = {HIGH: 0, NORMAL: 3, LOW: 6}
REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://", "redis+socket://")


class SentTask:
    """What ``send_task`` hands back here instead of an ``AsyncResult``: the task id only.

    There is no result backend (the database holds every result), and an ``AsyncResult``
    builds the app's backend when it is made: for a new process (``aiw submit``) that is
    the import of Celery's backend machinery and a scan of every installed package's
    entry points, for a result nobody reads."""

    ignored: bool | None = None  # send_task sets it

    def __init__(self, task_id: str) -> None:
        self.id = task_id


class CeleryPublisher:
    """Publishes through one producer per thread, on its own broker connection.

    ``send_task`` without a producer takes one from the app's pool and gives it back on
    every message (about 2.5 ms a message here, against 0.9 ms with a kept producer).
    The producers are not taken from the pool: a worker with more threads than
    ``broker_pool_limit`` would otherwise block forever on the pool.
    """

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or celery_app
        self._local = threading.local()
        self._priorities: dict[str, int] | None = None

    def _priority(self, priority: str | None) -> int | None:
        """A job's priority as this broker's message priority (None: no priority)."""
        if self._priorities is None:
            url = str(self.app.conf.broker_url or "")
            self._priorities = REDIS_PRIORITY if url.startswith(REDIS_SCHEMES) else {}
        return None if priority is None else self._priorities.get(priority)

    def _send(
        self,
        name: str,
        args: list[Any],
        countdown: float | None = None,
        priority: int | None = None,
        *,
        ours: bool = True,
    ) -> None:
        """``ours``: a task of ai-worker's, which has no result (``task_ignore_result``):
        the message says so, and no result backend is built to be told of it. A user's
        callback task keeps its own rule."""
        producer = getattr(self._local, "producer", None)
        if producer is None:
            producer = self.app.amqp.Producer(self.app.connection_for_write())
            self._local.producer = producer
        try:
            self.app.send_task(
                name,
                args=args,
                countdown=countdown,
                producer=producer,
                priority=priority,
                retry_policy=RETRY,
                ignore_result=True if ours else None,
                result_cls=SentTask,
            )
        except (KombuError, OSError):
            self._local.producer = None  # start over on a fresh connection next time
            producer.connection.collect()
            raise

    def close(self) -> None:
        """Release this thread's producer connection (other threads' go with them)."""
        producer = getattr(self._local, "producer", None)
        self._local.producer = None
        if producer is not None:
            producer.connection.release()

    def ensure_routes(self) -> None:
        """Declare our queues again. On Redis a queue's routing lives in keys that a
        FLUSHDB (or a restart without persistence) removes while publishers still
        believe it declared: messages would go nowhere. Cheap and idempotent."""
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in queues():
                queue.bind(channel).declare()

    def queue_depth(self, queue: str) -> int | None:
        """Messages ready in ``queue`` (a passive declare: AMQP and Redis, the embedded
        broker included, answer it).

        A queue the broker does not know holds nothing: 0. On Redis this is the usual
        answer for an empty queue, since an empty list is no key and kombu's passive
        declare then refuses with NOT_FOUND; taking that for "unknown" kept the sweeps'
        empty-queue rule from ever firing there.
        """
        with self.app.connection_for_read() as conn:
            try:
                declared = conn.default_channel.queue_declare(queue=queue, passive=True)
            except conn.channel_errors as exc:
                if not _is_not_found(exc):
                    raise
                return 0
        return int(declared.message_count)

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        self._send(
            TASK_RUN_AI_REQUEST,
            [job_id],
            countdown,
            self._priority(priority),
        )

    def send_callback(self, task_name: str, args: list[object]) -> None:
        self._send(task_name, list(args), ours=False)

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        try:
            self._send(TASK_DELIVER_WEBHOOK, [delivery_id], countdown)
        except (KombuError, OSError) as exc:
            raise PublishError(f"webhook delivery {delivery_id} not published: {exc}") from exc


def _is_not_found(exc: BaseException) -> bool:
    """A broker's "no such queue": AMQP's 404 (``amqp.exceptions.NotFound``) or the
    virtual transports' ``ChannelError('NOT_FOUND - ...', ..., '404')``."""
    return getattr(exc, "code", None) == 404 or "404" in exc.args or (
        str(exc).startswith("NOT_FOUND")
    )
