"""The heartbeat: one thread per process that keeps its claims alive.

Part of the claim machine (``app.db.claims``). While a worker works on a claimed row
the row is *held* (``hold``), and the thread renews the lease of every held row, one
UPDATE per table per beat (``AIW_HEARTBEAT_INTERVAL``), whatever the number of rows.
A message the worker received but has not started (a countdown held until due, a
task waiting for a thread) is *reserved*: if it waits more than ``RESERVE_GRACE``
seconds its free row gets a lease too, renewed the same way, so the sweep can tell a
message that is alive in a worker from one that died with it. ``hand_back`` ends
every held lease at once (a worker that stops), ``stop`` ends the waiting of
``record_durably``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from app.db.base import utcnow
from app.db.claims import lease_until
from app.db.session import session_scope

log = logging.getLogger(__name__)


def _interval() -> float:
    from app.config import get_settings

    return get_settings().aiw_heartbeat_interval


#: Seconds a received message may wait for its task to claim the row before the
#: heartbeat vouches for it (most are claimed within milliseconds and never are).
RESERVE_GRACE = 0.1


@dataclass
class _Reserved:
    waiting: Any  # the row still waits for this message (a WHERE clause)
    fresh: dict[Any, float] = field(default_factory=dict)  # not vouched for yet: received at
    vouched: set[Any] = field(default_factory=set)


class Heartbeat:
    """The rows this process holds or holds a message for, and the thread that renews
    their leases.

    ``hold(model, row_id, token)`` registers a claim for as long as its ``with`` block
    runs; the thread (started on first use) renews, every ``AIW_HEARTBEAT_INTERVAL``
    seconds, the lease of every held row: one UPDATE per table. ``reserve(model,
    row_id, waiting)`` says this process received the row's message (a countdown held
    until due, or a task not started yet): once it has waited ``RESERVE_GRACE`` seconds
    unclaimed, the heartbeat vouches for it by giving the free row a lease, renewed like
    the others, so the sweep knows the message is alive, and finds it lost as soon as
    the vouching stops. A failed beat (the database is down) is logged and the next one
    tries again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Any, dict[str, Any]] = {}  # model -> {token: row id}
        self._reserved: dict[Any, _Reserved] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.beats = 0

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="aiw-heartbeat", daemon=True)
            self._thread.start()

    def reserve(self, model: Any, row_id: Any, waiting: Any) -> None:
        """This process holds the message of ``row_id``, a row that is ``waiting`` for it."""
        with self._lock:
            entry = self._reserved.setdefault(model, _Reserved(waiting))
            # The thread already wakes for an earlier reservation (all wait the same
            # grace): wake it only when none was pending.
            pending = any(e.fresh for e in self._reserved.values())
            if row_id not in entry.vouched:
                entry.fresh.setdefault(row_id, time.monotonic())
            self._ensure_thread()
        if not pending:
            self._wake.set()

    def unreserve(self, model: Any, row_id: Any) -> None:
        with self._lock:
            entry = self._reserved.get(model)
            if entry is not None:
                entry.fresh.pop(row_id, None)
                entry.vouched.discard(row_id)

    def vouch(self, *, renew: bool) -> int:
        """Give a lease to the free rows whose message waited ``RESERVE_GRACE`` seconds
        here (``renew``: and to those vouched for already). A row that no longer waits
        (claimed meanwhile, or gone) is forgotten. How many rows were vouched for."""
        now, clock = utcnow(), time.monotonic()
        vouched = 0
        with self._lock:
            due_now: dict[Any, tuple[Any, list[Any]]] = {}
            for model, entry in self._reserved.items():
                ids = list(entry.vouched) if renew else []
                for row_id, at in entry.fresh.items():  # oldest first
                    if clock - at < RESERVE_GRACE:
                        break
                    ids.append(row_id)
                due_now[model] = (entry.waiting, ids)
        for model, (waiting, ids) in due_now.items():
            if not ids:
                continue
            with session_scope() as session:
                still = set(
                    session.scalars(
                        update(model)
                        .where(model.id.in_(ids), model.claim_token.is_(None), waiting)
                        .values(lease_expires_at=lease_until(now))
                        .returning(model.id)
                        .execution_options(synchronize_session=False)
                    )
                )
            vouched += len(still)
            with self._lock:
                entry = self._reserved[model]
                for row_id in ids:
                    if entry.fresh.pop(row_id, None) is None and row_id not in entry.vouched:
                        continue  # unreserved meanwhile: its task has run
                    if row_id in still:
                        entry.vouched.add(row_id)
                    else:
                        entry.vouched.discard(row_id)
        return vouched

    def _next_vouch(self) -> float | None:
        """Monotonic time of the next reservation to vouch for, if any."""
        with self._lock:
            firsts = [next(iter(e.fresh.values())) for e in self._reserved.values() if e.fresh]
        return min(firsts) + RESERVE_GRACE if firsts else None

    @contextmanager
    def hold(self, model: Any, row_id: Any, token: str) -> Iterator[None]:
        with self._lock:
            self._held.setdefault(model, {})[token] = row_id
            reserved = self._reserved.get(model)
            if reserved is not None:  # claimed: held now, no longer a message to vouch for
                reserved.fresh.pop(row_id, None)
                reserved.vouched.discard(row_id)
            self._ensure_thread()
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
        interval = _interval()
        next_beat = time.monotonic() + interval
        while not self._stopping.is_set():
            upcoming = self._next_vouch()
            wake_at = next_beat if upcoming is None else min(next_beat, upcoming)
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()
            if self._stopping.is_set():
                return
            beat_now = time.monotonic() >= next_beat
            try:
                if beat_now:
                    next_beat = time.monotonic() + interval
                    if self.count():
                        self.beat()
                self.vouch(renew=beat_now)
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


__all__ = ["RESERVE_GRACE", "Heartbeat", "get_heartbeat", "hold"]
