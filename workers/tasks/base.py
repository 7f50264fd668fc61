"""What every ai-worker task shares: one decorator, and one way to act on an ``Outcome``.

``aiw_task(name, queue)`` is ``celery_app.task`` with a stable ``name`` and queue and
the database-down retry: while PostgreSQL is unreachable the message is retried with
backoff (the row is untouched, or still claimed by this message, which takes its claim
back), never lost. ``claimed_task(name, queue)`` wraps a domain function over one
claimed row (``fn(row_id, claim_token=...) -> Outcome``: a job, a webhook delivery, an
agent-run creation or follow-up) into a task of two lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from app.db.claims import DATABASE_DOWN, Outcome
from app.db.heartbeat import get_heartbeat
from workers.celery_app import celery_app

RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": DATABASE_DOWN,
    "max_retries": None,  # the row counts provider retries; the broker only waits
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}


def aiw_task(name: str, queue: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``celery_app.task`` with a stable name, its queue and the database-down retry."""
    decorator: Callable[[Callable[..., Any]], Any] = celery_app.task(
        **{"name": name, "queue": queue, **RETRY_OPTIONS, **options}
    )
    return decorator


def act(task: Any, outcome: Outcome) -> str:
    """Do what a claimed row's ``Outcome`` asks of its message."""
    if outcome.action == "retry":
        raise task.retry(countdown=outcome.countdown, max_retries=None)
    if outcome.callback:
        task.app.send_task(outcome.callback, args=[outcome.id])
    return outcome.action


#: Task name -> (model, row id parser, what a row waiting for its message looks like):
#: what ``workers.signals`` reserves when a worker receives such a message.
RESERVABLE: dict[str, tuple[Any, Callable[[Any], Any], Any]] = {}


def claimed_task(
    name: str, queue: str, model: Any, parse: Callable[[Any], Any], waiting: Any
) -> Callable[[Callable[..., Outcome]], Any]:
    """A task over one claimed row of ``model``; the Celery task id is the claim token.
    ``waiting`` (a WHERE clause) says when a row still waits for its message."""
    RESERVABLE[name] = (model, parse, waiting)

    def wrap(work: Callable[..., Outcome]) -> Any:
        def run(self: Any, row_id: Any) -> str:
            try:
                return act(self, work(row_id, claim_token=self.request.id))
            finally:
                with contextlib.suppress(ValueError, TypeError):
                    get_heartbeat().unreserve(model, parse(row_id))

        run.__doc__ = work.__doc__
        run.__name__ = run.__qualname__ = work.__name__
        run.__module__ = work.__module__
        return aiw_task(name, queue, bind=True)(run)

    return wrap
