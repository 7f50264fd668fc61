"""What the commands do to jobs besides submitting and following one: list them
(``list_jobs``), read a job's attempts (``get_attempts``) and cancel it (``cancel``).

These use the ORM models; ``app.jobs.service`` (``submit``, ``get_job``: what ``aiw
submit`` runs, a new process each time) does not import them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update

from app.core.errors import InvalidRequestError, JobNotFoundError
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus
from app.db.session import session_scope
from app.db.types import utcnow
from app.jobs.service import Job, parse_job_id


class Attempt(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    number: int
    provider: str
    model: str | None
    outcome: str
    http_status: int | None
    latency_s: float | None
    retry_after_s: float | None
    error_type: str | None
    error_message: str | None
    agent_run_id: int | None = None  # the tracked agent run that answers this try
    detail: str | None = None  # why it ended so, when the outcome alone does not say
    started_at: datetime
    finished_at: datetime | None


def get_attempts(job_id: uuid.UUID | str) -> list[Attempt]:
    with session_scope() as session:
        rows = session.scalars(
            select(AttemptRow)
            .where(AttemptRow.request_id == parse_job_id(job_id))
            .order_by(AttemptRow.number)
        )
        return [Attempt.model_validate(r) for r in rows]


def list_jobs(
    status: str | Iterable[str] | None = None,
    provider: str | None = None,
    tag: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Job]:
    """Newest first. ``status`` one or several; ``provider`` matches the one that answered."""
    if not 0 < limit <= 1000:
        raise InvalidRequestError("limit must be between 1 and 1000")
    query = select(AIRequestRow).order_by(AIRequestRow.created_at.desc(), AIRequestRow.id)
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        unknown = [s for s in wanted if s not in {m.value for m in JobStatus}]
        if unknown:
            raise InvalidRequestError(
                f"unknown status {unknown[0]!r}; one of {', '.join(m.value for m in JobStatus)}"
            )
        query = query.where(AIRequestRow.status.in_(wanted))
    if provider is not None:
        query = query.where(AIRequestRow.provider_used == provider)
    if since is not None:
        query = query.where(AIRequestRow.created_at >= since)
    if until is not None:
        query = query.where(AIRequestRow.created_at < until)
    with session_scope() as session:
        rows = list(session.scalars(query.limit(limit if tag is None else 1000).offset(offset)))
        jobs = [Job.model_validate(r) for r in rows]
    if tag is not None:  # tags are a JSON list: filter here, portable across databases
        jobs = [j for j in jobs if tag in j.tags][:limit]
    return jobs


def cancel(job_id: uuid.UUID | str) -> bool:
    """Cancel a job that has not finished. True if it was cancelled now.

    A try already in flight is not interrupted, but its answer is discarded (its usage,
    paid for, is still counted). A job answered by a Codegen agent run stops waiting
    for it; Codegen has no cancel endpoint, so the run goes on there and stays tracked
    as an agent run of its own (``aiw agent show``).
    """
    now = utcnow()
    jid = parse_job_id(job_id)
    with session_scope() as session:
        session.execute(
            update(AttemptRow)
            .where(
                AttemptRow.request_id == jid,
                AttemptRow.outcome == AttemptOutcome.STARTED,
                AttemptRow.agent_run_id.is_not(None),
                AttemptRow.request_id.in_(
                    select(AIRequestRow.id).where(
                        AIRequestRow.id == jid, AIRequestRow.status == JobStatus.AWAITING_RUN
                    )
                ),
            )
            .values(
                outcome=AttemptOutcome.SUPERSEDED,
                finished_at=now,
                detail="cancelled while its Codegen agent run went on (Codegen cannot cancel)",
            )
            .execution_options(synchronize_session=False)
        )
        result = session.execute(
            update(AIRequestRow)
            .where(
                AIRequestRow.id == jid,
                AIRequestRow.status.not_in([s.value for s in JobStatus.TERMINAL]),
            )
            .values(
                status=JobStatus.CANCELLED,
                finished_at=now,
                updated_at=now,
                claim_token=None,
                lease_expires_at=None,
                next_attempt_at=None,
                error_type="Cancelled",
                error_message="cancelled by the user",
            )
            .execution_options(synchronize_session=False)
        )
        changed = bool(getattr(result, "rowcount", 0))
        if not changed and session.get(AIRequestRow, jid) is None:
            raise JobNotFoundError(f"no job {job_id}")
        return changed


__all__ = ["Attempt", "cancel", "get_attempts", "list_jobs"]
