"""One run of an AI request: what the Celery task calls, and all it does.

A run is short steps, each its own transaction, and no database connection is held
while the provider thinks (the claim machine is ``app.db.claims``):

1. **Claim** the job with one conditional UPDATE (queued or due, ours already, or
   running under a lease that ran out), and in the same transaction write the
   attempt row (``started``) before any call: a call lost with its worker shows as
   ``lost`` (possibly billed) when the next claim finds it. A redelivered message for
   a finished job, or one another worker holds, claims nothing and ends there.
2. **Codegen answers by a tracked run.** When the chain reaches Codegen, the same
   transaction starts a tracked agent run (``app.jobs.remote``): the job waits in the
   database (``awaiting_run``), no thread and no message wait for it, and the poller
   finishes it when the run ends.
3. **Call** any other provider once (``generate_once``; the retry loop of this path is
   the broker's), while the heartbeat keeps the claim's lease alive. A provider in a
   shared cooldown is not called: the job is deferred until the cooldown ends. Nor is
   one whose shared rate window is full (``app.jobs.admission``): the job is deferred to
   the slot reserved for it. Neither wait spends a retry; both count against
   ``AIW_RATE_LIMIT_WAIT_MAX``. A spend budget holds the call's estimate before it and
   its real cost after it (``app.jobs.spend``); one that cannot admit it defers the job
   or fails it.
4. **Record**, fenced by the claim token (``app.jobs.records``), durably: an answer
   in hand is recorded when the database is back, never asked again.

The answer (an ``Outcome``) tells the task what to do with the message.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, update
from sqlalchemy.orm import Session

from app.ai.base import AIProvider, AIRequest, AIResponse
from app.ai.factory import automatic_order, build_provider, provider_names
from app.config import get_settings
from app.core.cooldown import credential_digest, get_cooldowns
from app.core.errors import AIProviderError, ProviderRateLimitError, ProviderUnavailableError
from app.db.base import utcnow
from app.db.claims import Outcome, claim_values, claimable, fenced, lease_until, record_durably
from app.db.heartbeat import hold
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus
from app.db.session import database_url, get_hot_engine, session_scope
from app.jobs import admission, hotpath, records, remote, spend, tag_caps
from app.jobs.records import Try
from app.webhooks.events import emit_ai_request_finished, publish_deliveries

if TYPE_CHECKING:
    from datetime import datetime

    from app.config import Settings

log = logging.getLogger(__name__)

#: What a lost attempt's ``detail`` says.
LOST_DETAIL = (
    "its worker stopped renewing the job's lease during the call (it died or was cut "
    "off); the call may have been billed"
)


@dataclass(frozen=True)
class _Claim:
    tried: Try
    token: str
    request: AIRequest
    row: Mapping[str, Any]  # the claimed job's columns (``hotpath.CLAIMED``)


class _InternalError(AIProviderError):
    """An unexpected exception inside a provider call (a bug, not the provider's answer)."""


# --- providers, one per process and name ----------------------------------------------

_providers: dict[tuple[str, int], AIProvider] = {}
_providers_lock = threading.Lock()


def _provider(name: str, settings: Settings) -> AIProvider:
    key = (name, id(settings))
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            if len(_providers) > 32:
                _providers.clear()
            provider = build_provider(name, settings=settings)
            _providers[key] = provider
        return provider


def reset_providers() -> None:
    """Forget cached providers and chains (after fork, or when settings change)."""
    with _providers_lock:
        _providers.clear()
        _chains.clear()
        _dialects.clear()
        _defaults.clear()
        _digests.clear()
        _caps.clear()


_chains: dict[int, list[str]] = {}


def _automatic_chain(settings: Settings) -> list[str]:
    """The automatic provider order of this worker (computed once per settings)."""
    chain = _chains.get(id(settings))
    if chain is None:
        chain = _chains[id(settings)] = automatic_order(settings.prefer_codegen, settings)
    return chain


# --- the run -------------------------------------------------------------------------


def run_job(
    job_id: str | uuid.UUID, *, claim_token: str | None = None, settings: Settings | None = None
) -> Outcome:
    """Run the job once. ``claim_token`` names this delivery (the Celery task id): the
    same delivery retried after a database error takes its own claim back at once
    instead of waiting for the lease to run out."""
    settings = settings or get_settings()
    try:
        jid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        log.error("dropping a message with a malformed job id %r", job_id)
        return Outcome(str(job_id), "skipped", reason="malformed job id")

    token = claim_token or str(uuid.uuid4())
    claimed = _claim(jid, token, settings)
    if isinstance(claimed, Outcome):
        return claimed
    with hold(AIRequestRow, jid, token):
        return _call(claimed, settings)


def _call(claim: _Claim, settings: Settings) -> Outcome:
    tried = claim.tried
    provider = _provider(tried.provider, settings)
    cooldown_name = _cooldown_name(
        tried.provider, claim.request.model or provider.default_model, settings
    )
    waiting = _cooldown_remaining(cooldown_name, settings)
    if waiting > 0:
        why = f"{tried.provider} kept cooling down (a 429 shared by every worker)"
        detail = f"not called: {tried.provider} cools down for {waiting:.2f} s " + (
            "(a 429 shared by every worker)"
        )
        return _wait_or_fail(claim, provider, waiting, why, detail, settings)
    ticket = admission.admit_job(claim.tried, claim.request, cooldown_name, provider, settings)
    if ticket.wait > 0:
        why = f"{tried.provider}'s rate window (shared by every worker) kept being full"
        return _wait_or_fail(claim, provider, ticket.wait, why, ticket.detail(), settings,
                             jitter=not ticket.held)  # fmt: skip
    model = claim.request.model or provider.default_model or ""
    held = spend.reserve(tried, claim.request, model, list(claim.row["tags"] or []), settings)
    if held.refusal is not None:
        return _over_budget(claim, provider, held.refusal, settings)

    t0 = time.perf_counter()
    response: AIResponse | None = None
    error: AIProviderError | None = None
    try:
        response = provider.generate_once(claim.request)
    except AIProviderError as exc:
        error = exc
    except Exception as exc:  # the one boundary around a provider call: a bug becomes a record
        log.exception("job %s: unexpected error in provider %s", tried.job_id, tried.provider)
        error = _InternalError(f"{type(exc).__name__}: {exc}", provider_name=tried.provider)
    latency = time.perf_counter() - t0

    if isinstance(error, ProviderRateLimitError):
        _start_cooldown(cooldown_name, provider.retry_policy.delay_for(error, 0), settings)
    admission.settle_job(ticket, response, settings)

    def record() -> Outcome:
        return _record(claim, provider, latency, response, error, settings)

    outcome = record_durably(record, what=f"job {tried.job_id}")
    spend.settle(held, response, error)
    return outcome


def _over_budget(
    claim: _Claim, provider: AIProvider, refusal: spend.Refusal, settings: Settings
) -> Outcome:
    """A spend budget keeps the call out: the job fails, or waits (``app.jobs.spend``)."""
    if refusal.error is not None:
        error = refusal.error
        return record_durably(
            lambda: _record(claim, provider, 0.0, None, error, settings),
            what=f"job {claim.tried.job_id}",
        )
    return _defer(
        claim, refusal.wait, settings, detail=refusal.detail, reason=refusal.reason
    )


def _claimed_now(now: datetime, token: str) -> Any:
    R = AIRequestRow
    return (
        R.status.in_([JobStatus.QUEUED, JobStatus.WAITING, JobStatus.RUNNING]),
        claimable(R, now, token),
    )


def _claim(jid: uuid.UUID, token: str, settings: Settings) -> _Claim | Outcome:
    """One transaction: the job is ours and its attempt row is written, or it is not
    claimable now (or held back by its tags' caps, ``app.jobs.tag_caps``). A job Codegen
    answers is handed to its tracked run right after."""
    now = utcnow()
    caps = _tag_caps(settings)
    if not _on_postgresql(settings):
        return _claim_portable(jid, token, now, settings, caps, [])
    with get_hot_engine().connect() as conn:
        claimed = hotpath.claim(
            conn,
            jid,
            token,
            now=now,
            lease=lease_until(now, settings),
            automatic=_automatic_chain(settings),
            default_models=_default_models(settings),
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
) -> _Claim | Outcome:
    """The claim in several statements of one transaction: on SQLite, and on PostgreSQL
    for a job with capped tags (``locked``: their advisory locks are taken first)."""
    conditions = list(_claimed_now(now, token))
    if caps:
        conditions.append(
            tag_caps.under_caps(caps, now, postgresql=_on_postgresql(settings))
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
        chain = list(row.provider_chain) or (
            [row.provider_requested] if row.provider_requested else _automatic_chain(settings)
        )
        if row.provider_index >= len(chain):
            return _no_provider(session, row, now)
        provider_name = chain[row.provider_index]
        model = row.model or _provider(provider_name, settings).default_model
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
) -> _Claim | Outcome:
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
    claim = _Claim(tried, token, request, row)
    if tried.provider != remote.PROVIDER:
        return claim
    with session_scope() as session:
        return _hand_over(session, claim, list(row["tags"] or []), now, settings)


_dialects: dict[int, bool] = {}
_defaults: dict[int, dict[str, str]] = {}
_caps: dict[int, dict[str, int]] = {}


def _tag_caps(settings: Settings) -> dict[str, int]:
    known = _caps.get(id(settings))
    if known is None:
        known = _caps[id(settings)] = settings.tag_caps
    return known


def _on_postgresql(settings: Settings) -> bool:
    known = _dialects.get(id(settings))
    if known is None:
        known = _dialects[id(settings)] = database_url(settings).startswith("postgresql")
    return known


def _default_models(settings: Settings) -> dict[str, str]:
    """Each provider's default model (the attempt's model when the job names none)."""
    known = _defaults.get(id(settings))
    if known is None:
        models = {name: _provider(name, settings).default_model for name in provider_names()}
        known = _defaults[id(settings)] = {k: v for k, v in models.items() if v}
    return known


def _hand_over(
    session: Session, claim: _Claim, tags: list[str], now: datetime, settings: Settings
) -> Outcome:
    """Codegen answers this try: start a tracked run for it, in the claim's transaction."""
    jid = claim.tried.job_id
    try:
        spec = remote.run_input(_provider(remote.PROVIDER, settings), claim.request, tags)
    except AIProviderError as error:  # the request does not suit Codegen: a failed try
        decision = records.decide(
            claim.tried,
            None,
            error,
            _provider(remote.PROVIDER, settings).retry_policy,
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


_digests: dict[tuple[int, str], str] = {}


def _cooldown_name(provider: str, model: str | None, settings: Settings) -> str:
    """What a 429 pauses: the provider and key, and for OpenAI, which limits each model
    apart, only the model the answer was for."""
    digest = _digests.get((id(settings), provider))
    if digest is None:
        digest = _digests[(id(settings), provider)] = credential_digest(settings, provider)
    if provider == "openai" and model:
        return f"{provider}:{digest}:{model}"
    return f"{provider}:{digest}"


def _cooldown_remaining(name: str, settings: Settings) -> float:
    try:
        return get_cooldowns(settings).remaining(name)
    except Exception as exc:  # noqa: BLE001 - cooldowns are advisory: never lose a job to them
        log.warning("cooldown store unreachable (%s); calling without it", type(exc).__name__)
        return 0.0


def _start_cooldown(name: str, seconds: float, settings: Settings) -> None:
    if seconds <= 0:
        return
    try:
        get_cooldowns(settings).start(name, seconds)
    except Exception as exc:  # noqa: BLE001 - advisory, see above
        log.warning("cooldown store unreachable (%s); cooldown not shared", type(exc).__name__)


def _wait_or_fail(
    claim: _Claim,
    provider: AIProvider,
    waiting: float,
    why: str,
    detail: str,
    settings: Settings,
    *,
    jitter: bool = True,
) -> Outcome:
    """The call must wait ``waiting`` s (a cooldown, a full rate window): defer the job,
    unless it has waited out rate limits for ``AIW_RATE_LIMIT_WAIT_MAX`` already."""
    tried = claim.tried
    if records.waited(tried, utcnow()) + waiting > settings.aiw_rate_limit_wait_max:
        # Waited out rate limits long enough: the reason it fails (or falls back).
        error = ProviderRateLimitError(why, provider_name=tried.provider, retry_after=waiting)
        return record_durably(
            lambda: _record(claim, provider, 0.0, None, error, settings),
            what=f"job {tried.job_id}",
        )
    return _defer(claim, waiting, settings, detail=detail, jitter=jitter)


def _defer(
    claim: _Claim,
    waiting: float,
    settings: Settings,
    *,
    detail: str,
    reason: str | None = None,
    jitter: bool = True,
) -> Outcome:
    """Give the claim back without calling the provider (a cooldown, a full rate window,
    a spent budget); the job comes back in ``waiting`` s (plus a little, with
    ``jitter``, to spread a herd); the attempt is ``deferred`` with ``detail``."""
    now = utcnow()
    tried = claim.tried
    delay = waiting + (random.uniform(0, min(1.0, waiting * 0.1)) if jitter else 0.0)
    values, action, countdown = records.wait_values(delay, now, settings)

    def record() -> Outcome:
        with session_scope() as session:
            changed = session.execute(
                update(AIRequestRow)
                .where(fenced(AIRequestRow, tried.job_id, claim.token))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            records.update_attempt(
                session,
                tried.attempt_id,
                {
                    "outcome": AttemptOutcome.DEFERRED,
                    "finished_at": now,
                    "latency_s": 0.0,
                    "detail": detail,
                },
            )
            if not getattr(changed, "rowcount", 0):
                return Outcome(str(tried.job_id), "skipped", reason="claim lost")
        return Outcome(
            str(tried.job_id),
            action,
            JobStatus.WAITING,
            countdown=countdown,
            reason=reason or f"{tried.provider} waits {waiting:.2f} s (rate limits)",
        )

    return record_durably(record, what=f"job {tried.job_id}")


def _record(
    claim: _Claim,
    provider: AIProvider,
    latency: float,
    response: AIResponse | None,
    error: AIProviderError | None,
    settings: Settings,
) -> Outcome:
    """One transaction: the job's next state (fenced by the claim), the attempt, the usage."""
    now = utcnow()
    tried = claim.tried
    decision = records.decide(tried, response, error, provider.retry_policy, now, settings)
    if error is not None and response is None and "model" not in decision.attempt:
        decision.attempt["model"] = claim.request.model or provider.default_model
    if _on_postgresql(settings):
        held = _record_pg(claim, decision, response, latency, now)
    else:
        with session_scope() as session:
            held = records.apply(
                session,
                tried.job_id,
                fenced(AIRequestRow, tried.job_id, claim.token),
                decision,
                tried.attempt_id,
                response=response,
                latency=latency,
                now=now,
            )
    if not held:
        # Cancelled meanwhile, or another worker took over: the call is kept in the
        # history (and its usage, which was paid for); nothing else changes.
        return Outcome(str(tried.job_id), "skipped", reason="claim lost")
    return decision.outcome


def _record_pg(
    claim: _Claim,
    decision: records.Decision,
    response: AIResponse | None,
    latency: float,
    now: datetime,
) -> bool:
    """``records.apply`` in one statement on PostgreSQL (``app.jobs.hotpath``), the ended
    job's webhook deliveries published once it has returned (committed)."""
    tried = claim.tried
    finished = None
    if decision.outcome.action == "done":
        finished = {
            **{c: claim.row[c] for c in ("id", "kind", "model", "tags", "created_at")},
            "started_at": claim.row["started_at"],
            "attempt_count": claim.row["attempt_count"],
            "provider_used": None,
            "result": None,
            "error_type": None,
            "error_message": None,
            **decision.values,
        }
    usage = None
    if response is not None:
        usage = records.usage_values(tried.job_id, tried.attempt_id, response, latency, now)
    with get_hot_engine().connect() as conn:
        held, deliveries = hotpath.record(
            conn,
            tried.job_id,
            fence=hotpath.FENCE_CLAIM,
            fence_params={"f_token": claim.token},
            values=decision.values,
            attempt_id=tried.attempt_id,
            attempt={**decision.attempt, "latency_s": latency},
            usage=usage,
            finished=finished,
            now=now,
        )
    if deliveries:
        publish_deliveries(deliveries)
    return held


__all__ = ["reset_providers", "run_job"]
