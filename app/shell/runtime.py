"""Running the processes: the command lines of worker, beat, Flower and the metrics
exporter, and ``aiw up`` (on the supervisor of ``app.shell.supervisor``; in the embedded
shape with the broker of ``app.shell.embedded_server`` as its first child).

``app`` never imports Celery: every Celery process is a child started as
``python -m celery -A workers.celery_app ...``.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

# Re-exported: the commands import them from here.
from app.shell.supervisor import RuntimeStartError as RuntimeStartError
from app.shell.supervisor import Supervisor as Supervisor
from app.shell.topology import QUEUES, WORKER_KINDS, is_loopback, worker_concurrency

if TYPE_CHECKING:
    from app.config import Settings

CELERY_APP = "workers.celery_app"
FLOWER_AUTH_FILE = "flower-auth"
FLOWER_DEFAULT_USER = "aiw"


# --- command lines ---------------------------------------------------------------------


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


def worker_argv(
    settings: Settings,
    *,
    queues: Iterable[str] = QUEUES,
    name: str | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    args = ["worker", "-Q", ",".join(queues), "--loglevel", settings.log_level]
    if name:
        args += ["-n", name]
    return celery_argv(*args, *extra)


def add_workers(
    sup: Supervisor,
    settings: Settings,
    env: Mapping[str, str],
    *,
    ai_concurrency: int | None = None,
    extra: Iterable[str] = (),
) -> None:
    """One worker process per kind of work (``topology.WORKER_KINDS``), each with its own
    queue and concurrency: the bulkheads."""
    for kind, queues in WORKER_KINDS.items():
        threads = worker_concurrency(kind, settings)
        if kind == "ai" and ai_concurrency is not None:
            threads = ai_concurrency
        sup.add(
            f"worker-{kind}",
            worker_argv(
                settings,
                queues=queues,
                name=f"{kind}@%h",
                extra=["--concurrency", str(threads), *extra],
            ),
            env,
            ready_marker=" ready.",
        )


def beat_argv(settings: Settings, data: Path, extra: Iterable[str] = ()) -> list[str]:
    return celery_argv(
        "beat", "--loglevel", settings.log_level, "-s", str(data / "celerybeat-schedule"), *extra
    )


def flower_argv(address: str, port: int, extra: Iterable[str] = ()) -> list[str]:
    # The login travels in the environment (FLOWER_BASIC_AUTH), never on the command
    # line, where `ps` would show it.
    return celery_argv(
        "flower", f"--address={address}", f"--port={port}", "--purge_offline_workers=300", *extra
    )


def metrics_argv(address: str, port: int) -> list[str]:
    return [sys.executable, "-m", "app.cli", "metrics", "--address", address, "--port", str(port)]


# --- Flower's login ----------------------------------------------------------------------


@dataclass(frozen=True)
class FlowerAuth:
    """How Flower is protected: ``basic_auth`` (``user:password``) or, on purpose, nothing."""

    basic_auth: str | None
    source: str  # where the login comes from, for the banner (never the password itself)

    @property
    def user(self) -> str | None:
        return None if self.basic_auth is None else self.basic_auth.split(":", 1)[0]

    def env(self) -> dict[str, str]:
        if self.basic_auth is None:
            # Flower's REST API answers 401 without a login unless this is set.
            return {"FLOWER_UNAUTHENTICATED_API": "true"}
        return {"FLOWER_BASIC_AUTH": self.basic_auth}


def flower_auth(
    settings: Settings,
    address: str,
    *,
    unauthenticated: bool = False,
    generate_in: Path | None = None,
) -> FlowerAuth:
    """Decide Flower's login, or refuse.

    ``FLOWER_BASIC_AUTH`` wins. Without it: ``generate_in`` (``aiw up``) makes a
    random password once and keeps it in ``<data dir>/flower-auth`` (mode 0600);
    otherwise ``unauthenticated=True`` is required, and only on a loopback address.
    """
    if settings.flower_basic_auth is not None:
        return FlowerAuth(settings.flower_basic_auth.get_secret_value(), "FLOWER_BASIC_AUTH")
    if unauthenticated:
        if not is_loopback(address):
            raise RuntimeStartError(
                f"refusing to serve Flower without a login on {address}, which is not a "
                "loopback address: set FLOWER_BASIC_AUTH=user:password"
            )
        return FlowerAuth(None, "none (--unauthenticated, loopback only)")
    if generate_in is not None:
        path = generate_in / FLOWER_AUTH_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f"{FLOWER_DEFAULT_USER}:{secrets.token_urlsafe(18)}\n")
        value = path.read_text().strip()
        user, sep, password = value.partition(":")
        if not (sep and user and password):
            raise RuntimeStartError(f"{path} must hold one line user:password")
        return FlowerAuth(value, f"password in {path}")
    raise RuntimeStartError(
        "Flower needs a login: set FLOWER_BASIC_AUTH=user:password "
        "(or pass --unauthenticated, accepted on a loopback address only)"
    )


# --- aiw up ------------------------------------------------------------------------------


@dataclass
class UpOptions:
    flower: bool = True
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    unauthenticated: bool = False
    metrics: bool = True
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9808
    beat: bool = True
    grace: float = 30.0
    concurrency: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # extra banner lines (e.g. the sandbox)


def check_broker(url: str, timeout: float = 3.0) -> None:
    """Fail now, in one line, if a Redis broker does not answer (Celery would retry forever)."""
    from app.core.embedded_broker import client_url
    from app.shell.topology import is_redis_url, safe_url

    if not is_redis_url(url):
        return
    import redis

    try:
        client = redis.Redis.from_url(
            client_url(url), socket_connect_timeout=timeout, socket_timeout=timeout
        )
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        hint = (
            "; the embedded broker runs while `aiw up` runs: start it, or set CELERY_BROKER_URL"
            if url.startswith("redis+socket://")
            else ""
        )
        raise RuntimeStartError(
            f"broker unreachable: {safe_url(url)} ({type(exc).__name__}: {exc}){hint}"
        ) from None


def check_port(address: str, port: int, what: str, option: str) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RuntimeStartError(f"{what}: cannot use address {address!r}: {exc}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the servers bind (Flower's tornado, the exporter, the test servers): a port
        # whose last sockets linger in TIME-WAIT after a clean stop is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError:
            raise RuntimeStartError(
                f"{what}: port {port} on {address} is in use; choose another with {option}"
            ) from None


def up(settings: Settings, options: UpOptions, out: IO[str] | None = None) -> int:
    """Migrate, start worker/beat/Flower/exporter, stream logs, stop cleanly. Exit status."""
    from app.ai.factory import get_provider_status
    from app.db.migrate import current, upgrade
    from app.shell.topology import safe_url, topology

    out = out or sys.stdout
    topo = topology(settings)
    broker_argv: list[str] | None = None
    if topo.embedded_broker:
        from app.shell.embedded_server import prepare

        broker_argv = prepare(settings)  # started below, before everything else
    else:
        check_broker(topo.broker_url)
    auth = (
        flower_auth(
            settings,
            options.flower_address,
            unauthenticated=options.unauthenticated,
            generate_in=topo.data_dir,
        )
        if options.flower
        else None
    )
    if options.flower:
        check_port(options.flower_address, options.flower_port, "Flower", "--flower-port")
    if options.metrics:
        check_port(options.metrics_address, options.metrics_port, "metrics", "--metrics-port")
    upgrade()
    revision = current()
    from app.webhooks.crypto import key_problems, key_warning

    key_warnings = [*key_problems(settings), *filter(None, [key_warning(settings)])]

    env = {**os.environ, **options.extra_env, "AIW_DATA_DIR": str(topo.data_dir)}
    ready_hint = 'try: aiw submit "Hello" --wait 60'

    sup = Supervisor(out, grace=options.grace, on_ready=lambda: sup.say(f"ready; {ready_hint}"))
    broker_note = ""
    if broker_argv is not None:
        from app.shell.embedded_server import READY_MARKER, version

        sup.add("broker", broker_argv, env, ready_marker=READY_MARKER, first=True)
        broker_note = (
            f" ({version(broker_argv[0])}, embedded; append-only file in "
            f"{Path(broker_argv[1]).parent})"
        )
    add_workers(sup, settings, env, ai_concurrency=options.concurrency)
    if options.beat:
        sup.add("beat", beat_argv(settings, topo.data_dir), env)
    flower_url = f"http://{_host_for_url(options.flower_address)}:{options.flower_port}"
    if auth is not None:
        sup.add(
            "flower",
            flower_argv(options.flower_address, options.flower_port),
            {**env, **auth.env()},
            ready_marker="Visit me at",
        )
    metrics_url = f"http://{_host_for_url(options.metrics_address)}:{options.metrics_port}/metrics"
    if options.metrics:
        sup.add(
            "metrics",
            metrics_argv(options.metrics_address, options.metrics_port),
            env,
            ready_marker="serving metrics",
        )

    providers = get_provider_status(settings=settings)
    usable = [
        f"{name} ({entry.get('base_url')})"
        for name, entry in providers["providers"].items()
        if entry["configured"]
    ]
    shape = {
        "embedded": "embedded (no DATABASE_URL, no CELERY_BROKER_URL: a SQLite database and "
        "an embedded Redis-protocol broker, one machine)",
        "production": "production (DATABASE_URL and CELERY_BROKER_URL)",
        "mixed": "mixed (only one of DATABASE_URL / CELERY_BROKER_URL is set)",
    }[topo.shape]
    lines = [
        f"mode      {shape}",
        f"database  {safe_url(topo.database_url)} (schema at {revision})",
        f"broker    {safe_url(topo.broker_url)}{broker_note}",
        f"data dir  {topo.data_dir}",
    ]
    if auth is not None:
        login = f"login {auth.user}, {auth.source}" if auth.user else "NO LOGIN (loopback only)"
        lines.append(f"flower    {flower_url}  {login}")
    if options.metrics:
        lines.append(f"metrics   {metrics_url}  (Flower's own: {flower_url}/metrics)")
    lines.append(
        "providers "
        + (
            ", ".join(usable)
            if usable
            else "NONE configured: jobs will fail; set OPENAI_API_KEY, or run `aiw up --sandbox`"
        )
    )
    lines += options.notes
    lines += [f"warning: {problem}" for problem in key_warnings]
    limits = topo.limits()
    if limits:
        lines.append(f"the {topo.shape} mode cannot do everything:")
        lines += [f"  - {limit}" for limit in limits]
    lines.append("Ctrl-C stops everything cleanly (twice to hurry the worker).")
    sup.say("\n".join(lines))

    sup.install_signal_handlers()
    sup.start()
    code = sup.wait()
    sup.say("stopped" if code == 0 else "stopped after a failure")
    return code


def _host_for_url(address: str) -> str:
    if address in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{address}]" if ":" in address else address
