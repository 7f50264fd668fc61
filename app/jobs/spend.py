"""Spend budgets enforced around each provider call: reserve before, settle after.

The runner asks ``reserve`` just before a call and ``settle`` right after it
(``app.jobs.runner._call``); the budgets themselves are rows (``app.db.budget_models``,
set with ``app.jobs.budget_admin``).

- **Which budgets.** The global budgets and those whose tag the job carries; every one
  must admit the call. The list is read at most once per ``CACHE_SECONDS`` per process:
  with no budget configured a job costs no extra statement.
- **Estimate.** Prompt tokens estimated from the text (4 characters a token, plus a
  little per message), the completion at ``max_tokens`` or, without it,
  ``AIW_BUDGET_ANSWER_TOKENS``, priced by the price table (``app.ai.pricing``). A model
  with no price cannot be held to a budget: it is refused (``BudgetExceededError``).
- **Reserve** is one conditional UPDATE per budget, in one transaction, in budget id
  order (no deadlock between two workers): ``reserved += estimate WHERE spent + reserved
  + estimate <= cap``. The row is locked by the UPDATE itself, so two workers can never
  both take the last room, on PostgreSQL and SQLite alike, exact to the cent (no Redis
  counter to keep in step with the usage rows). The window (UTC day or month) rolls
  over in the same statement: a row whose ``window_start`` has passed counts as empty.
  Each budget held gets a ``budget_reservations`` row for the attempt.
- **Refused.** Kept out only by other calls' reservations (they may settle lower): look
  again in ``RECHECK_SECONDS``. Spent too much for this estimate: the budget's policy,
  ``wait`` (deferred to the next window's start) or ``fail`` (``BudgetExceededError``,
  not retried, no fallback); an estimate above the whole cap can never fit and fails
  under either policy. The first refusal of a window sends ``budget.exceeded``.
- **Settle** deletes the attempt's reservations (``DELETE ... RETURNING``: at most once
  per attempt, whoever settles) and adds the real cost to ``spent`` instead: the
  answer's cost, the estimate when the answer's price is unknown or the call timed out
  (possibly billed), 0 for any other error. Crossing ``THRESHOLD`` of a cap sends
  ``budget.threshold`` once per window. A worker that died mid-call leaves its
  reservation: the sweep settles it (``settle_orphans``) once the attempt is no longer
  ``started`` (``lost`` counts the estimate: possibly billed) or is older than any task.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from app.ai.base import AIRequest, AIResponse, Usage
from app.ai.pricing import get_price_table
from app.core.errors import AIProviderError, BudgetExceededError, ProviderTimeoutError
from app.db.base import utcnow
from app.db.budget_models import BudgetPolicy, BudgetReservationRow, BudgetRow
from app.db.claims import record_durably
from app.db.models import AttemptOutcome, AttemptRow, UsageRow
from app.db.session import session_scope
from app.webhooks.events import emit

if TYPE_CHECKING:
    from app.config import Settings
    from app.jobs.records import Try

log = logging.getLogger(__name__)

THRESHOLD = 0.8  # budget.threshold: this share of a cap spent
CACHE_SECONDS = 5.0  # how stale a worker's list of budgets may be
RECHECK_SECONDS = 2.0  # a call kept out only by other calls' reservations looks again
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 8


# --- windows (UTC) ---------------------------------------------------------------------


def window_start(period: str, now: datetime) -> datetime:
    """The start of the UTC day or month ``now`` falls in."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def window_end(period: str, start: datetime) -> datetime:
    if period == "day":
        return start + timedelta(days=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


# --- which budgets apply ---------------------------------------------------------------


@dataclass(frozen=True)
class Cap:
    """What a worker keeps of a budget between reads (the amounts are read live)."""

    id: int
    name: str
    tag: str | None
    period: str


_cache: dict[int, tuple[float, list[Cap]]] = {}
_cache_lock = threading.Lock()


def reset_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _caps(settings: Settings) -> list[Cap]:
    now = time.monotonic()
    with _cache_lock:
        known = _cache.get(id(settings))
        if known is not None and now - known[0] < CACHE_SECONDS:
            return known[1]
    with session_scope() as session:
        rows = session.execute(
            select(BudgetRow.id, BudgetRow.name, BudgetRow.tag, BudgetRow.period).order_by(
                BudgetRow.id
            )
        ).all()
    caps = [Cap(*row) for row in rows]
    with _cache_lock:
        _cache[id(settings)] = (now, caps)
    return caps


def applicable(tags: list[str], settings: Settings) -> list[Cap]:
    """The budgets a job with these tags must fit in (global ones first), id order."""
    return [c for c in _caps(settings) if c.tag is None or c.tag in tags]


def estimate(request: AIRequest, model: str, settings: Settings) -> float | None:
    """The call's cost before it is made (None: the model has no price)."""
    chars = len(request.prompt) + len(request.system_prompt or "")
    messages = 2 if request.system_prompt else 1
    prompt = math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages
    answer = request.max_tokens or settings.aiw_budget_answer_tokens
    return get_price_table(settings).cost(
        model, Usage(prompt_tokens=prompt, completion_tokens=answer)
    )


# --- reserve -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a call is not made now: ``error`` (it fails) or ``wait`` seconds (deferred)."""

    detail: str
    reason: str
    wait: float = 0.0
    error: BudgetExceededError | None = None


@dataclass(frozen=True)
class Hold:
    """What a call holds on budgets (``attempt_id`` None: nothing to settle)."""

    attempt_id: int | None = None
    estimate: float = 0.0
    refusal: Refusal | None = None


FREE = Hold()


def reserve(
    tried: Try, request: AIRequest, model: str, tags: list[str], settings: Settings
) -> Hold:
    """Hold the call's estimate on every budget that applies, or say why not."""
    caps = applicable(tags, settings)
    if not caps:
        return FREE
    cost = estimate(request, model, settings)
    names = ", ".join(c.name for c in caps)
    if cost is None:
        message = (
            f"model {model} has no price (AIW_PRICING_FILE), so budget {names} cannot "
            "be held to it: not called"
        )
        return Hold(refusal=Refusal(message, "no price", error=BudgetExceededError(message)))
    now = utcnow()

    def hold() -> Hold:
        with session_scope() as session:
            for cap in caps:
                if not _take(session, cap, cost, now):
                    session.rollback()  # what the earlier budgets took goes back
                    return Hold(refusal=_refusal(session, cap, cost, now, tried))
                session.execute(
                    insert(BudgetReservationRow).values(
                        attempt_id=tried.attempt_id,
                        budget_id=cap.id,
                        request_id=tried.job_id,
                        window_start=window_start(cap.period, now),
                        amount_usd=cost,
                        created_at=now,
                    )
                )
        return Hold(tried.attempt_id, cost)

    return record_durably(hold, what=f"budget of job {tried.job_id}")


def _take(session: Session, cap: Cap, cost: float, now: datetime) -> bool:
    """The conditional UPDATE: reserve ``cost`` if it fits (rolling the window over)."""
    B = BudgetRow
    start = window_start(cap.period, now)
    rolled = B.window_start < start
    spent = case((rolled, 0), else_=B.spent_usd)
    reserved = case((rolled, 0), else_=B.reserved_usd)
    taken = session.execute(
        update(B)
        .where(B.id == cap.id, spent + reserved + cost <= B.cap_usd)
        .values(
            window_start=case((rolled, start), else_=B.window_start),
            spent_usd=spent,
            reserved_usd=reserved + cost,
            updated_at=now,
        )
        .returning(B.id)
        .execution_options(synchronize_session=False)
    ).first()
    return taken is not None


def _refusal(session: Session, cap: Cap, cost: float, now: datetime, tried: Try) -> Refusal:
    row = session.get(BudgetRow, cap.id)
    if row is None:  # deleted meanwhile: look again (without it)
        reset_cache()
        return Refusal(f"not called: budget {cap.name} changed", "budget changed", RECHECK_SECONDS)
    start = window_start(row.period, now)
    rolled = row.window_start < start
    spent = 0.0 if rolled else float(row.spent_usd)
    reserved = 0.0 if rolled else float(row.reserved_usd)
    cap_usd = float(row.cap_usd)
    end = window_end(row.period, start)
    state = (
        f"budget {row.name} has spent {spent:.6f} of {cap_usd:g} USD this {row.period} "
        f"(UTC), {reserved:.6f} held by calls in flight; this call's estimate is {cost:.6f}"
    )
    if spent + cost <= cap_usd:  # only reservations keep it out; they may settle lower
        return Refusal(
            f"not called: {state}: looking again in {RECHECK_SECONDS:g} s",
            f"budget {row.name} busy",
            RECHECK_SECONDS,
        )
    if not rolled:
        _notify_once(session, row, BudgetRow.exceeded_window, "budget.exceeded", tried)
    if cost > cap_usd:
        message = f"{state}, more than the whole cap: it can never fit"
        return Refusal(message, "over budget", error=BudgetExceededError(message))
    if row.policy == BudgetPolicy.WAIT:
        return Refusal(
            f"not called: {state}: waits for the next window at {end.isoformat()}",
            f"budget {row.name} spent",
            (end - now).total_seconds(),
        )
    message = f"{state}: over the cap (policy fail)"
    return Refusal(message, "over budget", error=BudgetExceededError(message))


# --- settle -------------------------------------------------------------------------------


def real_cost(hold: Hold, response: AIResponse | None, error: AIProviderError | None) -> float:
    """What the call cost: its answer's price; the estimate when unknown or it timed out."""
    if response is not None:
        return hold.estimate if response.cost_usd is None else float(response.cost_usd)
    return hold.estimate if isinstance(error, ProviderTimeoutError) else 0.0


def settle(hold: Hold, response: AIResponse | None, error: AIProviderError | None) -> None:
    """Replace the call's reservations by its real cost (once; nothing if none)."""
    attempt_id = hold.attempt_id
    if attempt_id is None:
        return
    cost = real_cost(hold, response, error)

    def write() -> None:
        with session_scope() as session:
            settle_attempt(session, attempt_id, cost)

    record_durably(write, what=f"budget settlement of attempt {attempt_id}")


def settle_attempt(session: Session, attempt_id: int, cost: float | None) -> int:
    """Settle one attempt's reservations in ``session`` (``cost`` None: its estimate);
    returns how many budgets it held (0: settled already, or held none)."""
    R, B = BudgetReservationRow, BudgetRow
    held = session.execute(
        delete(R)
        .where(R.attempt_id == attempt_id)
        .returning(R.budget_id, R.window_start, R.amount_usd)
        .execution_options(synchronize_session=False)
    ).all()
    for budget_id, start, amount in held:
        spent = float(amount if cost is None else cost)
        left = B.reserved_usd - amount
        row = session.execute(
            update(B)
            .where(B.id == budget_id, B.window_start == start)  # a passed window is gone
            .values(
                reserved_usd=case((left < 0, 0), else_=left),
                spent_usd=B.spent_usd + spent,
                updated_at=utcnow(),
            )
            .returning(B)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if row is not None and float(row.spent_usd) >= THRESHOLD * float(row.cap_usd):
            _notify_once(session, row, B.threshold_window, "budget.threshold", None)
    return len(held)


def _notify_once(
    session: Session, row: BudgetRow, column: Any, event: str, tried: Try | None
) -> None:
    """Send ``event`` for ``row``'s current window unless it was sent already."""
    B = BudgetRow
    first = session.execute(
        update(B)
        .where(B.id == row.id, B.window_start == row.window_start)
        .where(or_(column.is_(None), column != B.window_start))
        .values({column.key: B.window_start})
        .returning(B.id)
        .execution_options(synchronize_session=False)
    ).first()
    if first is None:
        return
    spent, cap = float(row.spent_usd), float(row.cap_usd)
    payload: dict[str, Any] = {
        "budget": row.name,
        "tag": row.tag,
        "period": row.period,
        "policy": row.policy,
        "cap_usd": cap,
        "spent_usd": spent,
        "reserved_usd": float(row.reserved_usd),
        "threshold": THRESHOLD,
        "window_start": row.window_start.isoformat(),
        "window_end": window_end(row.period, row.window_start).isoformat(),
        "job_id": None if tried is None else str(tried.job_id),
    }
    emit(session, event, payload)


def settle_orphans(settings: Settings) -> int:
    """Settle the reservations no worker will: their attempt ended more than a lease ago
    without settling (``lost``: the estimate, possibly billed; an answer: its usage's
    cost; else 0), or is older than any task may run. Returns how many were settled."""
    if not _caps(settings):
        return 0
    now = utcnow()
    grace = settings.aiw_lease  # the worker settles right after its record: long before
    R, A, U = BudgetReservationRow, AttemptRow, UsageRow
    too_old = now - timedelta(seconds=settings.aiw_task_time_limit + 2 * settings.aiw_lease)
    with session_scope() as session:
        rows = session.execute(
            select(R.attempt_id, A.outcome, U.id, U.cost_usd)
            .join(A, A.id == R.attempt_id)
            .outerjoin(U, U.attempt_id == R.attempt_id)
            .where(R.created_at < now - timedelta(seconds=grace))
            .where(or_(A.outcome != AttemptOutcome.STARTED, R.created_at < too_old))
            .distinct()
            .limit(500)
        ).all()
        settled = 0
        for attempt_id, outcome, usage_id, usage_cost in rows:
            if usage_id is not None:
                cost = None if usage_cost is None else float(usage_cost)
            elif outcome in (AttemptOutcome.LOST, AttemptOutcome.STARTED):
                cost = None  # possibly billed: the estimate
            else:
                cost = 0.0
            settled += bool(settle_attempt(session, attempt_id, cost))
    if settled:
        log.info("settled the budget reservations of %d ended attempt(s)", settled)
    return settled


__all__ = [
    "FREE",
    "Hold",
    "Refusal",
    "applicable",
    "estimate",
    "reserve",
    "reset_cache",
    "settle",
    "settle_attempt",
    "settle_orphans",
    "window_end",
    "window_start",
]
