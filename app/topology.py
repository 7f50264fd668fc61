"""Where things are: the database, the broker, the data directory, and what that allows.

Two shapes, chosen by the environment alone:

- **embedded** (nothing configured): a SQLite database and kombu's SQLAlchemy
  transport on a second SQLite file, both under ``AIW_DATA_DIR``. One machine,
  no server to install.
- **production** (``DATABASE_URL`` and ``CELERY_BROKER_URL`` set): PostgreSQL
  and Redis, any number of workers on any number of machines.

Setting only one of the two gives a **mixed** shape, which works but keeps the
limits of its embedded half. Nothing here connects to anything.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from app.config import Settings

EMBEDDED_BROKER_FILE = "broker.sqlite3"

# The Celery queues (workers/celery_app.py declares them; a test keeps the two equal).
QUEUES: tuple[str, ...] = ("ai_requests", "agent_runs", "webhooks", "maintenance")

# Bulkheads: each kind of work has worker processes of its own, with their own
# concurrency, so no kind can slow another (a webhook receiver that stalls for a minute
# holds webhook threads only; a slow Codegen holds agent-run threads only).
WORKER_KINDS: dict[str, tuple[str, ...]] = {
    "ai": ("ai_requests",),
    "webhooks": ("webhooks",),
    "agent-runs": ("agent_runs",),
    "maintenance": ("maintenance",),
}


def worker_concurrency(kind: str, settings: Settings) -> int:
    """Threads of one worker process of ``kind`` (``AIW_*_CONCURRENCY``)."""
    return {
        "ai": settings.aiw_worker_concurrency,
        "webhooks": settings.aiw_webhook_concurrency,
        "agent-runs": settings.aiw_agent_run_concurrency,
        "maintenance": settings.aiw_maintenance_concurrency,
    }[kind]

# What the embedded shape cannot do, checked against Celery 5.5/kombu 5.5 and Flower
# 2.0 (tests/integration/test_up.py shows the Flower half). kombu's SQL transport is
# a "virtual" transport: exchange bindings live in each process's memory and it has
# no fanout, so neither events nor broadcast commands reach another process.
EMBEDDED_BROKER_LIMITS: tuple[str, ...] = (
    "Flower shows no workers and no task history: task events and broadcast commands "
    "do not cross processes on the SQL transport (its REST API can still enqueue tasks, "
    "and /metrics and /healthcheck answer)",
    "no remote control: `celery inspect`, `celery control`, revoke and Flower's worker "
    "buttons do nothing",
    "one machine: the broker is a local SQLite file polled about once a second, so "
    "expect up to a second of queue latency; a worker killed with -9 loses its "
    "in-flight messages until the sweep (beat) publishes those jobs again",
)
EMBEDDED_DATABASE_LIMITS: tuple[str, ...] = (
    "one machine: the SQLite database allows one writer at a time; fine for a few "
    "workers' threads, not for a fleet",
)
NO_REDIS_LIMITS: tuple[str, ...] = (
    "provider cooldowns after a 429 are per worker process (no Redis to share them)",
    "rate limits (AIW_RATE_LIMITS, and those learned from the answers) are per worker "
    "process: N processes together may reach N times the limit",
)

Shape = Literal["embedded", "production", "mixed"]


def data_dir(settings: Settings) -> Path:
    """``AIW_DATA_DIR`` made absolute (and created: the first use is the one that needs it)."""
    path = settings.aiw_data_dir.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def broker_url(settings: Settings) -> str:
    """``CELERY_BROKER_URL``, else the embedded broker: kombu's SQL transport on SQLite."""
    if settings.celery_broker_url:
        return settings.celery_broker_url
    return f"sqla+sqlite:///{data_dir(settings) / EMBEDDED_BROKER_FILE}"


def is_redis_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("redis://", "rediss://", "unix://"))


def safe_url(url: str) -> str:
    """The URL without its password (``redis://:***@host/0``); safe to print or log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def is_loopback(address: str) -> bool:
    """True when ``address`` (an IP or a host name) only ever means this machine."""
    host = address.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


@dataclass(frozen=True)
class Topology:
    database_url: str
    broker_url: str
    data_dir: Path
    embedded_database: bool
    embedded_broker: bool
    shared_redis: bool

    @property
    def shape(self) -> Shape:
        if self.embedded_database and self.embedded_broker:
            return "embedded"
        if not self.embedded_database and not self.embedded_broker:
            return "production"
        return "mixed"

    def limits(self) -> list[str]:
        """What this shape cannot do, in words for the person starting it."""
        found: list[str] = []
        if self.embedded_broker:
            found += EMBEDDED_BROKER_LIMITS
        if self.embedded_database:
            found += EMBEDDED_DATABASE_LIMITS
        if not self.shared_redis:
            found += NO_REDIS_LIMITS
        return found


def topology(settings: Settings) -> Topology:
    from app.core.keys import redis_url_for
    from app.db.session import database_url

    return Topology(
        database_url=database_url(settings),
        broker_url=broker_url(settings),
        data_dir=data_dir(settings),
        embedded_database=not settings.database_url,
        embedded_broker=not settings.celery_broker_url,
        shared_redis=redis_url_for(settings) is not None,
    )
