"""The tables of tracked Codegen agent runs: ``agent_runs`` and ``agent_run_events``.

One row of ``agent_runs`` is one Codegen agent run that ai-worker creates and/or
follows. ``id`` is ours (it is what travels through the broker and what callbacks
receive); ``remote_id`` is Codegen's run id, NULL until the creation task has made
the run, then UNIQUE. ``state`` is our side of the story (``AgentRunState``);
``remote_status`` is Codegen's status **verbatim** (``"PENDING"``, ``"COMPLETE"``,
or a value nobody knows yet), never translated.

``agent_run_events`` keeps the history: one row per status change seen (``old`` ->
``new``, when we saw it), plus the marks our side adds (stuck, a refused creation
or resume, a resume). Artifacts (result, summary, pull requests, logs) are rows of
``artifacts`` with ``agent_run_id`` set; deleting a run deletes its events and
artifacts (``ON DELETE CASCADE``).

Decisions worth knowing:

- **Images are stored, but only while they are needed.** ``images`` holds the base64
  data URIs of a creation or resume that has not reached Codegen yet: the task that
  sends them runs later, in another process, and a task carries ids only (never a
  megabyte payload through the broker, Flower and the result store). Once Codegen has
  the request, the column is set back to NULL: Codegen keeps the images with the run,
  and a table of thousands of runs should not carry megabytes each forever.
- ``poll_interval`` is the run's current interval; it grows while the status stays
  the same (``polls_since_change``) and goes back to the base on a change
  (``app.jobs.agent_runs.schedule``).
- ``next_poll_at`` is when the poller next wants the run; while a poll round owns the
  run (``claim_token`` set) it is that round's lease, so a poller that dies gives the
  run back when it passes. ``next_attempt_at`` is the same for a creation or resume
  waiting to be (re)tried, with ``lease_expires_at`` the lease of a task that holds it.
- ``resumed_at`` fences out stale observations: a status read by a request that
  started before the last resume ended is ignored.
- ``marker`` is a random id put into the run's Codegen ``metadata``: after a creation
  that timed out, the next try looks for it among the newest runs before creating
  again, so one row never makes two runs.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, BigIntPK, JSONType, TimestampMixin, UTCDateTime, utcnow
from app.db.tables import in_list

if TYPE_CHECKING:
    from app.db.models import ArtifactRow


class AgentRunState(StrEnum):
    """Where a tracked run stands on our side (Codegen's own status is kept apart)."""

    CREATING = "creating"  # the creation task has not made the run yet
    RESUMING = "resuming"  # a follow-up prompt waits to be sent
    ACTIVE = "active"  # the run exists; the poller follows it
    FINISHED = "finished"  # Codegen reported a terminal status
    STUCK = "stuck"  # still not ended past its deadline: no longer polled
    CREATE_FAILED = "create_failed"  # Codegen refused the creation, or retries ran out

    ENDED: ClassVar[frozenset[AgentRunState]]

    @property
    def is_ended(self) -> bool:
        """Nothing more happens by itself (a resume or a new track may start it again)."""
        return self in AgentRunState.ENDED


AgentRunState.ENDED = frozenset(
    {AgentRunState.FINISHED, AgentRunState.STUCK, AgentRunState.CREATE_FAILED}
)


class AgentRunEventKind(StrEnum):
    """What an ``agent_run_events`` row records."""

    STATUS_CHANGED = "status_changed"  # Codegen's status moved from ``old`` to ``new``
    STUCK = "stuck"  # the run passed its deadline without ending
    RESUMED = "resumed"  # a follow-up prompt reached Codegen
    RESUME_FAILED = "resume_failed"  # Codegen refused the follow-up prompt
    CREATE_FAILED = "create_failed"  # the run could not be created


class AgentRunRow(TimestampMixin, Base):
    """One Codegen agent run, created or tracked by ai-worker (see the module docstring)."""

    __tablename__ = "agent_runs"
    __table_args__ = (
        CheckConstraint(in_list("state", AgentRunState), name="state"),
        Index("ix_agent_runs_state_next_poll_at", "state", "next_poll_at"),
        Index("ix_agent_runs_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_agent_runs_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    remote_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    remote_status: Mapped[str | None] = mapped_column(String(64))  # verbatim from Codegen
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # "submitted" | "tracked"
    marker: Mapped[uuid.UUID] = mapped_column(Uuid(), nullable=False, default=uuid.uuid4)
    # The AI request (job) this run answers, when Codegen answers a queued request.
    ai_request_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ai_requests.id", ondelete="SET NULL"), index=True
    )

    # What the run was asked (the creation input; ``run_metadata`` is the ``metadata``
    # column: the attribute name is taken by SQLAlchemy).
    prompt: Mapped[str | None] = mapped_column(Text)  # None for a run tracked by id
    repo_id: Mapped[int | None] = mapped_column(BigInteger)
    # ``owner/repo`` asked for by name: the creation task resolves it to ``repo_id``.
    repository: Mapped[str | None] = mapped_column(String(255))
    run_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    model: Mapped[str | None] = mapped_column(String(255))
    agent_type: Mapped[str | None] = mapped_column(String(32))
    tags: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    images: Mapped[list[str] | None] = mapped_column(JSONType)  # only until sent
    pending_prompt: Mapped[str | None] = mapped_column(Text)  # a resume not sent yet

    # Who hears of changes.
    callbacks: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    webhook: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=text("true")
    )

    # Polling.
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    poll_interval: Mapped[float] = mapped_column(Float, nullable=False)
    polls_since_change: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    poll_failures: Mapped[int] = mapped_column(  # consecutive polls that got no answer
        Integer, nullable=False, default=0, server_default="0"
    )
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_change_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_poll_error: Mapped[str | None] = mapped_column(Text)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stuck_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    logs_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resume_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )

    # Creation / resume tasks and poll rounds: who owns the row now.
    claim_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempt_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    retries: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # A creation (or resume) try ended without an answer: it may have gone through.
    outcome_unknown: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )

    # Outcome.
    result: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    web_url: Mapped[str | None] = mapped_column(String(2048))
    error_type: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    events: Mapped[list[AgentRunEventRow]] = relationship(
        back_populates="run",
        lazy="raise",
        order_by="AgentRunEventRow.id",
        cascade="all",
        passive_deletes=True,
    )
    artifacts: Mapped[list[ArtifactRow]] = relationship(
        lazy="raise",
        primaryjoin="AgentRunRow.id == foreign(ArtifactRow.agent_run_id)",
        order_by="ArtifactRow.id",
        viewonly=True,
    )

    def __repr__(self) -> str:
        return f"<AgentRunRow {self.id} remote={self.remote_id} {self.state} {self.remote_status}>"


class AgentRunEventRow(Base):
    """One thing that happened to a tracked run: a status change, or one of our marks."""

    __tablename__ = "agent_run_events"
    __table_args__ = (
        CheckConstraint(in_list("kind", AgentRunEventKind), name="kind"),
        Index("ix_agent_run_events_agent_run_id_id", "agent_run_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    agent_run_id: Mapped[int] = mapped_column(
        ForeignKey("agent_runs.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    old_status: Mapped[str | None] = mapped_column(String(64))
    new_status: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now()
    )

    run: Mapped[AgentRunRow] = relationship(back_populates="events", lazy="raise")

    def __repr__(self) -> str:
        return (
            f"<AgentRunEventRow {self.agent_run_id} {self.kind} "
            f"{self.old_status}->{self.new_status}>"
        )


__all__ = ["AgentRunEventKind", "AgentRunEventRow", "AgentRunRow", "AgentRunState"]
