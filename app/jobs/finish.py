"""How a try of a job ends, in one fenced transaction each (``app.jobs.records``
decides, this module writes): the answer or error recorded (``record``), or the claim
given back without a call because a cooldown, a full rate window or a spend budget
keeps it out (``defer``, ``wait_or_fail``, ``over_budget``)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from sqlalchemy import update

from app.ai.base import AIProvider, AIResponse
from app.core.errors import AIProviderError, ProviderRateLimitError
from app.db.base import utcnow
from app.db.claims import Outcome, fenced, record_durably
from app.db.hot import hot_cursor
from app.db.models import AIRequestRow, AttemptOutcome, JobStatus
from app.db.session import session_scope
from app.jobs import context, hotpath, records, spend
from app.jobs.context import Claim
from app.webhooks.events import publish_deliveries

if TYPE_CHECKING:
    from datetime import datetime

    from app.config import Settings


def over_budget(
    claim: Claim, provider: AIProvider, refusal: spend.Refusal, settings: Settings
) -> Outcome:
    """A spend budget keeps the call out: the job fails, or waits (``app.jobs.spend``)."""
    if refusal.error is not None:
        return _record_uncalled(claim, provider, refusal.error, settings)
    return defer(claim, refusal.wait, settings, detail=refusal.detail, reason=refusal.reason)


def wait_or_fail(
    claim: Claim,
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
        return _record_uncalled(claim, provider, error, settings)
    return defer(claim, waiting, settings, detail=detail, jitter=jitter)


def defer(
    claim: Claim,
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

    def write() -> Outcome:
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

    return record_durably(write, what=f"job {tried.job_id}")


def _record_uncalled(
    claim: Claim, provider: AIProvider, error: AIProviderError, settings: Settings
) -> Outcome:
    """Record ``error`` as the try's end without a call (durably, like an answer)."""
    return record_durably(
        lambda: record(claim, provider, 0.0, None, error, settings),
        what=f"job {claim.tried.job_id}",
    )


def record(
    claim: Claim,
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
    if context.on_postgresql(settings):
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
    claim: Claim,
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
    with hot_cursor() as cur:
        held, deliveries = hotpath.record(
            cur,
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


__all__ = ["defer", "over_budget", "record", "wait_or_fail"]
