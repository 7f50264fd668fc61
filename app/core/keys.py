"""Every Redis key ai-worker writes, in one place, and where that Redis is.

All keys start with ``aiw:``; the part after the prefix names what the key is for
(a provider and key digest, a lease name, a Codegen organization digest). Digests
come from ``app.core.cooldown.credential_digest``: never a secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    """The Redis that coordinates workers: ``REDIS_URL``, else a ``redis://`` broker, else
    (no ``CELERY_BROKER_URL``) the embedded broker's server, which speaks Redis too, while
    it runs (``aiw up`` starts it before any worker; a script of its own with no server
    running keeps its cooldowns in its process)."""
    if settings.redis_url:
        return settings.redis_url
    broker = settings.celery_broker_url or ""
    if not broker:
        from app.core.embedded_broker import running_redis_url

        return running_redis_url(settings)
    return broker if broker.startswith(("redis://", "rediss://")) else None


def redis_client(url: str, settings: Settings) -> Any:
    """A client of that Redis whose every wait is bounded (``AIW_CONNECT_TIMEOUT``,
    ``AIW_READ_TIMEOUT``): a Redis that accepts and then says nothing is an error
    within seconds, never a hang."""
    import redis

    if url.startswith("unix://"):  # a local socket: no TCP options (redis-py refuses them)
        return redis.Redis.from_url(url, socket_timeout=settings.aiw_read_timeout)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=settings.aiw_connect_timeout,
        socket_timeout=settings.aiw_read_timeout,
        socket_keepalive=True,
    )
