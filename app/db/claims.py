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
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import ColumnElement, and_, or_, update
from sqlalchemy.exc import InterfaceError, OperationalError

from app.db.base import utcnow
from app.db.session import session_scope

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
    ran out. Each kind adds the statuses that may be claimed. ``now`` and ``token`` may
    be bind parameters (a statement built once)."""
    return or_(
        model.claim_token == token,
        and_(model.claim_token.is_(None), due(model, now)),
        model.lease_expires_at < now,
    )


def fenced(model: Any, row_id: Any, token: str) -> ColumnElement[bool]:
    """The row, only while ``token`` still holds it."""
    return and_(model.id == row_id, model.claim_token == token)


def needs_message(model: Any, now: datetime, settings: Settings) -> ColumnElement[bool]:
    """Rows whose broker message may be gone, for the sweeps (each adds its statuses).

    - free and due with no message since it became due: parked (``published_at`` NULL),
      or a countdown message that should have fired ``AIW_LEASE`` seconds ago (its
      worker died holding it);
    - held under a lease that ran out, with no message since (the worker died);
    - or a message older than ``AIW_REPUBLISH_AFTER`` (the broker lost it).

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
        ),
    )
    lost = and_(
        model.claim_token.is_not(None),
        model.lease_expires_at < now,
        or_(
            model.published_at.is_(None),
            model.published_at < model.lease_expires_at,
            model.published_at < stale,
        ),
    )
    return or_(free_and_due, lost)


# --- the heartbeat ----------------------------------------------------------------------


class Heartbeat:
    """The rows this process holds, and the thread that renews their leases.

    ``hold(model, row_id, token)`` registers a claim for as long as its ``with`` block
    runs; the thread (started on first use) renews, every ``AIW_HEARTBEAT_INTERVAL``
    seconds, the lease of every held row: one UPDATE per table. A failed beat (the
    database is down) is logged and the next one tries again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Any, dict[str, Any]] = {}  # model -> {token: row id}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.beats = 0

    @contextmanager
    def hold(self, model: Any, row_id: Any, token: str) -> Iterator[None]:
        with self._lock:
            self._held.setdefault(model, {})[token] = row_id
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="aiw-heartbeat", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                tokens = self._held.get(model)
                if tokens is not None:
                    tokens.pop(token, None)
                    if not tokens:
                        del self._held[model]

    def held(self) -> dict[Any, dict[str, Any]]:
        """A copy of what is held now: ``{model: {token: row id}}``."""
        with self._lock:
            return {model: dict(tokens) for model, tokens in self._held.items()}

    def count(self) -> int:
        with self._lock:
            return sum(len(tokens) for tokens in self._held.values())

    def beat(self) -> int:
        """Renew every held lease now; how many rows were renewed."""
        renewed = 0
        now = utcnow()
        until = lease_until(now)
        for model, tokens in self.held().items():
            with session_scope() as session:
                result = session.execute(
                    update(model)
                    .where(model.claim_token.in_(list(tokens)))
                    .values(lease_expires_at=until)
                    .execution_options(synchronize_session=False)
                )
                renewed += int(getattr(result, "rowcount", 0) or 0)
        self.beats += 1
        return renewed

    def hand_back(self) -> int:
        """End the lease of every held row now: another worker may take them at once.

        The claims stay ours until someone else claims: an answer that arrives before
        that is still recorded, one that arrives after is fenced off."""
        handed = 0
        now = utcnow()
        for model, tokens in self.held().items():
            with session_scope() as session:
                result = session.execute(
                    update(model)
                    .where(model.claim_token.in_(list(tokens)))
                    # No message waits for it any more: the sweep publishes it at once.
                    .values(lease_expires_at=now - timedelta(seconds=1), published_at=None)
                    .execution_options(synchronize_session=False)
                )
                handed += int(getattr(result, "rowcount", 0) or 0)
        return handed

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """This process is stopping: no more waiting for the database in ``record_durably``."""
        self._stopping.set()
        self._wake.set()

    def _run(self) -> None:
        interval = _settings().aiw_heartbeat_interval
        while True:
            self._wake.wait(interval)
            if self._stopping.is_set():
                return
            if not self.count():
                continue
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive any failure
                log.warning("lease heartbeat failed (%s); next beat in %gs", exc, interval)


_heartbeat: tuple[int, Heartbeat] | None = None
_heartbeat_lock = threading.Lock()


def get_heartbeat() -> Heartbeat:
    """This process's heartbeat (a forked child makes its own)."""
    global _heartbeat
    with _heartbeat_lock:
        if _heartbeat is None or _heartbeat[0] != os.getpid():
            _heartbeat = (os.getpid(), Heartbeat())
        return _heartbeat[1]


def hold(model: Any, row_id: Any, token: str) -> Any:
    """``get_heartbeat().hold(...)``: keep this row's lease alive while the block runs."""
    return get_heartbeat().hold(model, row_id, token)


# --- recording what was paid for -------------------------------------------------------

#: Waits between two tries of a record while the database is unreachable.
RECORD_BACKOFF = (0.25, 0.5, 1.0, 2.0)


def record_durably(record: Callable[[], T], *, what: str) -> T:
    """Run ``record`` (one transaction) until it commits, waiting out a database outage.

    Only "the database is unreachable" is waited out; any other error is raised. Gives
    up (raising the last error) once the process is stopping: the claim's lease then
    runs out and the attempt shows as lost."""
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
    "Heartbeat",
    "Outcome",
    "claim_values",
    "claimable",
    "due",
    "fenced",
    "get_heartbeat",
    "hold",
    "lease_until",
    "needs_message",
    "record_durably",
    "released",
]
