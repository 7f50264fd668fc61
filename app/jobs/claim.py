"""The claim of a job's try: one transaction in which the job becomes ours (queued
or due, ours already, or running under a lease that ran out) and its attempt row is
written (``started``) before any call, so that a call lost with its worker shows as
``lost`` when the next claim finds it. A redelivered message for a finished job, or
one another worker holds, claims nothing. On PostgreSQL it is one statement
(``app.jobs.hotpath``); on SQLite, and for a job whose tags are capped
(``app.jobs.tag_caps``), several in one transaction. A try that Codegen answers is
handed to its tracked run (``app.jobs.remote``) in the claim's transaction."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, update
from sqlalchemy.orm import Session

from app.ai.base import AIRequest
from app.core.errors import AIProviderError, ProviderUnavailableError
from app.db.base import utcnow
from app.db.claims import Outcome, claim_values, claimable, fenced, lease_until
from app.db.hot import hot_cursor
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus
from app.db.session import session_scope
from app.jobs import context, hotpath, records, remote, tag_caps
from app.jobs.context import Claim
from app.jobs.records import Try
from app.webhooks.events import emit_ai_request_finished

if TYPE_CHECKING:
    from datetime import datetime

    from app.config import Settings

log = logging.getLogger(__name__)

#: What a lost attempt's ``detail`` says.
LOST_DETAIL = (
    "its worker stopped renewing the job's lease during the call (it died or was cut "
    "off); the call may have been billed"
)


def _claimed_now(now: datetime, token: str) -> Any:
    R = AIRequestRow
    return (
        R.status.in_([JobStatus.QUEUED, JobStatus.WAITING, JobStatus.RUNNING]),
        claimable(R, now, token),
    )


def claim_try(jid: uuid.UUID, token: str, settings: Settings) -> Claim | Outcome:
    """One transaction: the job is ours and its attempt row is written, or it is not
    claimable now (or held back by its tags' caps, ``app.jobs.tag_caps``). A job Codegen
    answers is handed to its tracked run right after."""
    now = utcnow()
    caps = context.tag_caps(settings)
    if not context.on_postgresql(settings):
        return _claim_portable(jid, token, now, settings, caps, [])
    with hot_cursor() as cur:
        claimed = hotpath.claim(
            cur,
            jid,
            token,
            now=now,
            lease=lease_until(now, settings),
            automatic=context.automatic_chain(settings),
            default_models=context.default_models(settings),
            lost_detail=LOST_DETAIL,
            capped=list(caps),
        )
    if claimed is not None and claimed["attempt_id"] is not None:
        return _claimed(claimed, token, now, settings)
    with session_scope() as session:
        row = session.get(AIRequestRow, jid)
        if row is None:
            log.warning("job %s: no such job; message dropped", jid)
            return Outcome(str(jid), "skipped", reason="no such job")
        if claimed is not None:
            return _no_provider(session, row, now)  # claimed, no provider left in its chain
        locked = tag_caps.capped_tags(row.tags, caps)
        if not locked:
            return _not_claimed(row, now, settings)
    return _claim_portable(jid, token, now, settings, caps, locked)


def _claim_portable(
    jid: uuid.UUID,
    token: str,
    now: datetime,
    settings: Settings,
    caps: dict[str, int],
    locked: list[str],
) -> Claim | Outcome:
    """The claim in several statements of one transaction: on SQLite, and on PostgreSQL
    for a job with capped tags (``locked``: their advisory locks are taken first)."""
    conditions = list(_claimed_now(now, token))
    if caps:
        conditions.append(
            tag_caps.under_caps(caps, now, postgresql=context.on_postgresql(settings))
        )
    with session_scope() as session:
        if locked:
            tag_caps.lock(session, locked)
        row = session.scalars(
            update(AIRequestRow)
            .where(AIRequestRow.id == jid, *conditions)
            .values(
                status=JobStatus.RUNNING,
                **claim_values(token, now, settings),
                attempt_count=AIRequestRow.attempt_count + 1,
                next_attempt_at=None,
                started_at=func.coalesce(AIRequestRow.started_at, now),
                updated_at=now,
            )
            .returning(AIRequestRow),
            execution_options={"synchronize_session": False},
        ).first()
        if row is None:
            existing = session.get(AIRequestRow, jid)
            if existing is None:
                log.warning("job %s: no such job; message dropped", jid)
                return Outcome(str(jid), "skipped", reason="no such job")
            held = tag_caps.capped_tags(existing.tags, caps)
            if held and tag_caps.free_and_due(existing, now):
                return tag_caps.hold_back(session, jid, held, now, settings)
            return _not_claimed(existing, now, settings)
        if row.attempt_count > 1:  # an earlier try may have died with its worker
            _mark_lost(session, jid, now)
        # The chain is fixed at the first claim: a forced provider alone, else this
        # worker's automatic order.
        forced = [row.provider_requested] if row.provider_requested else None
        chain = list(row.provider_chain) or forced or context.automatic_chain(settings)
        if row.provider_index >= len(chain):
            return _no_provider(session, row, now)
        provider_name = chain[row.provider_index]
        model = row.model or context.provider(provider_name, settings).default_model
        attempt_id = session.scalar(
            insert(AttemptRow)
            .values(
                request_id=jid,
                number=row.attempt_count,
                provider=provider_name,
                model=model,
                outcome=AttemptOutcome.STARTED,
                started_at=now,
            )
            .returning(AttemptRow.id)
        )
        assert attempt_id is not None
        if row.provider_chain != chain:
            session.execute(
                update(AIRequestRow)
                .where(AIRequestRow.id == jid)
                .values(provider_chain=chain)
                .execution_options(synchronize_session=False)
            )
        fields = {c: getattr(row, c) for c in hotpath.CLAIMED}
    return _claimed(
        {**fields, "provider_chain": chain, "attempt_id": attempt_id}, token, now, settings
    )


def _claimed(
    row: Mapping[str, Any], token: str, now: datetime, settings: Settings
) -> Claim | Outcome:
    """The claim of ``row`` (its attempt written): what the call needs, or, when Codegen
    answers, the hand-over to a tracked run."""
    chain = list(row["provider_chain"])
    tried = Try(
        row["id"],
        row["attempt_id"],
        chain[row["provider_index"]],
        chain,
        row["provider_index"],
        row["retries_on_provider"],
        row["callback"],
        row["started_at"],
    )
    params = row["parameters"] or {}
    extra = dict(params.get("provider_kwargs") or {})
    if tried.provider == remote.PROVIDER:
        # The job's priority is told to Codegen too (the run's metadata["priority"]).
        extra.setdefault("priority", row["priority"])
    request = AIRequest(
        prompt=row["prompt"],
        system_prompt=row["system_prompt"],
        model=row["model"],
        temperature=float(params.get("temperature", 0.0)),
        max_tokens=params.get("max_tokens"),
        extra=extra,
    )
    claimed = Claim(tried, token, request, row)
    if tried.provider != remote.PROVIDER:
        return claimed
    with session_scope() as session:
        return _hand_over(session, claimed, list(row["tags"] or []), now, settings)


def _hand_over(
    session: Session, claim: Claim, tags: list[str], now: datetime, settings: Settings
) -> Outcome:
    """Codegen answers this try: start a tracked run for it, in the claim's transaction."""
    jid = claim.tried.job_id
    try:
        spec = remote.run_input(context.provider(remote.PROVIDER, settings), claim.request, tags)
    except AIProviderError as error:  # the request does not suit Codegen: a failed try
        decision = records.decide(
            claim.tried,
            None,
            error,
            context.provider(remote.PROVIDER, settings).retry_policy,
            now,
            settings,
        )
        records.apply(
            session,
            jid,
            fenced(AIRequestRow, jid, claim.token),
            decision,
            claim.tried.attempt_id,
            response=None,
            latency=0.0,
            now=now,
        )
        return decision.outcome
    run_id = remote.start_run(session, claim.tried, claim.token, spec, tags, now, settings)
    return Outcome(
        str(jid), "done", JobStatus.AWAITING_RUN, reason=f"answered by agent run {run_id}"
    )


def _mark_lost(session: Session, jid: uuid.UUID, now: datetime) -> None:
    """Attempts still ``started`` when their job is claimed again: their call was lost."""
    session.execute(
        update(AttemptRow)
        .where(AttemptRow.request_id == jid, AttemptRow.outcome == AttemptOutcome.STARTED)
        .values(outcome=AttemptOutcome.LOST, finished_at=now, detail=LOST_DETAIL)
        .execution_options(synchronize_session=False)
    )


def _no_provider(session: Session, row: AIRequestRow, now: datetime) -> Outcome:
    error = ProviderUnavailableError(
        "no AI provider is configured in the worker (set OPENAI_API_KEY, or "
        "CODEGEN_TOKEN and CODEGEN_ORG_ID, in the worker's environment)"
    )
    for name, value in records.finish_values(JobStatus.FAILED, now, error=error).items():
        setattr(row, name, value)
    emit_ai_request_finished(session, row.id, JobStatus.FAILED)
    return Outcome(
        str(row.id), "done", JobStatus.FAILED, callback=row.callback, reason=error.message
    )


def _not_claimed(row: AIRequestRow, now: datetime, settings: Settings) -> Outcome:
    jid = str(row.id)
    status = JobStatus(row.status)
    if status.is_terminal:
        return Outcome(jid, "skipped", status, reason=f"already {status}")
    if status == JobStatus.AWAITING_RUN:
        return Outcome(jid, "skipped", status, reason=f"waits for agent run {row.agent_run_id}")
    if status == JobStatus.WAITING and row.next_attempt_at is not None:
        remaining = (row.next_attempt_at - now).total_seconds()
        if remaining <= settings.aiw_max_countdown:
            return Outcome(jid, "retry", status, countdown=max(0.0, remaining), reason="early")
        return Outcome(jid, "skipped", status, reason="parked until next_attempt_at")
    return Outcome(jid, "skipped", status, reason="owned by another worker")


__all__ = ["LOST_DETAIL", "claim_try"]
