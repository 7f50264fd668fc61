"""Running the processes: the command lines of worker, beat, Flower and the metrics
exporter, and the supervisor behind ``aiw up``.

``app`` never imports Celery: every Celery process is a child started as
``python -m celery -A workers.celery_app ...``.

The supervisor starts each child in a process group of its own (so a Ctrl-C in
the terminal reaches ``aiw up`` alone, and stopping a child takes its pool
processes with it), prefixes and streams their output, and on SIGINT/SIGTERM
stops them in order:

1. beat first (no new sweeps), Flower and the exporter with SIGTERM;
2. the worker with SIGTERM: Celery's warm shutdown takes no new message, lets
   the running tasks finish for up to ``grace`` seconds, and gives every message
   it holds but has not started (prefetched, countdowns) back to the broker;
3. past ``grace``, SIGQUIT: the cold shutdown gives running tasks
   ``worker_soft_shutdown_timeout`` (10 s) more, then stops them; their messages
   are not acknowledged (``task_acks_late``) and go back to the broker, and the
   job rows (the source of truth) are picked up again by the sweep in any case;
4. last, SIGKILL to whatever is left in each child's process group.

A second Ctrl-C skips to step 3, a third to step 4. On Linux each child also
gets SIGTERM if ``aiw up`` itself dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the supervisor leaves no orphan for long.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from app.topology import QUEUES, WORKER_KINDS, is_loopback, worker_concurrency

if TYPE_CHECKING:
    from app.config import Settings

CELERY_APP = "workers.celery_app"
FLOWER_AUTH_FILE = "flower-auth"
FLOWER_DEFAULT_USER = "aiw"


class RuntimeStartError(RuntimeError):
    """A process cannot be started as asked (missing auth, unreachable broker, port...)."""


# --- command lines ---------------------------------------------------------------------


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", CELERY_APP, *args]


def worker_argv(
    settings: Settings,
    *,
    embedded_broker: bool,
    queues: Iterable[str] = QUEUES,
    name: str | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    args = ["worker", "-Q", ",".join(queues), "--loglevel", settings.log_level]
    if name:
        args += ["-n", name]
    if embedded_broker:
        # Gossip and mingle talk over broadcast, which the SQL transport does not carry.
        args += ["--without-gossip", "--without-mingle"]
    return celery_argv(*args, *extra)


def add_workers(
    sup: Supervisor,
    settings: Settings,
    env: Mapping[str, str],
    *,
    embedded_broker: bool,
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
                embedded_broker=embedded_broker,
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


# --- the supervisor --------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


COLORS = ("cyan", "magenta", "yellow", "green", "blue")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_marker: str | None = None  # a line fragment that says the process is ready
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


class Supervisor:
    """Start children, stream their output with a prefix, stop them all on a signal."""

    def __init__(
        self,
        out: IO[str] | None = None,
        *,
        grace: float = 30.0,
        color: bool | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.grace = grace
        self.children: list[Child] = []
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._signals = 0
        self._color = self.out.isatty() if color is None else color
        self._on_ready = on_ready
        self._width = 7

    # output ------------------------------------------------------------------------
    def _prefix(self, name: str, index: int) -> str:
        label = f"{name:<{self._width}}|"
        if not self._color:
            return label
        import click

        return click.style(label, fg=COLORS[index % len(COLORS)])

    def say(self, message: str) -> None:
        """A line of the supervisor's own, prefixed ``aiw``."""
        label = f"{'aiw':<{self._width}}|"
        if self._color:
            import click

            label = click.style(label, bold=True)
        with self._write_lock:
            for line in message.splitlines() or [""]:
                self.out.write(f"{label} {line}\n")
            self.out.flush()

    def _stream(self, child: Child, index: int) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        prefix = self._prefix(child.name, index)
        for raw in iter(child.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if child.ready_marker and not child.ready.is_set() and child.ready_marker in line:
                child.ready.set()
            with self._write_lock:
                self.out.write(f"{prefix} {line}\n")
                self.out.flush()
        child.proc.stdout.close()

    # lifecycle ---------------------------------------------------------------------
    def add(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        *,
        ready_marker: str | None = None,
    ) -> Child:
        child = Child(name, argv, {**env, "PYTHONUNBUFFERED": "1"}, ready_marker)
        if ready_marker is None:
            child.ready.set()
        self.children.append(child)
        self._width = max(self._width, len(name) + 1)
        return child

    def start(self) -> None:
        """Start every child (all forks first, then the reader threads)."""
        for child in self.children:
            try:
                child.proc = subprocess.Popen(
                    child.argv,
                    env=child.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    process_group=0,
                    preexec_fn=_die_with_parent if _libc is not None else None,
                )
            except OSError as exc:
                self.stop()
                raise RuntimeStartError(f"cannot start {child.name}: {exc}") from exc
        for index, child in enumerate(self.children):
            child.reader = threading.Thread(
                target=self._stream, args=(child, index), name=f"log-{child.name}", daemon=True
            )
            child.reader.start()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: object) -> None:
            self._signals += 1
            self._stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def request_stop(self) -> None:
        self._signals += 1
        self._stop.set()

    def wait(self) -> int:
        """Block until a signal (0) or until a child exits on its own (1)."""
        announced = False
        while not self._stop.is_set():
            for child in self.children:
                if not child.running:
                    code = child.proc.returncode if child.proc else None
                    self.say(f"{child.name} exited on its own (status {code}); stopping the rest")
                    self.stop()
                    return 1
            if not announced and all(c.ready.is_set() for c in self.children):
                announced = True
                if self._on_ready is not None:
                    self._on_ready()
            self._stop.wait(0.2)
        self.stop()
        return 0

    def _wait_for(self, children: list[Child], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not any(c.running for c in children):
                return True
            time.sleep(0.1)
        return not any(c.running for c in children)

    def _escalations(self) -> int:
        """How many extra stop requests came after the first."""
        return max(0, self._signals - 1)

    def stop(self) -> None:
        """Stop every child in order (see the module docstring); leaves nothing running."""
        self._stop.set()
        worker = [c for c in self.children if c.name.startswith("worker") and c.running]
        others = [c for c in self.children if not c.name.startswith("worker") and c.running]
        beat = [c for c in others if c.name == "beat"]
        for child in beat:
            child.signal_group(child.stop_signal)
        self._wait_for(beat, 5)
        for child in [*others, *worker]:
            child.signal_group(child.stop_signal)
        if worker:
            self.say(
                f"stopping: the worker finishes its running tasks (up to {self.grace:g}s) and "
                "hands every other message back to the broker; Ctrl-C again to hurry it"
            )
            if not self._wait_until(worker, self.grace, escalate_after=1):
                self.say("worker still busy: cold shutdown, running tasks go back to the broker")
                for child in worker:
                    child.signal_group(signal.SIGQUIT)
                self._wait_until(worker, 20, escalate_after=2)
        self._wait_for(others, 10)
        for child in self.children:
            if child.running:
                self.say(f"{child.name} did not stop: killing its process group")
            child.signal_group(signal.SIGKILL)  # stragglers of the group, if any
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=10)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=5)

    def _wait_until(self, children: list[Child], seconds: float, *, escalate_after: int) -> bool:
        """Wait for ``children`` to exit; returns early (False) on an extra Ctrl-C."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not any(c.running for c in children):
                return True
            if self._escalations() >= escalate_after:
                return False
            time.sleep(0.1)
        return not any(c.running for c in children)


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
    from app.topology import is_redis_url, safe_url

    if not is_redis_url(url):
        return
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RuntimeStartError(
            f"broker unreachable: {safe_url(url)} ({type(exc).__name__}: {exc})"
        ) from None


def check_port(address: str, port: int, what: str, option: str) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise RuntimeStartError(f"{what}: cannot use address {address!r}: {exc}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
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
    from app.topology import safe_url, topology

    out = out or sys.stdout
    topo = topology(settings)
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
    add_workers(sup, settings, env, embedded_broker=topo.embedded_broker,
                ai_concurrency=options.concurrency)  # fmt: skip
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
        "embedded": "embedded (no DATABASE_URL, no CELERY_BROKER_URL: SQLite files, one machine)",
        "production": "production (DATABASE_URL and CELERY_BROKER_URL)",
        "mixed": "mixed (only one of DATABASE_URL / CELERY_BROKER_URL is set)",
    }[topo.shape]
    lines = [
        f"mode      {shape}",
        f"database  {safe_url(topo.database_url)} (schema at {revision})",
        f"broker    {safe_url(topo.broker_url)}",
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
