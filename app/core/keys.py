"""Every Redis key ai-worker writes, in one place, and where that Redis is.

All keys start with ``aiw:``; the part after the prefix names what the key is for
(a provider and key digest, a lease name, a Codegen organization digest). Digests
come from ``app.core.cooldown.credential_digest``: never a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings

#: ``aiw:cooldown:<provider>:<key digest>``: a provider said 429; every worker waits.
COOLDOWN = "aiw:cooldown:"
#: ``aiw:lease:<name>``: one holder at a time (the agent-run poll round).
LEASE = "aiw:lease:"
#: ``aiw:budget:codegen:standard:<digest>`` / ``...:create:<digest>``: Codegen's limits.
BUDGET = "aiw:budget:"
BUDGET_CODEGEN_STANDARD = "codegen:standard"
BUDGET_CODEGEN_CREATE = "codegen:create"
#: ``aiw:admission:<provider>:<key digest>[:<model>]:requests`` / ``...:tokens``: the
#: windows provider calls reserve from (``app.core.admission``).
ADMISSION = "aiw:admission:"
#: ``aiw:admission:hold:<job id>``: a job's reserved slot, until it comes back for it.
ADMISSION_HOLD = "aiw:admission:hold:"


def redis_url_for(settings: Settings) -> str | None:
    """The Redis that coordinates workers: ``REDIS_URL``, else a ``redis://`` broker."""
    if settings.redis_url:
        return settings.redis_url
    broker = settings.celery_broker_url or ""
    return broker if broker.startswith(("redis://", "rediss://")) else None
