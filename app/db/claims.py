"""Who works on a row right now: the one claim / lease / fence machine.

Three kinds of rows are worked on by one worker at a time: AI requests (jobs,
``app.jobs.runner``), webhook deliveries (``app.webhooks.delivery``) and agent-run
creations and follow-ups (``app.jobs.agent_runs.actions``). Their tables share three
columns, ``claim_token``, ``lease_expires_at`` and ``published_at``, and this module
is everything the three do alike with them:

- **Claim.** One conditional UPDATE sets ``claim_token`` (the Celery task id of the
  message doing the work) and a short lease (``AIW_LEASE``, 30 s). ``claimable`` is
  the condition every kind adds to its own: the row is free and due, or it is ours
  already (the same message retried after a database error), or the lease of whoever
  held it ran out.
- **Heartbeat.** While the work is in flight the row is *held* (``hold``), and one
  thread per process renews the lease of every row the process holds, one UPDATE per
  table per beat (``AIW_HEARTBEAT_INTERVAL``, 10 s), whatever the number of rows. A
  worker that dies stops renewing: its rows are claimable again when the lease runs
  out, and the sweep publishes them again (``needs_message``). So the lease no longer
  has to outlast the longest call, and a dead worker's work resumes within the lease
  plus one sweep interval.
- **Fence.** Every record is an UPDATE ``WHERE claim_token = <ours>`` (``fenced``): a
  presumed-dead worker that answers late changes nothing; the kind decides what to
  keep of its late news (an attempt row, the usage that was paid for).
- **Record durably.** An answer in hand whose record fails because the database is
  unreachable is not thrown away: ``record_durably`` tries again, with backoff, until
  the database is back (or the process must stop), so a call is never paid twice
  because PostgreSQL restarted.
- **Hand back.** A worker told to stop gives its in-flight calls ``AIW_SHUTDOWN_GRACE``
  seconds; then ``hand_back`` ends the lease of everything still held, so another
  worker takes it at once (the fence keeps a late answer from counting twice).

``Outcome`` is the one answer the three kinds give their task: what to do with the
message (done, retry after a countdown, parked in the database, skipped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import ColumnElement, and_, literal, or_
from sqlalchemy.exc import InterfaceError, OperationalError

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

Action = Literal["done", "retry", "parked", "skipped"]

#: What "the database is unreachable" looks like from SQLAlchemy (a restart, a cut).
DATABASE_DOWN: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


@dataclass(frozen=True)
class Outcome:
    """What became of one try at a claimed row, and what its task does with the message.

    ``retry``: publish the message again after ``countdown`` seconds; ``parked``: the
    row waits in the database for the sweep (a long wait); ``done``/``skipped``: ack.
    ``callback`` is a Celery task name to send ``[id]`` once the row is done.
    """

    id: str
    action: Action
    status: str | None = None
    countdown: float | None = None
    callback: str | None = None
    status_code: int | None = None
    reason: str = ""


# --- claiming and fencing -----------------------------------------------------------


def _settings() -> Settings:
    from app.config import get_settings

    return get_settings()


def lease_until(now: datetime, settings: Settings | None = None) -> datetime:
    """When a lease taken (or renewed) at ``now`` runs out."""
    return now + timedelta(seconds=(settings or _settings()).aiw_lease)


def claim_values(token: str, now: datetime, settings: Settings | None = None) -> dict[str, Any]:
    """The columns a claim sets."""
    return {"claim_token": token, "lease_expires_at": lease_until(now, settings)}


def released() -> dict[str, Any]:
    """The columns that give a claim up."""
    return {"claim_token": None, "lease_expires_at": None}


def due(model: Any, now: datetime | Any) -> ColumnElement[bool]:
    return or_(model.next_attempt_at.is_(None), model.next_attempt_at <= now)


def claimable(model: Any, now: datetime | Any, token: str | Any) -> ColumnElement[bool]:
    """Free and due, or ours already (the same message again), or its holder's lease
    ran out (and it is due: a kind may set ``next_attempt_at`` at the claim to say how
    soon a dead holder's work may be taken over). Each kind adds its statuses. ``now``
    and ``token`` may be bind parameters (a statement built once)."""
    return or_(
        model.claim_token == token,
        and_(model.claim_token.is_(None), due(model, now)),
        and_(model.lease_expires_at < now, due(model, now)),
    )


def fenced(model: Any, row_id: Any, token: str) -> ColumnElement[bool]:
    """The row, only while ``token`` still holds it."""
    return and_(model.id == row_id, model.claim_token == token)


#: Seconds after its last message that a free row is taken for lost when the broker
#: says its queue is empty and no worker vouches for the message.
QUIET = 5.0


def needs_message(
    model: Any, now: datetime, settings: Settings, *, queue_empty: bool = False
) -> ColumnElement[bool]:
    """Rows whose broker message may be gone, for the sweeps (each adds its statuses).

    - free and due with no message since it became due: parked (``published_at`` NULL),
      a countdown message that should have fired ``AIW_LEASE`` seconds ago, or a
      message a worker received and vouched for but no longer does (it died holding
      it, before claiming the row);
    - held under a lease that ran out, with no message since (the worker died);
    - or a message older than ``AIW_REPUBLISH_AFTER`` (the broker lost it), or older
      than ``QUIET`` seconds while the broker says the queue is empty (``queue_empty``)
      and no worker vouches for it.

    The sweep stamps ``published_at`` when it publishes, so a row is published once per
    loss; a duplicate message is harmless (the claim lets one through).
    """
    stale = now - timedelta(seconds=settings.aiw_republish_after)
    grace = now - timedelta(seconds=settings.aiw_lease)
    free_and_due = and_(
        model.claim_token.is_(None),
        due(model, now),
        or_(
            model.published_at.is_(None),
            model.published_at < stale,
            and_(model.next_attempt_at <= grace, model.published_at < model.next_attempt_at),
            # A worker vouched that it holds the message (``Heartbeat.reserve``) and
            # stopped vouching: the message died with it.
            and_(model.lease_expires_at.is_not(None), model.lease_expires_at < now),
            # The queue is empty and nobody vouches: the message is nowhere (its
            # publisher died between the commit and the publish, or a worker took it
            # and died at once).
            and_(
                literal(queue_empty),
                model.lease_expires_at.is_(None),
                model.published_at < now - timedelta(seconds=QUIET),
            ),
        ),
    )
    lost = and_(
        model.claim_token.is_not(None),
        model.lease_expires_at < now,
        due(model, now),
        or_(
            model.published_at.is_(None),
            model.published_at < model.lease_expires_at,
            model.published_at < stale,
        ),
    )
    return or_(free_and_due, lost)


# --- recording what was paid for -------------------------------------------------------

#: Waits between two tries of a record while the database is unreachable.
RECORD_BACKOFF = (0.25, 0.5, 1.0, 2.0)


def record_durably(record: Callable[[], T], *, what: str) -> T:
    """Run ``record`` (one transaction) until it commits, waiting out a database outage.

    Only "the database is unreachable" is waited out; any other error is raised. Gives
    up (raising the last error) once the process is stopping: the claim's lease then
    runs out and the attempt shows as lost."""
    from app.db.heartbeat import get_heartbeat  # the heartbeat imports this module

    heartbeat = get_heartbeat()
    tries = 0
    while True:
        try:
            return record()
        except DATABASE_DOWN as exc:
            if heartbeat.stopping:
                log.error("%s: not recorded, the database is down and the worker stops", what)
                raise
            delay = RECORD_BACKOFF[min(tries, len(RECORD_BACKOFF) - 1)]
            tries += 1
            if tries == 1 or tries % 20 == 0:
                log.warning(
                    "%s: database unreachable (%s); kept in memory, recording again",
                    what,
                    type(exc).__name__,
                )
            time.sleep(delay)


__all__ = [
    "DATABASE_DOWN",
    "Action",
    "Outcome",
    "claim_values",
    "claimable",
    "due",
    "fenced",
    "lease_until",
    "needs_message",
    "record_durably",
    "released",
]
