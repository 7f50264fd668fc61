"""The tables: AI requests (jobs), their attempts, token usage, artifacts.

One row of ``ai_requests`` is one job and the source of truth for it; the
broker only carries its id (its table, its status and priority are Core, in
``app.db.tables``; ``AIRequestRow`` maps it). Each try against a provider is one ``ai_attempts``
row; each successful try has exactly one ``ai_usage`` row (UNIQUE on
``attempt_id``, so a redelivered task can never count twice). Artifacts are
what a job or an agent run produced (result, summary, pull requests, logs).

Relationships are ``lazy="raise"``: load what you need explicitly
(``selectinload(AIRequestRow.attempts)``) or query the child table. Deleting a
request deletes its attempts, usage and artifacts (``ON DELETE CASCADE`` in the
database; the ORM does not load the children to delete them).

Decisions worth knowing:

- ``ai_attempts.request_id`` has no index of its own: ``UNIQUE(request_id, number)``
  serves it (as the composite indexes on ``status`` do in ``ai_requests``).
- ``ai_usage.cost_usd`` is ``NUMERIC(18, 10)``: exact storage and exact sums in
  PostgreSQL, read as ``float`` like the rest of the provider layer (no
  ``Decimal``, which SQLite could not store exactly anyway). ``None`` means the
  price is unknown, never 0.
- ``artifacts`` has no UNIQUE(request_id, kind, name): NULLs are distinct in a
  unique constraint on both databases (``NULLS NOT DISTINCT`` is PostgreSQL 15+
  only, SQLite has nothing like it), so it would not stop duplicates of
  unnamed artifacts or of artifacts of agent runs (``request_id`` NULL), and
  several artifacts of one kind and name (logs pages, pull requests) are
  legitimate. A writer that must be idempotent looks up
  ``(request_id | agent_run_id, kind, name)`` in the same transaction first.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, BigIntPK, JSONType, UTCDateTime, utcnow
from app.db.tables import AI_REQUESTS, JobStatus, Priority, in_list


class AttemptOutcome(StrEnum):
    """How one try against one provider ended (``started``: not yet)."""

    STARTED = "started"  # written before the call; the call is in flight
    LOST = "lost"  # its worker died (or stopped) during the call: possibly billed
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # not retryable, or retries on this provider spent
    RETRY = "retry"  # retryable error, another try follows
    SUPERSEDED = "superseded"  # the lease was lost: another worker owns the job now
    DEFERRED = "deferred"  # not called: provider in cooldown, job parked


class AIRequestRow(Base):
    """One AI request (a job). ``id`` is what travels through the broker. Its table is
    ``app.db.tables.AI_REQUESTS`` (Core, for the ORM-free submit path)."""

    __table__ = AI_REQUESTS

    id: Mapped[uuid.UUID]
    kind: Mapped[str]
    status: Mapped[str]
    provider_requested: Mapped[str | None]
    provider_chain: Mapped[list[str]]
    provider_index: Mapped[int]
    provider_used: Mapped[str | None]
    model: Mapped[str | None]
    agent_run_id: Mapped[int | None]
    prompt: Mapped[str]
    system_prompt: Mapped[str | None]
    parameters: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    subject: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error_type: Mapped[str | None]
    error_message: Mapped[str | None]
    priority: Mapped[str]
    attempt_count: Mapped[int]
    retries_on_provider: Mapped[int]
    next_attempt_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    claim_token: Mapped[str | None]
    published_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None]
    callback: Mapped[str | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    attempts: Mapped[list[AttemptRow]] = relationship(
        back_populates="request",
        lazy="raise",
        order_by="AttemptRow.number",
        cascade="all",
        passive_deletes=True,
    )
    usage: Mapped[list[UsageRow]] = relationship(
        back_populates="request", lazy="raise", cascade="all", passive_deletes=True
    )
    artifacts: Mapped[list[ArtifactRow]] = relationship(
        back_populates="request", lazy="raise", cascade="all", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<AIRequestRow {self.id} {self.status}>"


class AttemptRow(Base):
    """One try of one request against one provider."""

    __tablename__ = "ai_attempts"
    __table_args__ = (
        UniqueConstraint("request_id", "number"),
        CheckConstraint(in_list("outcome", AttemptOutcome), name="outcome"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_requests.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)  # 1, 2, ... within the job
    provider: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_s: Mapped[float | None] = mapped_column(Float)
    retry_after_s: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    provider_request_id: Mapped[str | None] = mapped_column(String(255))
    # The tracked agent run that answers this attempt (a Codegen-answered request).
    agent_run_id: Mapped[int | None] = mapped_column(BigInteger)
    # Why the attempt ended as it did, when its outcome alone does not say (a parked
    # Retry-After, a lost worker, a cancelled wait for a run).
    detail: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    request: Mapped[AIRequestRow] = relationship(back_populates="attempts", lazy="raise")
    usage: Mapped[UsageRow | None] = relationship(
        back_populates="attempt", lazy="raise", cascade="all", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"<AttemptRow {self.request_id}#{self.number} {self.provider} {self.outcome}>"


class UsageRow(Base):
    """Tokens and cost of one successful attempt (at most one row per attempt)."""

    __tablename__ = "ai_usage"
    __table_args__ = (
        Index("ix_ai_usage_provider_model_created_at", "provider", "model", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    attempt_id: Mapped[int] = mapped_column(
        ForeignKey("ai_attempts.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_requests.id", ondelete="CASCADE"), nullable=False, index=True
    )
    provider: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(255), nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    completion_tokens: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    cached_tokens: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    reasoning_tokens: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    total_tokens: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    cost_usd: Mapped[float | None] = mapped_column(Numeric(18, 10, asdecimal=False))
    latency_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now(), index=True
    )

    attempt: Mapped[AttemptRow] = relationship(back_populates="usage", lazy="raise")
    request: Mapped[AIRequestRow] = relationship(back_populates="usage", lazy="raise")


class ArtifactRow(Base):
    """Something a request or an agent run produced (see the module docstring on uniqueness)."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_requests.id", ondelete="CASCADE"), index=True
    )
    agent_run_id: Mapped[int | None] = mapped_column(
        BigIntPK, ForeignKey("agent_runs.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32), nullable=False)  # result, summary, logs, ...
    name: Mapped[str | None] = mapped_column(String(255))
    content: Mapped[str | None] = mapped_column(Text)
    data: Mapped[Any | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now()
    )

    request: Mapped[AIRequestRow | None] = relationship(back_populates="artifacts", lazy="raise")


__all__ = [
    "AIRequestRow",
    "ArtifactRow",
    "AttemptOutcome",
    "AttemptRow",
    "JobStatus",
    "Priority",
    "UsageRow",
]

from app.db import agent_run_models as _agent_run_models  # noqa: E402,F401  (agent run tables)
from app.db import budget_models as _budget_models  # noqa: E402,F401  (spend budgets)
from app.db import webhook_models as _webhook_models  # noqa: E402,F401  (webhook tables)
