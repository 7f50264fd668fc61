"""A job's call through admission (``app.core.admission``): what the runner asks before
``generate_once`` and tells after it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.core import admission
from app.db.base import utcnow
from app.jobs import records

if TYPE_CHECKING:
    from app.ai.base import AIProvider, AIRequest, AIResponse
    from app.config import Settings
    from app.core.admission import Ticket
    from app.core.errors import ProviderRateLimitError
    from app.jobs.records import Try

log = logging.getLogger(__name__)


def request_tokens(request: AIRequest) -> int:
    """The tokens ``request`` may use (``admission.estimate_tokens``)."""
    chars = len(request.prompt) + len(request.system_prompt or "")
    cap = request.max_tokens
    if cap is None:
        extra = request.extra.get("max_completion_tokens")
        cap = extra if isinstance(extra, int) else None
    return admission.estimate_tokens(chars, 2 if request.system_prompt else 1, cap)


def limit_used_up(error: ProviderRateLimitError, request: AIRequest) -> bool:
    """Whether a 429 says a limit that every call of its key (and model) shares is used
    up, so that every worker should wait (a shared cooldown), rather than that this one
    call was turned away. Used up unless the answer's headers show requests left and
    tokens left for this call: a 429 with room left (a momentary refusal) makes only its
    own job wait its Retry-After."""
    limits = error.limits or {}
    requests_left = limits.get("remaining_requests")
    tokens_left = limits.get("remaining_tokens")
    if not isinstance(requests_left, int) or not isinstance(tokens_left, int):
        return True  # no headers (Codegen, a proxy): assume the worst
    return requests_left <= 0 or tokens_left < request_tokens(request)


def admit_job(
    tried: Try, request: AIRequest, name: str, provider: AIProvider, settings: Settings
) -> Ticket:
    """Reserve the call of ``tried`` in the window ``name`` (the cooldown's name: the
    provider, key and model). A slot is held only within ``AIW_MAX_COUNTDOWN`` and what
    is left of ``AIW_RATE_LIMIT_WAIT_MAX``."""
    patience = settings.aiw_rate_limit_wait_max - records.waited(tried, utcnow())
    return admission.admit(
        name,
        tried.provider,
        request.model or provider.default_model,
        str(tried.job_id),
        request_tokens(request),
        settings,
        max_wait=min(settings.aiw_max_countdown, patience),
    )


def settle_job(ticket: Ticket, response: AIResponse | None, settings: Settings) -> None:
    """After the call: its real usage and what the answer's headers said. Never raises:
    an answer in hand is recorded whatever happens here."""
    rate_limit = response.metadata.get("rate_limit") if response is not None else None
    try:
        admission.settle(
            ticket,
            settings,
            used_tokens=response.usage.total_tokens if response is not None else None,
            rate_limit=rate_limit if isinstance(rate_limit, dict) else None,
        )
    except Exception:  # advisory: never lose an answer to the window
        log.warning("job's rate window not settled", exc_info=True)
