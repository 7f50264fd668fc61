"""The Celery application, configured from ``app.config``.

Creating the app object connects to nothing; the broker is reached when a
worker starts or a task is published.

Queues: ``ai_requests`` (AI calls), ``agent_runs`` (Codegen run polling),
``webhooks`` (deliveries), ``maintenance`` (the sweep). Run a worker for all of
them with ``aiw worker`` or ``celery -A workers.celery_app worker -Q
ai_requests,agent_runs,webhooks,maintenance``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from app.config import Settings, get_settings
from app.core.publisher import QUEUE_AGENT_RUNS, QUEUE_AI, QUEUE_MAINTENANCE, QUEUE_WEBHOOKS
from app.shell import topology

ALL_QUEUES = (QUEUE_AI, QUEUE_AGENT_RUNS, QUEUE_WEBHOOKS, QUEUE_MAINTENANCE)

TASK_RUN_AI_REQUEST = "aiw.ai_request.run"
TASK_SUBMIT_AI_REQUEST = "aiw.ai_request.submit"  # for Flower's REST API and other senders
TASK_SWEEP = "aiw.maintenance.sweep"
TASK_AGENT_RUN_POLL = "aiw.agent_run.poll"  # = app.jobs.agent_runs.constants.TASK_POLL
TASK_DELIVER_WEBHOOK = "aiw.webhook.deliver"


def queues() -> list[Queue]:
    """One direct exchange per queue, named alike, routing key alike."""
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL_QUEUES]


def broker_url(settings: Settings) -> str:
    """``CELERY_BROKER_URL``, else the embedded broker (a unix socket ``aiw up`` serves).

    The rule lives in ``app.shell.topology`` so ``aiw up`` and the metrics exporter agree."""
    return topology.broker_url(settings)


def transport_options(url: str, settings: Settings) -> dict[str, Any]:
    if url.startswith(("redis://", "rediss://", "sentinel://", "redis+socket://")):
        # Redis re-delivers a message not acknowledged within this time. It must be
        # longer than any countdown we schedule (AIW_MAX_COUNTDOWN; longer waits are
        # parked in the database) and than the longest task, or a task runs twice.
        # The socket timeouts make a broker that accepts and then says nothing (a
        # partition) an error within seconds instead of a publish that waits forever
        # (kombu's own advice); BRPOP waits 1 s, well inside them.
        return {
            "visibility_timeout": settings.aiw_visibility_timeout,
            "socket_connect_timeout": settings.aiw_connect_timeout,
            "socket_timeout": settings.aiw_read_timeout,
            "socket_keepalive": True,
        }
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    url = broker_url(settings)
    return {
        "broker_url": url,
        # Keep trying to reach the broker at start instead of dying (compose starts
        # services in parallel).
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(url, settings),
        # No result backend: the database holds every result; nothing (and no secret)
        # is copied into the broker's result store.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Acknowledge after the task ran, and give the message back when the worker
        # process dies mid-task: an accepted job survives kill -9.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Take one message per free slot: slow AI calls should not sit prefetched behind
        # a busy thread while another worker idles.
        "worker_prefetch_multiplier": 1,
        # Countdown (ETA) messages are held by the worker until due; bound how many.
        "worker_eta_task_limit": 1000,
        # Soft shutdown: on SIGTERM, running tasks get this long to finish before the
        # cold shutdown hands their messages back to the broker.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        # A provider call has its own HTTP timeout; these bound a task that hangs anyway
        # (enforced by prefork and gevent pools; the threads pool relies on the HTTP
        # timeouts and on the job lease, which outlives the hard limit).
        "task_soft_time_limit": settings.aiw_task_soft_time_limit,
        "task_time_limit": settings.aiw_task_time_limit,
        # Task events cost every task three messages to the broker. Nobody needs them
        # unless a dashboard watches: Flower turns them on in every worker it sees
        # (its enable_events, every 5 s), so they are off until then. AIW_TASK_EVENTS
        # turns them on from the start (and "sent" events at the publisher).
        "worker_send_task_events": settings.aiw_task_events,
        "task_send_sent_event": settings.aiw_task_events,
        "task_track_started": False,  # no result backend: STARTED would go nowhere
        # If the broker connection drops, stop long tasks: their messages come back.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Many slow, I/O-bound calls on one process: threads, not processes.
        "worker_pool": settings.aiw_worker_pool,
        "worker_concurrency": settings.aiw_worker_concurrency,
        "task_default_queue": QUEUE_AI,
        "task_queues": queues(),
        "task_routes": {
            "aiw.ai_request.*": {"queue": QUEUE_AI},
            "aiw.agent_run.*": {"queue": QUEUE_AGENT_RUNS},
            "aiw.webhook.*": {"queue": QUEUE_WEBHOOKS},
            "aiw.maintenance.*": {"queue": QUEUE_MAINTENANCE},
        },
        "beat_schedule": {
            "sweep": {
                "task": TASK_SWEEP,
                "schedule": settings.aiw_sweep_interval,
                "options": {"queue": QUEUE_MAINTENANCE, "expires": settings.aiw_sweep_interval},
            },
            "agent-run-poll": {
                "task": TASK_AGENT_RUN_POLL,
                "schedule": settings.aiw_agent_poll_sweep_interval,
                "options": {
                    "queue": QUEUE_AGENT_RUNS,
                    "expires": settings.aiw_agent_poll_sweep_interval,
                },
            },
        },
        "worker_hijack_root_logger": False,
        # Modules with the user's own tasks (job callbacks), from AIW_IMPORTS.
        "imports": [m.strip() for m in settings.aiw_imports.split(",") if m.strip()],
    }


TASK_MODULES = [
    "workers.tasks.ai",
    "workers.tasks.agent_runs",
    "workers.tasks.maintenance",
    "workers.tasks.webhooks",
    "workers.signals",
]


def create_celery_app(settings: Settings | None = None) -> Celery:
    """The app; its configuration is read from the settings when first needed."""
    app = Celery("ai_worker", include=TASK_MODULES)
    app.add_defaults(lambda: celery_config(settings or get_settings()))
    return app


celery_app = create_celery_app()
app = celery_app  # `celery -A workers.celery_app` finds it
