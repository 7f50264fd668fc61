"""One run of an AI request: what the Celery task calls, and all it does.

A run is three short steps, each its own transaction, and no database
connection is held while the provider thinks:

1. **Claim** the job with one conditional UPDATE: only a job that is queued,
   due, or running under an expired lease can be claimed. The claim sets a
   fresh ``claim_token`` and a lease. A redelivered message for a finished job,
   or for one another worker owns, claims nothing and ends there.
2. **Call** one provider of the job's chain, once (``generate_once``): the retry
   loop of this path is the broker's, not ours. A provider in a shared cooldown
   is not called; the job is deferred until the cooldown ends.
3. **Record**, fenced by the claim token: one attempt row, one usage row on
   success (unique per attempt), and the job's next state: done, retry after a
   countdown, parked until ``next_attempt_at`` (long waits, for the sweep), or
   moved to the next provider of the chain.

The answer (an ``Outcome``) tells the task what to do with the message.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, func, insert, or_, text, update
from sqlalchemy.orm import Session

from app.ai.base import AIProvider, AIRequest, AIResponse
from app.ai.factory import automatic_order, build_provider
from app.config import get_settings
from app.core.cooldown import credential_digest, get_cooldowns
from app.core.errors import AIProviderError, ProviderRateLimitError, ProviderUnavailableError
from app.db.base import utcnow
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus, UsageRow
from app.db.session import session_scope
from app.webhooks.events import emit_ai_request_finished

if TYPE_CHECKING:
    from datetime import datetime

    from app.config import Settings

log = logging.getLogger(__name__)

Action = Literal["done", "retry", "parked", "skipped"]


@dataclass(frozen=True)
class Outcome:
    """What became of one run, and what the task should do with its message."""

    job_id: str
    action: Action
    status: str | None = None
    countdown: float | None = None  # for "retry": publish again after this many seconds
    callback: str | None = None  # for "done": a Celery task name to send the job id to
    reason: str = ""


@dataclass(frozen=True)
class _Claim:
    job_id: uuid.UUID
    token: str
    number: int  # this attempt's number within the job
    provider: str
    chain: list[str]
    provider_index: int
    retries_on_provider: int
    callback: str | None
    request: AIRequest


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
    """Forget cached providers (after fork, or when settings change)."""
    with _providers_lock:
        _providers.clear()


# --- the run -------------------------------------------------------------------------


def run_job(
    job_id: str | uuid.UUID, *, claim_token: str | None = None, settings: Settings | None = None
) -> Outcome:
    """Run the job once. ``claim_token`` names this delivery (the Celery task id): the
    same delivery retried after a database error takes its own claim back at once
    instead of waiting for the lease to expire."""
    settings = settings or get_settings()
    try:
        jid = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(str(job_id))
    except ValueError:
        log.error("dropping a message with a malformed job id %r", job_id)
        return Outcome(str(job_id), "skipped", reason="malformed job id")

    claim_or_outcome = _claim(jid, claim_token or str(uuid.uuid4()), settings)
    if isinstance(claim_or_outcome, Outcome):
        return claim_or_outcome
    claim = claim_or_outcome

    provider = _provider(claim.provider, settings)
    cooldown_name = f"{claim.provider}:{credential_digest(settings, claim.provider)}"
    waiting = _cooldown_remaining(cooldown_name, settings)
    if waiting > 0:
        return _defer(claim, waiting, settings)

    started = utcnow()
    t0 = time.perf_counter()
    response: AIResponse | None = None
    error: AIProviderError | None = None
    try:
        response = provider.generate_once(claim.request)
    except AIProviderError as exc:
        error = exc
    except Exception as exc:
        log.exception("job %s: unexpected error in provider %s", jid, claim.provider)
        error = _InternalError(f"{type(exc).__name__}: {exc}", provider_name=claim.provider)
    latency = time.perf_counter() - t0

    if isinstance(error, ProviderRateLimitError):
        delay = provider.retry_policy.delay_for(error, 0)
        _start_cooldown(cooldown_name, delay, settings)

    return _record(claim, provider, started, latency, response, error, settings)


def _claimable(now: datetime, token: str) -> Any:
    return or_(
        and_(AIRequestRow.status == JobStatus.RUNNING, AIRequestRow.claim_token == token),
        and_(
            AIRequestRow.status.in_([JobStatus.QUEUED, JobStatus.WAITING]),
            or_(AIRequestRow.next_attempt_at.is_(None), AIRequestRow.next_attempt_at <= now),
        ),
        and_(AIRequestRow.status == JobStatus.RUNNING, AIRequestRow.lease_expires_at < now),
    )


_chains: dict[int, list[str]] = {}


def _automatic_chain(settings: Settings) -> list[str]:
    """The automatic provider order of this worker (computed once per settings)."""
    chain = _chains.get(id(settings))
    if chain is None:
        chain = _chains[id(settings)] = automatic_order(settings.prefer_codegen, settings)
    return chain


def _claim(jid: uuid.UUID, token: str, settings: Settings) -> _Claim | Outcome:
    """One UPDATE ... RETURNING: the job is ours, or it is not claimable now."""
    now = utcnow()
    with session_scope() as session:
        if session.get_bind().dialect.name == "postgresql":
            # A claim lost in a server crash costs nothing (the job is claimed again and
            # the orphaned record is fenced off), so it need not wait for the WAL flush.
            session.execute(text("SET LOCAL synchronous_commit TO OFF"))
        row = session.scalars(
            update(AIRequestRow)
            .where(AIRequestRow.id == jid, _claimable(now, token))
            .values(
                status=JobStatus.RUNNING,
                claim_token=token,
                lease_expires_at=now + timedelta(seconds=settings.job_lease),
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
            return _not_claimed(existing, now, settings)
        # The chain is fixed at the first claim: a forced provider alone, else this
        # worker's automatic order. It is written with the first attempt's record.
        chain = list(row.provider_chain) or (
            [row.provider_requested] if row.provider_requested else _automatic_chain(settings)
        )
        if row.provider_index >= len(chain):
            error = ProviderUnavailableError(
                "no AI provider is configured in the worker (set OPENAI_API_KEY, or "
                "CODEGEN_TOKEN and CODEGEN_ORG_ID, in the worker's environment)"
            )
            _finish(row, JobStatus.FAILED, now, error=error)
            emit_ai_request_finished(session, jid, JobStatus.FAILED)
            return Outcome(
                str(jid), "done", JobStatus.FAILED, callback=row.callback, reason=error.message
            )
        params = row.parameters or {}
        request = AIRequest(
            prompt=row.prompt,
            system_prompt=row.system_prompt,
            model=row.model,
            temperature=float(params.get("temperature", 0.0)),
            max_tokens=params.get("max_tokens"),
            extra=dict(params.get("provider_kwargs") or {}),
        )
        return _Claim(
            jid,
            token,
            row.attempt_count,
            chain[row.provider_index],
            chain,
            row.provider_index,
            row.retries_on_provider,
            row.callback,
            request,
        )


def _not_claimed(row: AIRequestRow, now: datetime, settings: Settings) -> Outcome:
    jid = str(row.id)
    status = JobStatus(row.status)
    if status.is_terminal:
        return Outcome(jid, "skipped", status, reason=f"already {status}")
    if status == JobStatus.WAITING and row.next_attempt_at is not None:
        remaining = (row.next_attempt_at - now).total_seconds()
        if remaining <= settings.aiw_max_countdown:
            return Outcome(jid, "retry", status, countdown=max(0.0, remaining), reason="early")
        return Outcome(jid, "skipped", status, reason="parked until next_attempt_at")
    return Outcome(jid, "skipped", status, reason="owned by another worker")


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


def _wait_values(
    delay: float, now: datetime, settings: Settings
) -> tuple[dict[str, Any], Action, float | None]:
    """The job waits ``delay`` seconds: a broker countdown, or parked for the sweep."""
    values: dict[str, Any] = {
        "status": JobStatus.WAITING,
        "next_attempt_at": now + timedelta(seconds=delay),
        "claim_token": None,
        "lease_expires_at": None,
        "updated_at": now,
    }
    if delay <= settings.aiw_max_countdown:
        values["published_at"] = now  # the task re-publishes itself with this countdown
        return values, "retry", delay
    values["published_at"] = None  # no message waits for it: the sweep publishes when due
    return values, "parked", None


def _finish_values(
    status: JobStatus,
    now: datetime,
    *,
    response: AIResponse | None = None,
    error: AIProviderError | None = None,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "updated_at": now,
        "claim_token": None,
        "lease_expires_at": None,
        "next_attempt_at": None,
    }
    if response is not None:
        values.update(
            result=response.model_dump(mode="json"),
            provider_used=response.provider_name,
            model=response.model,
            error_type=None,
            error_message=None,
        )
    if error is not None:
        values.update(error_type=error.error_type, error_message=str(error))
    return values


def _finish(
    row: AIRequestRow,
    status: JobStatus,
    now: datetime,
    *,
    response: AIResponse | None = None,
    error: AIProviderError | None = None,
) -> None:
    for name, value in _finish_values(status, now, response=response, error=error).items():
        setattr(row, name, value)


def _fenced_update(session: Session, claim: _Claim, values: dict[str, Any]) -> bool:
    """Apply ``values`` only if the claim still holds. False: cancelled or taken over."""
    result = session.execute(
        update(AIRequestRow)
        .where(
            AIRequestRow.id == claim.job_id,
            AIRequestRow.claim_token == claim.token,
            AIRequestRow.status == JobStatus.RUNNING,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def _defer(claim: _Claim, waiting: float, settings: Settings) -> Outcome:
    """The provider is cooling down: give the claim back without calling it."""
    now = utcnow()
    delay = waiting + random.uniform(0, min(1.0, waiting * 0.1))  # spread the herd
    values, action, countdown = _wait_values(delay, now, settings)
    values["attempt_count"] = AIRequestRow.attempt_count - 1  # nothing was tried
    with session_scope() as session:
        if not _fenced_update(session, claim, values):
            return Outcome(str(claim.job_id), "skipped", reason="claim lost")
    return Outcome(
        str(claim.job_id),
        action,
        JobStatus.WAITING,
        countdown=countdown,
        reason=f"{claim.provider} cooling down",
    )


def _record(
    claim: _Claim,
    provider: AIProvider,
    started: datetime,
    latency: float,
    response: AIResponse | None,
    error: AIProviderError | None,
    settings: Settings,
) -> Outcome:
    """One transaction: the job's next state (fenced by the claim), the attempt, the usage."""
    now = utcnow()
    jid = str(claim.job_id)
    attempt: dict[str, Any] = {
        "request_id": claim.job_id,
        "number": claim.number,
        "provider": claim.provider,
        "model": response.model if response else (claim.request.model or provider.default_model),
        "latency_s": latency,
        "started_at": started,
        "finished_at": now,
        "http_status": None,
        "retry_after_s": None,
        "error_type": None,
        "error_message": None,
        "provider_request_id": None,
    }
    usage: dict[str, Any] | None = None
    countdown: float | None = None
    if response is not None:
        attempt["outcome"] = AttemptOutcome.SUCCEEDED
        attempt["provider_request_id"] = response.request_id
        tokens = response.usage
        usage = {
            "request_id": claim.job_id,
            "provider": response.provider_name,
            "model": response.model,
            "prompt_tokens": tokens.prompt_tokens,
            "completion_tokens": tokens.completion_tokens,
            "cached_tokens": tokens.cached_tokens,
            "reasoning_tokens": tokens.reasoning_tokens,
            "total_tokens": tokens.total_tokens,
            "cost_usd": response.cost_usd,
            "latency_s": latency,
            "created_at": now,
        }
        values = _finish_values(JobStatus.SUCCEEDED, now, response=response)
        outcome = Outcome(jid, "done", JobStatus.SUCCEEDED, callback=claim.callback)
    else:
        assert error is not None
        attempt.update(
            http_status=error.status_code,
            retry_after_s=error.retry_after,
            error_type=error.error_type,
            error_message=str(error)[:4000],
            provider_request_id=error.request_id,
        )
        policy = provider.retry_policy
        if policy.should_retry(error, claim.retries_on_provider):
            attempt["outcome"] = AttemptOutcome.RETRY
            delay = policy.delay_for(error, claim.retries_on_provider)
            values, action, countdown = _wait_values(delay, now, settings)
            values["retries_on_provider"] = claim.retries_on_provider + 1
            outcome = Outcome(
                jid, action, JobStatus.WAITING, countdown=countdown, reason=error.error_type
            )
        elif error.fallback and claim.provider_index + 1 < len(claim.chain):
            attempt["outcome"] = AttemptOutcome.FAILED
            values, action, countdown = _wait_values(0.0, now, settings)
            values.update(provider_index=claim.provider_index + 1, retries_on_provider=0)
            outcome = Outcome(
                jid,
                action,
                JobStatus.WAITING,
                countdown=countdown,
                reason=f"falling back to {claim.chain[claim.provider_index + 1]}",
            )
        else:
            attempt["outcome"] = AttemptOutcome.FAILED
            values = _finish_values(JobStatus.FAILED, now, error=error)
            outcome = Outcome(
                jid, "done", JobStatus.FAILED, callback=claim.callback, reason=error.error_type
            )
    values["provider_chain"] = claim.chain

    with session_scope() as session:
        if not _fenced_update(session, claim, values):
            # Cancelled meanwhile, or our lease ran out and another worker took over:
            # the call is kept in the history, nothing else changes.
            attempt["outcome"] = AttemptOutcome.SUPERSEDED
            session.execute(insert(AttemptRow).values(**attempt))
            return Outcome(jid, "skipped", reason="claim lost")
        attempt_id = session.scalar(insert(AttemptRow).values(**attempt).returning(AttemptRow.id))
        if usage is not None:
            session.execute(insert(UsageRow).values(attempt_id=attempt_id, **usage))
        if outcome.action == "done":  # webhooks, published once this transaction commits
            emit_ai_request_finished(session, claim.job_id, str(outcome.status))
    return outcome
