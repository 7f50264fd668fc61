"""The ``ai_requests`` table as SQLAlchemy Core (``AI_REQUESTS``), and the job's
status and priority.

One row is one job and the source of truth for it; the broker only carries its id.
The ORM maps ``app.db.models.AIRequestRow`` onto this same ``Table``; the table is
declared here, without the ORM, so that ``aiw submit`` (a new process each time:
every import is paid on every submit) INSERTs and reads its row with Core and never
imports ``sqlalchemy.orm`` nor configures the mappers of every model.

``ai_requests.status`` has no index of its own: the two composite indexes
``(status, next_attempt_at)`` and ``(status, lease_expires_at)`` start with it.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    func,
)

from app.db.types import METADATA, JSONType, UTCDateTime, utcnow


class JobStatus(StrEnum):
    """Where an AI request stands. ``JobStatus.TERMINAL`` never changes again."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # parked until next_attempt_at (long backoff, provider cooldown)
    AWAITING_RUN = "awaiting_run"  # answered by a Codegen agent run: waits for it to end
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    TERMINAL: ClassVar[frozenset[JobStatus]]

    @property
    def is_terminal(self) -> bool:
        return self in JobStatus.TERMINAL


JobStatus.TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Priority(StrEnum):
    """How soon a job runs, among the jobs waiting (``app.core.priorities``)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


def in_list(column: str, values: type[StrEnum]) -> str:
    """The SQL of a CHECK that ``column`` holds one of ``values``."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


AI_REQUESTS = Table(
    "ai_requests",
    METADATA,
    Column("id", Uuid(), primary_key=True, default=uuid.uuid4),
    Column("kind", String(32), nullable=False, default="ai_request", server_default="ai_request"),
    Column("status", String(16), nullable=False, default=JobStatus.QUEUED),
    # Providers: what the caller forced (None = automatic), the order to try,
    # where in that order we are now, and who answered.
    Column("provider_requested", String(64)),
    Column("provider_chain", JSONType, nullable=False, default=list),
    Column("provider_index", Integer, nullable=False, default=0, server_default="0"),
    Column("provider_used", String(64)),
    Column("model", String(255)),
    # While answered by Codegen: the tracked agent run (``agent_runs.id``) it waits for.
    # No foreign key: ``agent_runs.ai_request_id`` is the one (a cycle otherwise).
    Column("agent_run_id", BigInteger),
    # The request itself.
    Column("prompt", Text, nullable=False),
    Column("system_prompt", Text),
    Column("parameters", JSONType, nullable=False, default=dict),
    Column("tags", JSONType, nullable=False, default=list),
    Column("subject", JSONType),
    # Outcome.
    Column("result", JSONType),
    Column("error_type", String(128)),
    Column("error_message", Text),
    # Scheduling and ownership. ``priority`` (high, normal, low) goes with every message.
    Column(
        "priority",
        String(8),
        nullable=False,
        default=Priority.NORMAL,
        server_default=Priority.NORMAL.value,
    ),
    Column("attempt_count", Integer, nullable=False, default=0, server_default="0"),
    Column("retries_on_provider", Integer, nullable=False, default=0, server_default="0"),
    Column("next_attempt_at", UTCDateTime()),
    Column("lease_expires_at", UTCDateTime()),
    Column("claim_token", String(36)),
    # When a message for this job last went to the broker; None while a long wait is
    # parked here with no message out. The sweep publishes again from these.
    Column("published_at", UTCDateTime()),
    Column("idempotency_key", String(255), unique=True),
    Column("callback", String(255)),  # a Celery task name
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    # As app.db.base.TimestampMixin gives the other tables.
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow, server_default=func.now()),
    Column(
        "updated_at",
        UTCDateTime(),
        nullable=False,
        default=utcnow,
        onupdate=utcnow,
        server_default=func.now(),
    ),
    CheckConstraint(in_list("status", JobStatus), name="status"),
    CheckConstraint(in_list("priority", Priority), name="priority"),
    Index("ix_ai_requests_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_ai_requests_status_lease_expires_at", "status", "lease_expires_at"),
    Index("ix_ai_requests_status_published_at", "status", "published_at"),
    Index("ix_ai_requests_created_at", "created_at"),
    Index("ix_ai_requests_provider_used_created_at", "provider_used", "created_at"),
)

__all__ = ["AI_REQUESTS", "JobStatus", "Priority", "in_list"]
