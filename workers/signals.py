"""Worker boot and shutdown hooks: per-process resources are made here, not at import."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from app.config import get_settings
from app.core.cooldown import reset_cooldowns
from app.db.session import dispose_engines
from app.jobs.runner import reset_providers


@setup_logging.connect
def _logging(**_: Any) -> None:
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    # httpx/openai log request lines at DEBUG; headers never include our key there,
    # but keep them at WARNING so a DEBUG worker log stays readable.
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "openai", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    # A forked pool process must not share its parent's connections.
    dispose_engines()
    reset_providers()
    reset_cooldowns()


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    dispose_engines()
