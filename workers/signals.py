"""Worker boot and shutdown hooks: per-process resources are made here, not at import.

Logging is set up here too, every handler with the redaction filter (``app.core.redact``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.signals import (
    setup_logging,
    task_received,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from app.config import get_settings
from app.core.admission import reset_admission
from app.core.cooldown import reset_cooldowns
from app.core.redact import install_log_redaction
from app.db.heartbeat import get_heartbeat
from app.db.session import dispose_engines
from app.jobs.runner import reset_providers


@setup_logging.connect
def _logging(**_: Any) -> None:
    logging.basicConfig(
        level=get_settings().log_level,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    install_log_redaction()  # no secret in a log line, whoever logs it (app.core.redact)
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
    reset_admission()


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    dispose_engines()


_stopping = threading.Event()
log = logging.getLogger(__name__)


@worker_shutting_down.connect
def _hand_back_at_grace(**_: Any) -> None:
    """A worker told to stop (SIGTERM, ``aiw up``'s Ctrl-C) gives its running calls
    ``AIW_SHUTDOWN_GRACE`` seconds to finish and record; whatever is still held then is
    handed back (its lease ends now, so another worker takes it at once; the fence keeps
    a late answer from counting twice) and the process exits, even on the threads pool,
    whose threads cannot be interrupted."""
    if _stopping.is_set():
        return
    _stopping.set()
    grace = get_settings().aiw_shutdown_grace
    threading.Thread(target=_watch, args=(grace,), name="aiw-shutdown", daemon=True).start()


def _watch(grace: float) -> None:
    heartbeat = get_heartbeat()
    deadline = time.monotonic() + grace
    while heartbeat.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not heartbeat.count():
        return  # everything finished: Celery's own shutdown goes on
    heartbeat.stop()
    try:
        handed = heartbeat.hand_back()
    except Exception as exc:  # noqa: BLE001 - the leases run out by themselves anyway
        log.error("could not hand the running work back (%s); leases run out in %gs",
                  exc, get_settings().aiw_lease)  # fmt: skip
        handed = 0
    log.warning(
        "stopping after %gs of grace: %d claimed row(s) handed back to the other workers",
        grace,
        handed,
    )
    time.sleep(1.0)  # a call that just answered gets to record
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(0)  # threads blocked in a call cannot be stopped otherwise


@task_received.connect
def _reserve(request: Any = None, **_: Any) -> None:
    """This worker holds the message of a claimed kind of row (until it runs): the
    heartbeat vouches for it if it waits, so the sweep knows it lives here, and finds it
    lost as soon as this process dies (``app.db.heartbeat``)."""
    from workers.tasks.base import RESERVABLE

    known = RESERVABLE.get(getattr(request, "name", None) or "")
    args = getattr(request, "args", None)
    if known is None or not args:
        return
    model, parse, waiting = known
    try:
        row_id = parse(args[0])
    except (ValueError, TypeError):
        return  # a malformed id: the task drops the message itself
    get_heartbeat().reserve(model, row_id, waiting)


@worker_ready.connect
def _say_key_problems(**_: Any) -> None:
    """A worker that cannot decrypt the webhook secrets says so at start, not at the
    first failed delivery."""
    from app.webhooks.crypto import key_problems, key_warning

    try:
        problems = key_problems(get_settings())
        warning = key_warning(get_settings())
    except Exception as exc:  # noqa: BLE001 - a check at start must not stop the worker
        log.warning("could not check the webhook secret key (%s)", type(exc).__name__)
        return
    for problem in problems:
        log.error("webhook key: %s", problem)
    if warning:
        log.warning("webhook key: %s", warning)
