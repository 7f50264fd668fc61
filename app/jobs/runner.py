"""One run of an AI request: what the Celery task calls, and all it does.

A run is short steps, each its own transaction, and no database connection is held
while the provider thinks (the claim machine is ``app.db.claims``):

1. **Claim** the job and write its attempt row before any call (``app.jobs.claim``):
   a call lost with its worker shows as ``lost`` (possibly billed) when the next
   claim finds it. A redelivered message for a finished job, or one another worker
   holds, claims nothing and ends there.
2. **Codegen answers by a tracked run.** When the chain reaches Codegen, the same
   transaction starts a tracked agent run (``app.jobs.remote``): the job waits in the
   database (``awaiting_run``), no thread and no message wait for it, and the poller
   finishes it when the run ends.
3. **Call** any other provider once (``generate_once``; the retry loop of this path is
   the broker's), while the heartbeat keeps the claim's lease alive. A 429 whose
   headers say a limit is used up (or that has none) starts a cooldown that every
   worker shares (for OpenAI, of that model); one that shows room left makes only its
   own job wait its Retry-After. A provider in a shared cooldown is not called: the
   job is deferred until the cooldown ends. Nor is one whose shared rate window is
   full (``app.jobs.admission``): the job is deferred to the slot reserved for it.
   Neither wait spends a retry; both count against ``AIW_RATE_LIMIT_WAIT_MAX``. A
   spend budget holds the call's estimate before it and its real cost after it
   (``app.jobs.spend``); one that cannot admit it defers the job or fails it.
4. **Record**, fenced by the claim token (``app.jobs.finish``), durably: an answer
   in hand is recorded when the database is back, never asked again.

The answer (an ``Outcome``) tells the task what to do with the message.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING

from app.ai.base import AIResponse
from app.config import get_settings
from app.core.cooldown import get_cooldowns
from app.core.errors import AIProviderError, ProviderRateLimitError
from app.db.claims import Outcome, record_durably
from app.db.heartbeat import hold
from app.db.models import AIRequestRow
from app.jobs import admission, context, finish, spend
from app.jobs.claim import claim_try
from app.jobs.context import Claim, reset_providers

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)


class _InternalError(AIProviderError):
    """An unexpected exception inside a provider call (a bug, not the provider's answer)."""


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
    claimed = claim_try(jid, token, settings)
    if isinstance(claimed, Outcome):
        return claimed
    with hold(AIRequestRow, jid, token):
        return _call(claimed, settings)


def _call(claim: Claim, settings: Settings) -> Outcome:
    tried = claim.tried
    provider = context.provider(tried.provider, settings)
    cooldown_name = context.cooldown_name(
        tried.provider, claim.request.model or provider.default_model, settings
    )
    waiting = _cooldown_remaining(cooldown_name, settings)
    if waiting > 0:
        why = f"{tried.provider} kept cooling down (a 429 shared by every worker)"
        detail = f"not called: {tried.provider} cools down for {waiting:.2f} s " + (
            "(a 429 shared by every worker)"
        )
        return finish.wait_or_fail(claim, provider, waiting, why, detail, settings)
    ticket = admission.admit_job(claim.tried, claim.request, cooldown_name, provider, settings)
    if ticket.wait > 0:
        why = f"{tried.provider}'s rate window (shared by every worker) kept being full"
        return finish.wait_or_fail(
            claim, provider, ticket.wait, why, ticket.detail(), settings, jitter=not ticket.held
        )
    model = claim.request.model or provider.default_model or ""
    held = spend.reserve(tried, claim.request, model, list(claim.row["tags"] or []), settings)
    if held.refusal is not None:
        return finish.over_budget(claim, provider, held.refusal, settings)

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

    if isinstance(error, ProviderRateLimitError) and admission.limit_used_up(
        error, claim.request
    ):
        _start_cooldown(cooldown_name, provider.retry_policy.delay_for(error, 0), settings)
    admission.settle_job(ticket, response, settings)

    def record() -> Outcome:
        return finish.record(claim, provider, latency, response, error, settings)

    outcome = record_durably(record, what=f"job {tried.job_id}")
    spend.settle(held, response, error)
    return outcome


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


__all__ = ["reset_providers", "run_job"]
