"""The poller: what the beat-driven ``aiw.agent_run.poll`` task calls.

Codegen sends no webhooks, so every change is learnt by asking. A **poll round**:

1. **Maintenance** (at each beat tick): runs past their deadline are marked stuck
   (an event, the ``agent_run.stuck`` webhook) and no longer polled; creations and
   resumes whose message the broker lost are published again.
2. **Claim** the due runs (``state = active``, ``next_poll_at <= now``) with
   ``SELECT ... FOR UPDATE SKIP LOCKED`` and stamp them with the round's token and a
   lease (``next_poll_at = now + LEASE_SECONDS``) in one short transaction: two
   pollers never poll the same run, and a poller that dies gives its runs back when
   the lease passes. No transaction is open during HTTP calls.
3. **Ask Codegen**, each request paid from the shared budget. Up to
   ``AIW_AGENT_POLL_GET_MAX`` due runs: one GET each. More: the list endpoint, 100
   runs a page, newest first, for as long as another page pays
   (``schedule.worth_another_page``), starting where the newest of them was last
   seen (``schedule.ListPositions``); the runs it did not reveal get a GET. Every
   tracked run that a page shows is refreshed too, due or not, unless another
   round holds it: a page costs the same whoever it serves.
4. **Record** each answer (``changes.observe``: events, callbacks, webhooks,
   artifacts, the next poll time) in a short transaction fenced by the claim.

One round runs at a time (a lease per organization, ``app.core.lease``): a beat tick
that finds a round still going only does the maintenance. Rounds side by side would
split the budget between them and read the same pages twice.

When the budget is spent (or a 429 cooldown runs), the round does not wait: it
returns a ``countdown`` and its position (token, page cursor) and the task publishes
itself again to go on then; its runs stay claimed meanwhile. Codegen answering
429/5xx/garbage leaves the runs concerned with their last known status and polls
them again after a backoff: nothing is marked failed for that.

Finally, with budget to spare (``LOGS_RESERVE_SHARE`` of the burst stays for polls),
the logs of ended runs are fetched, every page, into a ``logs`` artifact.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update

from app.codegen import AgentRun, AgentRunLog
from app.codegen.client import MAX_PAGE_SIZE
from app.config import get_settings
from app.core.budget import BudgetExhausted
from app.core.cooldown import credential_digest
from app.core.errors import AIProviderError
from app.core.lease import get_leases
from app.core.publisher import QUEUE_AGENT_RUNS, queue_is_empty
from app.core.retry import RetryPolicy
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.db.base import utcnow
from app.db.claims import needs_message
from app.db.outbox import take_for_publishing
from app.db.session import session_scope
from app.jobs.agent_runs.changes import Notices, mark_stuck, observe, poll_failed, store_logs
from app.jobs.agent_runs.codegen import CodegenGateway, get_gateway
from app.jobs.agent_runs.constants import TASK_CREATE, TASK_RESUME
from app.jobs.agent_runs.schedule import worth_another_page
from app.jobs.agent_runs.service import publish

if TYPE_CHECKING:
    from datetime import datetime

    from app.config import Settings

log = logging.getLogger(__name__)

#: Seconds a round owns the runs it claimed (renewed at each of its steps).
LEASE_SECONDS = 120.0
#: One round at a time per organization (``app.core.lease``): its lease lasts this
#: long past the round's last sign of life (each call, or its next step's countdown).
ROUND_LEASE = "agent-poll"
LEASE_SLACK = 30.0
#: Share of the standard bucket's burst that logs fetching leaves for status polls.
LOGS_RESERVE_SHARE = 0.5
#: Ended runs whose logs one round fetches at most.
LOGS_BATCH = 20
#: Failed tries after which an ended run's logs are given up.
LOGS_MAX_FAILURES = 10
#: Rows one tick marks stuck / publishes again at most.
MAINTENANCE_BATCH = 500


@dataclass(frozen=True)
class PollOutcome:
    """What one step of a round did, and whether (and where) the round goes on."""

    token: str | None = None
    cursor: int | None = None  # list offset to go on from; None: GETs
    countdown: float | None = None  # go on after this many seconds (None: round over)
    claimed: int = 0
    observed: int = 0
    changed: int = 0
    calls: int = 0
    stuck: int = 0
    republished: int = 0
    logs: int = 0
    busy: bool = False  # another round holds the lease: this tick polled nothing

    def __str__(self) -> str:
        more = f", goes on in {self.countdown:.2f}s" if self.countdown is not None else ""
        if self.busy:
            more += ", another round is running"
        return (
            f"claimed {self.claimed}, observed {self.observed}, changed {self.changed}, "
            f"{self.calls} call(s), stuck {self.stuck}, republished {self.republished}, "
            f"logs {self.logs}{more}"
        )


def poll(
    round_token: str | None = None,
    cursor: int | None = 0,
    *,
    settings: Settings | None = None,
) -> PollOutcome:
    """One step of a poll round. Without ``round_token``: a new round (a beat tick)."""
    settings = settings or get_settings()
    stuck = republished = 0
    if round_token is None:
        stuck = mark_stuck_runs(settings)
        republished = recover_lost_messages(settings)
    try:
        gateway = get_gateway(settings)
    except AIProviderError as error:
        log.warning("agent runs not polled: %s", error)
        return PollOutcome(stuck=stuck, republished=republished)
    leases = get_leases(settings)
    lease = f"{ROUND_LEASE}:{credential_digest(settings, 'codegen')}"
    token = round_token or str(uuid.uuid4())
    if round_token is None:
        if not leases.acquire(lease, token, LEASE_SLACK):
            return PollOutcome(stuck=stuck, republished=republished, busy=True)
        pending = claim_due(token, settings)
        cursor = 0 if len(pending) > settings.aiw_agent_poll_get_max else None
    else:
        leases.renew(lease, token, LEASE_SLACK)  # lost meanwhile: go on all the same
        pending = reclaim(token)
    claimed = len(pending) if round_token is None else 0
    rnd = _Round(token, pending, settings, gateway, keepalive=lambda: leases.renew(
        lease, token, LEASE_SLACK))  # fmt: skip
    wait = rnd.run(cursor)
    logs = 0
    if wait is None:
        logs = fetch_logs(settings, gateway)
        leases.release(lease, token)
    else:
        extend_claims(token, wait)
        leases.renew(lease, token, wait + LEASE_SLACK)
    outcome = PollOutcome(
        token=token,
        cursor=rnd.cursor,
        countdown=wait,
        claimed=claimed,
        observed=rnd.observed,
        changed=rnd.changed,
        calls=rnd.calls,
        stuck=stuck,
        republished=republished,
        logs=logs,
    )
    if outcome.calls or outcome.stuck or outcome.republished or wait is not None:
        log.info("poll round %s: %s", token[:8], outcome)
    return outcome


# --- claims --------------------------------------------------------------------------


def claim_due(token: str, settings: Settings) -> dict[int, int]:
    """Take the due runs for this round: ``{remote_id: row id}``, most overdue first."""
    now = utcnow()
    with session_scope() as session:
        rows = session.execute(
            select(AgentRunRow.id, AgentRunRow.remote_id)
            .where(
                AgentRunRow.state == AgentRunState.ACTIVE,
                AgentRunRow.remote_id.is_not(None),
                or_(AgentRunRow.next_poll_at.is_(None), AgentRunRow.next_poll_at <= now),
            )
            .order_by(AgentRunRow.next_poll_at)
            .limit(settings.aiw_agent_poll_batch)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(AgentRunRow)
                .where(AgentRunRow.id.in_([row_id for row_id, _ in rows]))
                .values(claim_token=token, next_poll_at=now + timedelta(seconds=LEASE_SECONDS))
                .execution_options(synchronize_session=False)
            )
    return {remote_id: row_id for row_id, remote_id in rows if remote_id is not None}


def reclaim(token: str) -> dict[int, int]:
    """The runs this round still holds (a continuation), their lease renewed."""
    now = utcnow()
    with session_scope() as session:
        rows = session.execute(
            select(AgentRunRow.id, AgentRunRow.remote_id)
            .where(
                AgentRunRow.claim_token == token,
                AgentRunRow.state == AgentRunState.ACTIVE,
            )
            .order_by(AgentRunRow.remote_id.desc())
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(AgentRunRow)
                .where(AgentRunRow.id.in_([row_id for row_id, _ in rows]))
                .values(next_poll_at=now + timedelta(seconds=LEASE_SECONDS))
                .execution_options(synchronize_session=False)
            )
    return {remote_id: row_id for row_id, remote_id in rows if remote_id is not None}


def extend_claims(token: str, wait: float) -> None:
    """The round goes on in ``wait`` seconds: its runs stay claimed until well after."""
    until = utcnow() + timedelta(seconds=wait + LEASE_SECONDS)
    with session_scope() as session:
        session.execute(
            update(AgentRunRow)
            .where(AgentRunRow.claim_token == token, AgentRunRow.state == AgentRunState.ACTIVE)
            .values(next_poll_at=until)
            .execution_options(synchronize_session=False)
        )


# --- a round -------------------------------------------------------------------------


@dataclass
class _Round:
    token: str
    pending: dict[int, int]  # remote id -> row id, claimed and not observed yet
    settings: Settings
    gateway: CodegenGateway
    keepalive: Callable[[], object] = lambda: None  # renews the round's lease
    cursor: int | None = None
    calls: int = 0
    observed: int = 0
    changed: int = 0
    policy: RetryPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = RetryPolicy.from_settings(
            self.settings, max_retries=self.settings.codegen_max_retries
        )

    def run(self, cursor: int | None) -> float | None:
        """Observe every pending run; the seconds to wait if the budget ran out first."""
        if cursor == 0 and self.pending:  # a new round: start near its newest run
            cursor = self.gateway.positions.start_for(max(self.pending))
        while self.pending:
            if cursor is not None:
                observed_at = utcnow()
                try:
                    page = self.gateway.list_runs(skip=cursor, limit=MAX_PAGE_SIZE)
                except BudgetExhausted as exhausted:
                    self.cursor = cursor
                    return exhausted.wait
                except AIProviderError as error:
                    self.calls += 1
                    self._failed(list(self.pending.values()), error)
                    self.pending.clear()
                    return None
                self.calls += 1
                self.keepalive()
                ids = [run.id for run in page.items]
                self.gateway.positions.record(cursor, ids)
                self._apply(page.items, observed_at)
                cursor += len(page.items)
                at_end = len(page.items) < MAX_PAGE_SIZE or cursor >= page.total
                if not worth_another_page(self.pending.keys(), ids, MAX_PAGE_SIZE, at_end=at_end):
                    cursor = None
                continue
            remote_id, row_id = next(iter(self.pending.items()))
            observed_at = utcnow()
            try:
                run = self.gateway.get_run(remote_id)
            except BudgetExhausted as exhausted:
                self.cursor = None
                return exhausted.wait
            except AIProviderError as error:
                self.calls += 1
                self.pending.pop(remote_id, None)
                self._failed([row_id], error)
                continue
            self.calls += 1
            self.keepalive()
            self._apply([run], observed_at)
            self.pending.pop(remote_id, None)
        self.cursor = None
        return None

    def _apply(self, runs: Sequence[AgentRun], observed_at: datetime) -> None:
        """Record what Codegen said of every run we follow among ``runs``."""
        by_id = {run.id: run for run in runs}
        if not by_id:
            return
        now = utcnow()
        notices = Notices()
        with session_scope() as session:
            rows = session.scalars(
                select(AgentRunRow)
                .where(
                    AgentRunRow.remote_id.in_(list(by_id)),
                    AgentRunRow.state == AgentRunState.ACTIVE,
                    or_(
                        AgentRunRow.claim_token == self.token,
                        AgentRunRow.claim_token.is_(None),
                        AgentRunRow.next_poll_at < now,  # another round's lease ran out
                    ),
                )
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                assert row.remote_id is not None
                self.pending.pop(row.remote_id, None)
                if row.resumed_at is not None and observed_at <= row.resumed_at:
                    # Asked before the last follow-up prompt got there: stale news.
                    if row.claim_token == self.token:
                        row.claim_token = None
                        row.next_poll_at = now
                    continue
                self.observed += 1
                if observe(session, row, by_id[row.remote_id], now, self.settings, notices):
                    self.changed += 1
            notices.emit_webhooks(session)
        notices.send_callbacks()

    def _failed(self, row_ids: Iterable[int], error: AIProviderError) -> None:
        """No usable answer for these runs: keep their status, poll them again later."""
        ids = list(row_ids)
        if not ids:
            return
        now = utcnow()
        ceiling = self.settings.aiw_agent_poll_max_interval
        message = f"{error.error_type}: {error}"
        log.info("poll round %s: %d run(s) not polled (%s)", self.token[:8], len(ids), message)
        with session_scope() as session:
            rows = session.scalars(
                select(AgentRunRow)
                .where(AgentRunRow.id.in_(ids), AgentRunRow.claim_token == self.token)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                if error.retryable:
                    delay = min(ceiling, max(1.0, self.policy.delay_for(error, row.poll_failures)))
                else:  # 404, 401/403: not worth asking often, but never given up on here
                    delay = ceiling
                poll_failed(row, message, delay, now)


# --- logs ----------------------------------------------------------------------------


def fetch_logs(settings: Settings, gateway: CodegenGateway) -> int:
    """Fetch the logs of ended runs with budget to spare; how many runs got theirs."""
    if not settings.aiw_agent_run_logs:
        return 0
    reserve = gateway.budget.standard.spec.capacity * LOGS_RESERVE_SHARE
    if gateway.budget.standard.peek() < reserve + 1:
        return 0
    token = str(uuid.uuid4())
    now = utcnow()
    with session_scope() as session:
        rows = session.execute(
            select(AgentRunRow.id, AgentRunRow.remote_id)
            .where(
                AgentRunRow.state == AgentRunState.FINISHED,
                AgentRunRow.logs_fetched_at.is_(None),
                AgentRunRow.remote_id.is_not(None),
                AgentRunRow.next_poll_at <= now,
            )
            .order_by(AgentRunRow.next_poll_at)
            .limit(LOGS_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return 0
        session.execute(
            update(AgentRunRow)
            .where(AgentRunRow.id.in_([row_id for row_id, _ in rows]))
            .values(claim_token=token, next_poll_at=now + timedelta(seconds=LEASE_SECONDS))
            .execution_options(synchronize_session=False)
        )
    done = 0
    policy = RetryPolicy.from_settings(settings, max_retries=settings.codegen_max_retries)
    for n, (row_id, remote_id) in enumerate(rows):
        assert remote_id is not None
        try:
            logs = _all_logs(gateway, remote_id, reserve)
        except BudgetExhausted as exhausted:
            _release([row_id for row_id, _ in rows[n:]], token, exhausted.wait)
            break
        except AIProviderError as error:
            _logs_failed(row_id, token, error, policy)
            continue
        with session_scope() as session:
            row = session.get(AgentRunRow, row_id, with_for_update=True)
            if row is not None and row.claim_token == token:
                store_logs(session, row, logs, utcnow())
                done += 1
    return done


def _all_logs(gateway: CodegenGateway, remote_id: int, reserve: float) -> list[AgentRunLog]:
    logs: list[AgentRunLog] = []
    while True:
        page = gateway.get_logs(remote_id, skip=len(logs), limit=MAX_PAGE_SIZE, reserve=reserve)
        logs.extend(page.logs)
        if len(page.logs) < MAX_PAGE_SIZE or (
            page.total_logs is not None and len(logs) >= page.total_logs
        ):
            return logs


def _release(row_ids: list[int], token: str, wait: float) -> None:
    now = utcnow()
    with session_scope() as session:
        session.execute(
            update(AgentRunRow)
            .where(AgentRunRow.id.in_(row_ids), AgentRunRow.claim_token == token)
            .values(claim_token=None, next_poll_at=now + timedelta(seconds=wait))
            .execution_options(synchronize_session=False)
        )


def _logs_failed(row_id: int, token: str, error: AIProviderError, policy: RetryPolicy) -> None:
    now = utcnow()
    with session_scope() as session:
        row = session.get(AgentRunRow, row_id, with_for_update=True)
        if row is None or row.claim_token != token:
            return
        message = f"logs: {error.error_type}: {error}"
        poll_failed(row, message, policy.delay_for(error, row.poll_failures), now)
        if not error.retryable or row.poll_failures >= LOGS_MAX_FAILURES:
            row.next_poll_at = None  # given up: the rest of the run is stored
            log.warning("agent run %s: logs given up (%s)", row_id, message)


# --- maintenance ---------------------------------------------------------------------


def mark_stuck_runs(settings: Settings) -> int:
    """Mark the active runs past their deadline stuck (not held by a round)."""
    now = utcnow()
    notices = Notices()
    with session_scope() as session:
        rows = session.scalars(
            select(AgentRunRow)
            .where(
                AgentRunRow.state == AgentRunState.ACTIVE,
                AgentRunRow.deadline_at <= now,
                or_(AgentRunRow.claim_token.is_(None), AgentRunRow.next_poll_at < now),
            )
            .order_by(AgentRunRow.deadline_at)
            .limit(MAINTENANCE_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            log.warning(
                "agent run %s (Codegen %s) stuck: still %s at its deadline",
                row.id, row.remote_id, row.remote_status,
            )  # fmt: skip
            mark_stuck(session, row, now, settings, notices)
        notices.emit_webhooks(session)
        return len(rows)


def recover_lost_messages(settings: Settings) -> int:
    """Publish again the creations and resumes whose message is gone: the broker lost
    it, or the worker holding the row died (its lease ran out)."""
    now = utcnow()
    sent = 0
    empty = queue_is_empty(QUEUE_AGENT_RUNS)
    for state, task in (
        (AgentRunState.CREATING, TASK_CREATE),
        (AgentRunState.RESUMING, TASK_RESUME),
    ):
        lost = needs_message(AgentRunRow, now, settings, queue_empty=empty)
        condition = and_(AgentRunRow.state == state, lost)
        ids = take_for_publishing(
            AgentRunRow, condition, AgentRunRow.created_at, MAINTENANCE_BATCH, now
        )
        sent += sum(1 for row_id in ids if publish(task, row_id))
    return sent
