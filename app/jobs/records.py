"""What a job's row becomes: the values of each next state, and the record of a try.

``app.jobs.runner`` (a call in a worker thread) and ``app.jobs.remote`` (a Codegen
run that ended) both end a try the same way: the job's next state, fenced by its
claim (or by the run it waits for), the attempt row closed, the usage row of a paid
answer, and the ``ai_request.*`` webhook when the job ends. The functions here build
those values and write them in the caller's transaction; none commits. Every error
message they record is redacted first (``app.core.redact``), so the job row, the
attempt row and the webhook payload built from the job row hold no secret, on SQLite
and on PostgreSQL's hot path (``app.jobs.hotpath`` writes these same values).

Next states:

- **done**: ``succeeded`` (with the answer) or ``failed`` (with the error);
- **retry**: ``waiting`` until ``next_attempt_at``, a broker countdown when the wait
  is at most ``AIW_MAX_COUNTDOWN``, else **parked** (no message; the sweep publishes it
  when due): a long backoff, or a server's ``Retry-After`` beyond ``RETRY_AFTER_MAX``,
  which is honoured in full here (the attempt's ``detail`` says so) instead of retrying
  early at the cap;
- **fallback**: ``waiting`` at once on the next provider of the chain.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from app.ai.base import AIResponse
from app.core.errors import AIProviderError, ProviderRateLimitError
from app.core.redact import redact
from app.db.claims import Action, Outcome
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus, UsageRow
from app.webhooks.events import emit_ai_request_finished

if TYPE_CHECKING:
    from app.config import Settings
    from app.core.retry import RetryPolicy

#: The longest wait a server's Retry-After may park a job for (a day).
PARK_MAX = 86_400.0
ERROR_CHARS = 4000


def wait_values(
    delay: float, now: datetime, settings: Settings
) -> tuple[dict[str, Any], Action, float | None]:
    """The job waits ``delay`` seconds: a broker countdown, or parked for the sweep."""
    values: dict[str, Any] = {
        "status": JobStatus.WAITING,
        "next_attempt_at": now + timedelta(seconds=delay),
        "claim_token": None,
        "lease_expires_at": None,
        "agent_run_id": None,
        "updated_at": now,
    }
    if delay <= settings.aiw_max_countdown:
        values["published_at"] = now  # the task re-publishes itself with this countdown
        return values, "retry", delay
    values["published_at"] = None  # no message waits for it: the sweep publishes when due
    return values, "parked", None


def finish_values(
    status: JobStatus,
    now: datetime,
    *,
    response: AIResponse | None = None,
    error: AIProviderError | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """The values of a job that ends now; its error message redacted (``settings``'
    secrets, default the process's, and the shapes of secrets: ``app.core.redact``)."""
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
        values.update(error_type=error.error_type, error_message=redact(str(error), settings))
    return values


@dataclass(frozen=True)
class Try:
    """Where a job stood when one of its tries ended."""

    job_id: uuid.UUID
    attempt_id: int
    provider: str
    chain: list[str]
    provider_index: int
    retries_on_provider: int
    callback: str | None
    started_at: datetime | None = None  # the job's first claim


@dataclass(frozen=True)
class Decision:
    """A try's end: the job's new values, the attempt's outcome, and the task's action."""

    values: dict[str, Any]
    attempt: dict[str, Any]
    outcome: Outcome


def decide(
    tried: Try,
    response: AIResponse | None,
    error: AIProviderError | None,
    policy: RetryPolicy,
    now: datetime,
    settings: Settings,
) -> Decision:
    """What the job becomes after this answer (``response``) or failure (``error``)."""
    jid = str(tried.job_id)
    attempt: dict[str, Any] = {"finished_at": now}
    if response is not None:
        attempt.update(outcome=AttemptOutcome.SUCCEEDED, provider_request_id=response.request_id)
        attempt["model"] = response.model
        values = finish_values(JobStatus.SUCCEEDED, now, response=response)
        outcome = Outcome(jid, "done", JobStatus.SUCCEEDED, callback=tried.callback)
        return Decision(values, attempt, outcome)
    assert error is not None
    attempt.update(
        http_status=error.status_code,
        retry_after_s=error.retry_after,
        error_type=error.error_type,
        error_message=redact(str(error), settings)[:ERROR_CHARS],
        provider_request_id=error.request_id,
    )
    if isinstance(error, ProviderRateLimitError):
        rate_limited = _rate_limited(tried, error, policy, now, settings, attempt)
        if rate_limited is not None:
            return rate_limited
        error = _out_of_patience(tried, error, now, settings)
        attempt.update(error_message=redact(str(error), settings)[:ERROR_CHARS])
    elif policy.should_retry(error, tried.retries_on_provider):
        attempt["outcome"] = AttemptOutcome.RETRY
        delay = _delay(error, tried.retries_on_provider, policy, now, attempt)
        values, action, countdown = wait_values(delay, now, settings)
        values["retries_on_provider"] = tried.retries_on_provider + 1
        outcome = Outcome(
            jid, action, JobStatus.WAITING, countdown=countdown, reason=error.error_type
        )
        return Decision(values, attempt, outcome)
    attempt["outcome"] = AttemptOutcome.FAILED
    if error.fallback and tried.provider_index + 1 < len(tried.chain):
        values, action, countdown = wait_values(0.0, now, settings)
        values.update(provider_index=tried.provider_index + 1, retries_on_provider=0)
        following = tried.chain[tried.provider_index + 1]
        outcome = Outcome(
            jid,
            action,
            JobStatus.WAITING,
            countdown=countdown,
            reason=f"falling back to {following}",
        )
        return Decision(values, attempt, outcome)
    values = finish_values(JobStatus.FAILED, now, error=error, settings=settings)
    outcome = Outcome(
        jid, "done", JobStatus.FAILED, callback=tried.callback, reason=error.error_type
    )
    return Decision(values, attempt, outcome)


def _delay(
    error: AIProviderError, retries: int, policy: RetryPolicy, now: datetime,
    attempt: dict[str, Any],
) -> float:  # fmt: skip
    """The wait before the next try: the backoff, or a server's Retry-After honoured in
    full when it is beyond ``RETRY_AFTER_MAX`` (parked; the attempt's detail says so)."""
    delay = policy.delay_for(error, retries)
    asked = error.retry_after
    if asked is not None and asked > policy.retry_after_max:
        delay = min(asked, PARK_MAX)  # the server's time, not an early try at the cap
        attempt["detail"] = (
            f"the server asked to wait {asked:g} s (Retry-After), more than "
            f"RETRY_AFTER_MAX={policy.retry_after_max:g} s: the job waits until "
            f"{(now + timedelta(seconds=delay)).isoformat()}"
        )
    return delay


def waited(tried: Try, now: datetime) -> float:
    """Seconds since the job's first try."""
    return 0.0 if tried.started_at is None else max(0.0, (now - tried.started_at).total_seconds())


def _rate_limited(
    tried: Try,
    error: ProviderRateLimitError,
    policy: RetryPolicy,
    now: datetime,
    settings: Settings,
    attempt: dict[str, Any],
) -> Decision | None:
    """A 429 is the provider saying "later", not a fault: the job waits (the server's
    Retry-After, else the backoff) without spending a retry, as long as it has waited
    less than ``AIW_RATE_LIMIT_WAIT_MAX`` in all. None: that budget is spent."""
    delay = _delay(error, min(tried.retries_on_provider, 5), policy, now, attempt)
    if waited(tried, now) + delay > settings.aiw_rate_limit_wait_max:
        return None
    attempt["outcome"] = AttemptOutcome.RETRY
    values, action, countdown = wait_values(delay, now, settings)
    outcome = Outcome(
        str(tried.job_id), action, JobStatus.WAITING, countdown=countdown,
        reason=error.error_type,
    )  # fmt: skip
    return Decision(values, attempt, outcome)


def _out_of_patience(
    tried: Try, error: ProviderRateLimitError, now: datetime, settings: Settings
) -> ProviderRateLimitError:
    """The 429 that spends the job's waiting budget: the reason it fails (or falls back)."""
    return ProviderRateLimitError(
        f"still rate limited after {waited(tried, now):.0f} s of trying, more than "
        f"AIW_RATE_LIMIT_WAIT_MAX={settings.aiw_rate_limit_wait_max:g} s: {error.message}",
        provider_name=error.provider_name,
        status_code=error.status_code,
        request_id=error.request_id,
        retry_after=error.retry_after,
    )


def usage_values(
    job_id: uuid.UUID, attempt_id: int, response: AIResponse, latency: float, now: datetime
) -> dict[str, Any]:
    tokens = response.usage
    return {
        "attempt_id": attempt_id,
        "request_id": job_id,
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


def update_attempt(session: Session, attempt_id: int, values: dict[str, Any]) -> None:
    session.execute(
        update(AttemptRow)
        .where(AttemptRow.id == attempt_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def apply(
    session: Session,
    job_id: uuid.UUID,
    condition: Any,
    decision: Decision,
    attempt_id: int,
    *,
    response: AIResponse | None,
    latency: float,
    now: datetime,
) -> bool:
    """Write a try's end in ``session``: the job (only if ``condition`` still holds), the
    attempt, the usage of a paid answer, the webhook of an end. False: the job had moved
    on (cancelled, or taken over): the attempt is kept as ``superseded`` and its usage,
    which was paid for, is still counted."""
    changed = session.execute(
        update(AIRequestRow)
        .where(AIRequestRow.id == job_id, condition)
        .values(**decision.values)
        .execution_options(synchronize_session=False)
    )
    held = bool(getattr(changed, "rowcount", 0))
    attempt = {**decision.attempt, "latency_s": latency}
    if not held:
        attempt["outcome"] = AttemptOutcome.SUPERSEDED
    update_attempt(session, attempt_id, attempt)
    if response is not None:
        session.execute(
            insert(UsageRow).values(**usage_values(job_id, attempt_id, response, latency, now))
        )
    if held and decision.outcome.action == "done":
        emit_ai_request_finished(session, job_id, str(decision.outcome.status))
    return held


__all__ = [
    "Decision",
    "Try",
    "apply",
    "decide",
    "finish_values",
    "update_attempt",
    "usage_values",
    "wait_values",
]
