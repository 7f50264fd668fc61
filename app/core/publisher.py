"""The port through which the domain hands work to the queue.

``app`` never imports Celery. The Celery side (``workers``) provides a
``Publisher`` and declares it under the ``ai_worker.publishers`` entry point
(see pyproject.toml), so ``submit()`` finds it without importing ``workers``;
a test or an embedding application may install its own with ``set_publisher``.
"""

from __future__ import annotations

import threading
from importlib.metadata import entry_points
from typing import Protocol

from app.core.errors import PublishError

ENTRY_POINT_GROUP = "ai_worker.publishers"

#: The broker queues (one per kind of work; ``workers.celery_app`` declares them).
QUEUE_AI = "ai_requests"
QUEUE_AGENT_RUNS = "agent_runs"
QUEUE_WEBHOOKS = "webhooks"
QUEUE_MAINTENANCE = "maintenance"

__all__ = [
    "ENTRY_POINT_GROUP",
    "QUEUE_AGENT_RUNS",
    "QUEUE_AI",
    "QUEUE_MAINTENANCE",
    "QUEUE_WEBHOOKS",
    "PublishError",
    "Publisher",
    "get_publisher",
    "queue_is_empty",
    "set_publisher",
]


class Publisher(Protocol):
    def ensure_routes(self) -> None:
        """Make sure the broker routes messages to our queues (after a broker reset)."""

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        """Queue one run of the AI request ``job_id`` (after ``countdown`` seconds), at
        ``priority`` (``app.core.priorities``; None: the broker's default)."""

    def send_callback(self, task_name: str, args: list[object]) -> None:
        """Send a user's callback task (a Celery task name) its arguments."""

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        """Queue one try of the webhook delivery ``delivery_id`` (after ``countdown`` s).
        A broker failure is raised as ``PublishError``."""

    def queue_depth(self, queue: str) -> int | None:
        """Messages waiting in ``queue`` (not counting those a worker holds); None when
        the broker cannot say."""


_publisher: Publisher | None = None
_lock = threading.Lock()


def set_publisher(publisher: Publisher | None) -> None:
    global _publisher
    with _lock:
        _publisher = publisher


def get_publisher() -> Publisher:
    """The installed publisher, else the one the ``celery`` entry point names."""
    global _publisher
    with _lock:
        if _publisher is None:
            found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "celery"]
            if not found:
                raise PublishError(
                    "no publisher: install ai-worker (pip install -e .) so the 'celery' "
                    f"entry point of {ENTRY_POINT_GROUP} is registered, or call set_publisher()"
                )
            _publisher = found[0].load()()
        return _publisher


def queue_is_empty(queue: str) -> bool:
    """True only if the broker says no message waits in ``queue`` (False when unknown)."""
    try:
        depth = get_publisher().queue_depth(queue)
    except Exception:  # noqa: BLE001 - unknown is not empty: the sweep waits longer then
        return False
    return depth == 0
