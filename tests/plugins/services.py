"""Real services for integration tests: Redis db numbers, Celery worker and beat
processes, and a TCP proxy that can cut a connection on purpose.

The worker and beat are real ``celery`` processes started with the test's
environment (a fresh PostgreSQL database, a Redis db of the tests' own, the fake
providers on loopback). Their logs go to files under the test's tmp dir and are
printed when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# Redis db numbers the tests own (flushed before and after use). Override with
# AIW_TEST_REDIS_DBS="12,13" if these collide with something on the machine.
TEST_REDIS_DBS = [int(n) for n in os.environ.get("AIW_TEST_REDIS_DBS", "11,12").split(",")]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _redis_client(db: int):  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=5)


def _ensure_redis() -> None:
    client = _redis_client(0)
    try:
        client.ping()
        return
    except Exception:
        pass
    subprocess.run(
        "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
        shell=True,
        check=False,
    )
    for _ in range(50):
        try:
            client.ping()
            return
        except Exception:
            time.sleep(0.1)
    pytest.skip("Redis is not reachable on 127.0.0.1:6379 and could not be started")


@pytest.fixture
def redis_db() -> Iterator[int]:
    """A Redis db number of the tests' own, empty at start, flushed at the end."""
    _ensure_redis()
    db = TEST_REDIS_DBS[0]
    client = _redis_client(db)
    client.flushdb()
    yield db
    client.flushdb()


@pytest.fixture
def redis_url(redis_db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"


@dataclass
class CeleryProcess:
    """A running ``celery`` worker or beat process."""

    kind: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: Any = field(repr=False, default=None)
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def _closed(self) -> None:
        if self.log_file is not None:
            self.log_file.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._closed()

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._closed()


class CeleryLauncher:
    """Starts worker/beat processes with a given environment; stops them all at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[CeleryProcess] = []

    def _spawn(self, kind: str, args: list[str], env: dict[str, str]) -> CeleryProcess:
        n = len(self.processes)
        log_path = self.tmp_path / f"{kind}-{n}.log"
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_"))
        }
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.setdefault("AIW_DATA_DIR", str(self.tmp_path / "data"))
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args],
            env=full_env,
            cwd=str(self.tmp_path),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill9 takes the pool too
        )
        process = CeleryProcess(kind, proc, log_path, log_file, full_env)
        self.processes.append(process)
        return process

    def worker(
        self,
        env: dict[str, str],
        *,
        concurrency: int = 8,
        pool: str = "threads",
        queues: str = "ai_requests,agent_runs,webhooks,maintenance",
        name: str | None = None,
        ready_timeout: float = 30,
    ) -> CeleryProcess:
        n = len(self.processes)
        process = self._spawn(
            "worker",
            [
                "worker",
                "--loglevel",
                "INFO",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "-Q",
                queues,
                "-n",
                name or f"test{n}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            env,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if "ready." in process.log():
                return process
            if process.proc.poll() is not None:
                break
            time.sleep(0.1)
        process.stop()
        raise RuntimeError(f"celery worker did not start:\n{process.log()[-4000:]}")

    def beat(self, env: dict[str, str]) -> CeleryProcess:
        n = len(self.processes)
        schedule = self.tmp_path / f"beat-schedule-{n}"
        return self._spawn(
            "beat", ["beat", "--loglevel", "INFO", "-s", str(schedule), "--max-interval", "1"], env
        )

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


@pytest.fixture
def celery_processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[CeleryLauncher]:
    launcher = CeleryLauncher(tmp_path)
    yield launcher
    launcher.stop_all()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for process in launcher.processes:
            sys.stderr.write(f"\n----- {process.kind} log ({process.log_path}) -----\n")
            sys.stderr.write(process.log()[-6000:])


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


class TcpProxy:
    """A loopback TCP proxy whose link can be cut (``down()``) and restored (``up()``).

    Used to make PostgreSQL "briefly unreachable" for a worker without stopping the
    server every other test shares. ``stall()`` is the nastier fault: connections stay
    open (new ones are accepted too) but no byte crosses, as in a network partition
    behind a middlebox; ``up()`` ends it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._stalled = threading.Event()
        self._held: list[socket.socket] = []
        self._closed = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()  # refuse while down
                continue
            if self._stalled.is_set():
                with self._lock:
                    self._held.append(client)  # accepted, never answered
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while self._up.is_set():
                if self._stalled.is_set():
                    time.sleep(0.05)  # bytes wait in the kernel's buffers, unforwarded
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.2)
                if self._stalled.is_set():
                    continue  # stalled while waiting: what arrived stays unforwarded
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):  # ValueError: a socket closed by down()
            pass
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def down(self) -> None:
        """Cut every open connection and refuse new ones."""
        self._up.clear()
        with self._lock:
            for sock in self._conns:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            self._conns.clear()

    def stall(self) -> None:
        """Keep every connection open, accept new ones, forward nothing."""
        self._stalled.set()

    def up(self) -> None:
        self._stalled.clear()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.down()
        self.up()  # closes what a stall held
        self._up.clear()
        self._listener.close()
