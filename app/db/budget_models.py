"""Spend budgets: a cap in USD per UTC day or month, and the reservations held on them.

- ``budgets``: one row per cap. ``tag`` NULL is the global budget (every job); else
  the budget applies to jobs carrying that tag. One budget per (scope, period): its
  ``name`` (``global/day``, ``tag:team-a/month``) is unique. ``window_start`` is the
  start (UTC) of the window that ``spent_usd`` and ``reserved_usd`` count; the window
  rolls over in the same conditional UPDATE that reserves (no cron): a row whose
  window has passed counts as 0 spent, 0 reserved. ``threshold_window`` and
  ``exceeded_window`` are the windows whose ``budget.threshold`` / ``budget.exceeded``
  webhook was sent (once per window each).
- ``budget_reservations``: what one attempt holds on one budget between the
  reservation before its call and the settlement after it. Settling deletes the row
  (``DELETE ... RETURNING``), so an attempt is settled at most once whoever settles
  it (the worker after its call, or the sweep for a worker that died).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, Numeric, String, Uuid, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, BigIntPK, TimestampMixin, UTCDateTime, utcnow
from app.db.tables import in_list

USD = Numeric(18, 10, asdecimal=False)


class BudgetPeriod(StrEnum):
    DAY = "day"
    MONTH = "month"


class BudgetPolicy(StrEnum):
    """What a job that would exceed the cap does."""

    WAIT = "wait"  # deferred to the next window's start
    FAIL = "fail"  # failed with BudgetExceededError


class BudgetRow(TimestampMixin, Base):
    """One spend cap (see the module docstring)."""

    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint(in_list("period", BudgetPeriod), name="period"),
        CheckConstraint(in_list("policy", BudgetPolicy), name="policy"),
        CheckConstraint("cap_usd > 0", name="cap_positive"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(300), nullable=False, unique=True)
    tag: Mapped[str | None] = mapped_column(String(255))  # None: the global budget
    period: Mapped[str] = mapped_column(String(8), nullable=False)
    policy: Mapped[str] = mapped_column(String(8), nullable=False)
    cap_usd: Mapped[float] = mapped_column(USD, nullable=False)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    spent_usd: Mapped[float] = mapped_column(USD, nullable=False, default=0.0, server_default="0")
    reserved_usd: Mapped[float] = mapped_column(
        USD, nullable=False, default=0.0, server_default="0"
    )
    threshold_window: Mapped[datetime | None] = mapped_column(UTCDateTime())
    exceeded_window: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BudgetReservationRow(Base):
    """The amount one attempt holds on one budget until it is settled."""

    __tablename__ = "budget_reservations"
    __table_args__ = (Index("ix_budget_reservations_request_id", "request_id"),)

    attempt_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("ai_attempts.id", ondelete="CASCADE"), primary_key=True
    )
    budget_id: Mapped[int] = mapped_column(
        BigIntPK, ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True
    )
    request_id: Mapped[uuid.UUID] = mapped_column(Uuid(), nullable=False)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    amount_usd: Mapped[float] = mapped_column(USD, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now()
    )


__all__ = ["BudgetPeriod", "BudgetPolicy", "BudgetReservationRow", "BudgetRow"]
