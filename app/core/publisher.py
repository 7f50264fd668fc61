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

__all__ = ["ENTRY_POINT_GROUP", "PublishError", "Publisher", "get_publisher", "set_publisher"]


class Publisher(Protocol):
    def ensure_routes(self) -> None:
        """Make sure the broker routes messages to our queues (after a broker reset)."""
    def publish_job(self, job_id: str, *, countdown: float | None = None) -> None:
        """Queue one run of the AI request ``job_id`` (after ``countdown`` seconds)."""

    def send_callback(self, task_name: str, args: list[object]) -> None:
        """Send a user's callback task (a Celery task name) its arguments."""

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        """Queue one try of the webhook delivery ``delivery_id`` (after ``countdown`` s).
        A broker failure is raised as ``PublishError``."""


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
