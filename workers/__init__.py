"""The Celery layer: the app (``workers.celery_app``), its tasks and signals.

``celery -A workers worker`` (and ``flower``, ``beat``, ``inspect`` ...) finds the app as
``workers.app`` or ``workers.celery``, Celery's convention; it is created on first use
only, so importing ``workers.publisher`` alone builds no app.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from workers.celery_app import celery_app

        return celery_app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
