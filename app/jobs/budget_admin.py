"""Setting, listing and deleting spend budgets (``aiw budgets``; ``app.jobs.set_budget``).

A budget is a cap in USD per UTC day or month, for every job (global) or for the jobs
carrying one tag, with a policy for a job that would exceed it: ``wait`` for the next
window or ``fail``. Enforcement is ``app.jobs.spend``. Input is checked before anything
is written; a tag no job carries yet is allowed, and said (``Budget.note``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from app.core.errors import InvalidBudgetError
from app.db.base import utcnow
from app.db.budget_models import BudgetPeriod, BudgetPolicy, BudgetRow
from app.db.session import session_scope
from app.jobs import spend

#: The largest cap accepted, USD per window (anything above is a typo, not a budget).
MAX_CAP_USD = 1_000_000.0
MAX_TAG_CHARS = 100  # the longest tag a job may carry (``submit``)


@dataclass(frozen=True)
class Budget:
    """A budget and where it stands in its current window (UTC)."""

    name: str
    tag: str | None  # None: global, every job
    period: str
    policy: str
    cap_usd: float
    spent_usd: float
    reserved_usd: float  # held by calls in flight
    window_start: datetime
    window_end: datetime
    note: str | None = None  # e.g. no job carries the tag yet

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tag": self.tag,
            "period": self.period,
            "policy": self.policy,
            "cap_usd": self.cap_usd,
            "spent_usd": self.spent_usd,
            "reserved_usd": self.reserved_usd,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "note": self.note,
        }


def budget_name(tag: str | None, period: str) -> str:
    return f"global/{period}" if tag is None else f"tag:{tag}/{period}"


def _check(
    tag: object, per: object, policy: object = "wait", usd: object = 1.0
) -> tuple[str | None, str, str, float]:
    if tag is not None:
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidBudgetError("a budget's tag must be a non-empty string (or none: global)")
        if len(tag) > MAX_TAG_CHARS or "\x00" in tag:
            raise InvalidBudgetError(
                f"a budget's tag must be at most {MAX_TAG_CHARS} characters, without NUL"
            )
    periods = [p.value for p in BudgetPeriod]
    if per not in periods:
        raise InvalidBudgetError(f"unknown budget period {per!r}: use one of {', '.join(periods)}")
    policies = [p.value for p in BudgetPolicy]
    if policy not in policies:
        raise InvalidBudgetError(
            f"unknown budget policy {policy!r}: use one of {', '.join(policies)}"
        )
    if isinstance(usd, bool) or not isinstance(usd, int | float):
        raise InvalidBudgetError(f"a budget's cap must be a number of USD, not {usd!r}")
    cap = float(usd)
    if not math.isfinite(cap) or cap <= 0 or cap > MAX_CAP_USD:
        raise InvalidBudgetError(
            f"a budget's cap must be more than 0 and at most {MAX_CAP_USD:,.0f} USD per "
            f"{per}, not {usd!r}"
        )
    return tag, str(per), str(policy), cap


def _tag_in_use(session: Session, tag: str) -> bool:
    """Does any job carry ``tag``? (tags are a JSON list)."""
    if session.get_bind().dialect.name == "postgresql":
        sql = "SELECT EXISTS (SELECT 1 FROM ai_requests WHERE tags @> CAST(:tags AS jsonb))"
        return bool(session.execute(text(sql), {"tags": json.dumps([tag])}).scalar())
    sql = (
        "SELECT EXISTS (SELECT 1 FROM ai_requests, json_each(ai_requests.tags) "
        "WHERE json_each.value = :tag)"
    )
    return bool(session.execute(text(sql), {"tag": tag}).scalar())


def _view(row: BudgetRow, now: datetime, note: str | None = None) -> Budget:
    start = spend.window_start(row.period, now)
    rolled = row.window_start < start
    return Budget(
        name=row.name,
        tag=row.tag,
        period=row.period,
        policy=row.policy,
        cap_usd=float(row.cap_usd),
        spent_usd=0.0 if rolled else float(row.spent_usd),
        reserved_usd=0.0 if rolled else float(row.reserved_usd),
        window_start=start,
        window_end=spend.window_end(row.period, start),
        note=note,
    )


def set_budget(
    usd: float, *, per: str = "day", tag: str | None = None, policy: str = "wait"
) -> Budget:
    """Set (create or change) the budget of ``tag`` (None: every job) for ``per`` (day or
    month, UTC): at most ``usd`` USD spent per window; ``policy`` for a job that would
    exceed it: ``wait`` for the next window, or ``fail`` (``BudgetExceededError``).
    Changing a budget keeps what its window has spent. Workers see it within a few
    seconds. Raises ``InvalidBudgetError`` (nothing written) on bad input."""
    tag, per, policy, cap = _check(tag, per, policy, usd)
    name = budget_name(tag, per)
    now = utcnow()
    with session_scope() as session:
        row = session.scalars(select(BudgetRow).where(BudgetRow.name == name)).first()
        if row is None:
            row = BudgetRow(
                name=name,
                tag=tag,
                period=per,
                policy=policy,
                cap_usd=cap,
                window_start=spend.window_start(per, now),
                spent_usd=0.0,
                reserved_usd=0.0,
            )
            session.add(row)
        else:
            row.cap_usd = cap
            row.policy = policy
        session.flush()
        note = None
        if tag is not None and not _tag_in_use(session, tag):
            note = f"no job carries the tag {tag!r} yet: the budget applies to those that will"
        view = _view(row, now, note)
    spend.reset_cache()
    return view


def delete_budget(*, per: str = "day", tag: str | None = None) -> bool:
    """Delete the budget of ``tag`` (None: global) for ``per``; False if there was none.
    Calls in flight are no longer held to it."""
    tag, per, _, _ = _check(tag, per)
    with session_scope() as session:
        gone = session.execute(delete(BudgetRow).where(BudgetRow.name == budget_name(tag, per)))
        deleted = bool(getattr(gone, "rowcount", 0))
    spend.reset_cache()
    return deleted


def budgets() -> list[Budget]:
    """Every budget with its spend, reservations and cap in its current window."""
    with session_scope() as session:
        return read_all(session)


def read_all(session: Session) -> list[Budget]:
    """``budgets()`` in ``session`` (the metrics exporter's)."""
    now = utcnow()
    rows = session.scalars(
        select(BudgetRow).order_by(func.coalesce(BudgetRow.tag, ""), BudgetRow.period)
    ).all()
    return [_view(row, now) for row in rows]


__all__ = [
    "MAX_CAP_USD",
    "Budget",
    "budget_name",
    "budgets",
    "delete_budget",
    "read_all",
    "set_budget",
]
