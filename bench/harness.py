"""What the benchmarks share: a throwaway PostgreSQL database, a Redis db, the fake
OpenAI server, and real Celery worker processes with the same environment.

Benchmarks print figures; they assert nothing about time. Run one with
``.venv/bin/python -m bench.<name> --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp

import redis

from app.config import get_settings
from app.db import migrate
from app.db.session import dispose_engines
from app.sandbox.openai_server import FakeOpenAIServer
from tests.plugins.database import PG_HOST, PG_PORT, _admin_connect, _drop_database, _find_pg_user
from tests.plugins.services import REPO_ROOT, CeleryLauncher, CeleryProcess

BENCH_REDIS_DB = int(os.environ.get("AIW_BENCH_REDIS_DB", "13"))
# Each run makes (and drops at the end) a database named <prefix><pid>_<random>.
BENCH_DB_PREFIX = os.environ.get("AIW_BENCH_DB_PREFIX", "aiw_bench_")
if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", BENCH_DB_PREFIX):
    raise SystemExit(f"AIW_BENCH_DB_PREFIX={BENCH_DB_PREFIX!r}: lower-case letters, digits, _")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def summary_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"p50 {percentile(ms, 0.50):.2f} ms, p95 {percentile(ms, 0.95):.2f} ms, "
            f"p99 {percentile(ms, 0.99):.2f} ms, mean {statistics.fmean(ms):.2f} ms (n={len(ms)})")


@dataclass
class Bed:
    db_url: str
    broker_url: str
    openai: FakeOpenAIServer
    launcher: CeleryLauncher
    env: dict[str, str] = field(default_factory=dict)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.broker_url)

    def worker(self, **kwargs):  # type: ignore[no-untyped-def]
        return self.launcher.worker(dict(self.env), **kwargs)


def _publish_through_celery() -> Callable[[], None]:
    """Make ``app.jobs`` publish through a Celery app of this process; returns the undo.

    If ai-worker's publishing does not import (a refactor in progress), only what goes
    through ai-worker fails; the hand-written baseline still runs."""
    try:
        from app.core.publisher import set_publisher
        from workers.celery_app import create_celery_app
        from workers.publisher import CeleryPublisher
    except ImportError as exc:
        print(f"(ai-worker's publisher does not import: {exc})", flush=True)
        return lambda: None
    app = create_celery_app(get_settings())
    set_publisher(CeleryPublisher(app))

    def undo() -> None:
        set_publisher(None)
        app.close()

    return undo


@contextlib.contextmanager
def bed(openai_latency: float = 0.0, **extra_env: str) -> Iterator[Bed]:
    user, error = _find_pg_user()
    if user is None:
        raise SystemExit(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}: {error}")
    name = f"{BENCH_DB_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
    broker_url = f"redis://127.0.0.1:6379/{BENCH_REDIS_DB}"
    # Undone in reverse order, whatever fails on the way (the database is always dropped).
    with contextlib.ExitStack() as undo:
        with _admin_connect(user) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        undo.callback(_drop_database, user, name)
        db_url = f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
        redis.Redis.from_url(broker_url).flushdb()
        undo.callback(lambda: redis.Redis.from_url(broker_url).flushdb())
        fake = FakeOpenAIServer(latency=openai_latency).start()
        undo.callback(fake.stop)
        tmp = Path(mkdtemp(prefix="aiw-bench-"))
        env = {
            "DATABASE_URL": db_url,
            "CELERY_BROKER_URL": broker_url,
            "REDIS_URL": broker_url,
            "OPENAI_API_KEY": fake.api_key,
            "OPENAI_BASE_URL": fake.url,
            "PREFER_CODEGEN": "false",
            "AIW_IMPORTS": "bench.noop_tasks",
            "PYTHONPATH": str(REPO_ROOT),
            "AIW_DATA_DIR": str(tmp / "data"),
            **extra_env,
        }
        saved = {k: os.environ.get(k) for k in env}

        def restore_env() -> None:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            get_settings.cache_clear()

        os.environ.update(env)
        get_settings.cache_clear()
        undo.callback(restore_env)
        undo.callback(dispose_engines)
        migrate.upgrade(db_url)
        launcher = CeleryLauncher(tmp)
        undo.callback(launcher.stop_all)
        undo.callback(_publish_through_celery())
        yield Bed(db_url, broker_url, fake, launcher, env)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` was true; raises after ``timeout``."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not done after {timeout}s")
        time.sleep(interval)
    return time.perf_counter() - start


def answers_recorded() -> int:
    """How many answers ai-worker has recorded: its ``ai_usage`` rows, one per paid
    answer, written by the statement that ends the job. What the done-poll counts: the
    twin of the hand-written baseline's count of its answers table (narrow, insert-only),
    where counting ``ai_requests`` by status walked rows each updated twice (2 ms a
    count at 3,000 jobs against 0.6: PostgreSQL CPU charged to ai-worker by the bench)."""
    from sqlalchemy import func, select

    from app.db.models import UsageRow
    from app.db.session import session_scope

    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(UsageRow)) or 0


def jobs_succeeded() -> int:
    """How many jobs have succeeded (checked once a timed case is over)."""
    from sqlalchemy import func, select

    from app.db.models import AIRequestRow, JobStatus
    from app.db.session import session_scope

    with session_scope() as s:
        return s.scalar(
            select(func.count()).select_from(AIRequestRow)
            .where(AIRequestRow.status == JobStatus.SUCCEEDED)
        ) or 0


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Comparing cases in one run: fresh worker processes per case, their CPU and memory ----

CASES = ("noop", "handwritten", "aiworker")
CASE_LABELS = {
    "noop": "raw Celery no-op",
    "handwritten": "hand-written Celery+openai+INSERT",
    "aiworker": "ai-worker whole path",
    "aiworker-2models": "ai-worker, 2 models (429s on A)",  # bench.faults
}
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_cases(text: str) -> list[str]:
    """``--cases noop,handwritten,aiworker`` (any subset, run in that fixed order)."""
    asked = {c.strip() for c in text.split(",") if c.strip()}
    unknown = sorted(asked - set(CASES))
    if unknown or not asked:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none)'}; choose from {','.join(CASES)}"
        )
    return [c for c in CASES if c in asked]


def print_load() -> None:
    """The machine's load average at start, so a reader knows whether it was quiet."""
    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        line = ""
    if not line.strip():
        line = "load average (/proc/loadavg): " + Path("/proc/loadavg").read_text()
    print(f"uptime: {line.strip()}  ({os.cpu_count()} CPUs)", flush=True)


def _stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def session_cpu_seconds(sid: int) -> float:
    """utime+stime (+ those of reaped children) of every process of session ``sid``:
    a worker started in its own session (as the launcher does) and all its children."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(fields[3]) == sid:  # field 6: session id
            ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / _CLK_TCK


def command_cpu_seconds(comm: str) -> float:
    """utime+stime of every live process named ``comm`` (e.g. ``postgres``: the server
    and its backends; a backend that exits meanwhile takes its share with it)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                if f.read().strip() != comm:
                    continue
            fields = _stat(int(entry.name))
        except (OSError, ValueError):
            continue
        ticks += sum(int(v) for v in fields[11:13])
    return ticks / _CLK_TCK


def _others_cpu() -> tuple[float, float, float]:
    """CPU seconds so far of PostgreSQL, Redis and this process (producers, fake server)."""
    own = os.times()
    return (command_cpu_seconds("postgres"), command_cpu_seconds("redis-server"),
            own.user + own.system)


def spawn_worker(
    b: Bed, *, app: str = "workers.celery_app", concurrency: int, queues: str, name: str
) -> CeleryProcess:
    """Start a ``celery -A <app> worker`` (threads pool; ``AIW_BENCH_POOL=gevent`` to try
    gevent, after ``pip install gevent``) with the bed's environment, in
    its own session, its log under the bed's tmp dir; does not wait for it. The bed
    stops it at the end if the caller did not."""
    launcher = b.launcher
    log_path = launcher.tmp_path / f"{name.split('@')[0]}-{len(launcher.processes)}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_"))}
    env.update(b.env)
    env["PYTHONUNBUFFERED"] = "1"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO",
         "--pool", os.environ.get("AIW_BENCH_POOL", "threads"), "--concurrency", str(concurrency),
         "-Q", queues, "-n", name,
         "--without-gossip", "--without-mingle"],
        env=env,
        cwd=str(launcher.tmp_path),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process = CeleryProcess("worker", proc, log_path, log_file, env)
    launcher.processes.append(process)
    return process


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``: user, nice,
    system, irq, softirq and steal; not idle or iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _py_spy() -> str:
    """py-spy next to this Python (a venv's), else on PATH (not a dependency)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


class Workers:
    """Fresh worker processes for one case, all started at once: when the first was
    ready, their CPU seconds since each was ready (or since ``mark()``), peak RSS.

    ``wait=False`` returns at once: call ``poll_ready()`` until it is true (a drain
    measures from the first worker ready, while the others may still start)."""

    def __init__(  # type: ignore[no-untyped-def]
        self, b: Bed, count: int = 1, *, wait: bool = True, ready_timeout: float = 60,
        name: str = "bench", **kwargs,
    ) -> None:
        self.procs: list[CeleryProcess] = []
        self.name = name
        self._profilers: list[subprocess.Popen[bytes]] = []
        self.ready_at: float | None = None  # perf_counter() when the first was ready
        self._pending: list[CeleryProcess] = []
        self._cpu0 = 0.0
        self._machine0 = 0.0
        self._others0 = (0.0, 0.0, 0.0)
        self._deadline = time.monotonic() + ready_timeout
        try:
            for i in range(count):
                self.procs.append(
                    spawn_worker(b, name=f"{name}{i}-{os.getpid()}@%h", **kwargs)
                )
            self._pending = list(self.procs)
            while wait and not self.poll_ready():
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def poll_ready(self) -> bool:
        """Look at the workers not ready yet; true once all are. Raises if one exited or
        the ready timeout passed. A worker's CPU is counted from when it was seen ready."""
        for p in list(self._pending):
            if "ready." in p.log():
                self._cpu0 += session_cpu_seconds(p.proc.pid)
                self._pending.remove(p)
                if self.ready_at is None:
                    self.ready_at = time.perf_counter()
                    self._machine0 = machine_busy_seconds()
                    self._others0 = _others_cpu()
            elif p.proc.poll() is not None or time.monotonic() > self._deadline:
                raise RuntimeError(f"celery worker {p.log_path.name} did not start:\n"
                                   f"{p.log()[-4000:]}")
        return not self._pending

    @property
    def all_ready(self) -> bool:
        return not self._pending

    def cpu_total(self) -> float:
        return sum(session_cpu_seconds(p.proc.pid) for p in self.procs)

    def mark(self) -> None:
        """Start counting CPU from now (after a warm-up); with ``AIW_BENCH_PROFILE=<dir>``
        also record where each worker holds the GIL (py-spy, until ``stop``)."""
        self._cpu0 = self.cpu_total()
        self._machine0 = machine_busy_seconds()
        self._others0 = _others_cpu()
        folder = os.environ.get("AIW_BENCH_PROFILE")
        if folder and not self._profilers:
            Path(folder).mkdir(parents=True, exist_ok=True)
            for p in self.procs:
                out = Path(folder) / f"{self.name}-{p.proc.pid}.txt"
                self._profilers.append(subprocess.Popen(
                    [_py_spy(), "record", "--gil", "--nonblocking", "--format", "raw",
                     "--rate", "200", "-o", str(out), "--pid", str(p.proc.pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))  # fmt: skip

    def cpu(self) -> float:
        """CPU seconds of the worker processes and their children since ready/mark."""
        return self.cpu_total() - self._cpu0

    def machine_cpu(self) -> float:
        """Busy CPU seconds of the whole machine since ready/mark: the workers, and also
        PostgreSQL, Redis, the fake server and the producers (and anything else running:
        meaningful on a quiet machine only)."""
        return machine_busy_seconds() - self._machine0

    def others_cpu(self) -> tuple[float, float, float]:
        """CPU seconds of PostgreSQL, Redis and this process since ready/mark."""
        now = _others_cpu()
        return (now[0] - self._others0[0], now[1] - self._others0[1], now[2] - self._others0[2])

    def rss_mb(self) -> float:
        """The largest peak resident memory (VmHWM) of one worker process, MB."""
        return max(peak_rss_mb(p.proc.pid) for p in self.procs)

    def stop(self) -> None:
        for profiler in self._profilers:  # py-spy writes its file on SIGINT
            profiler.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(timeout=30)
        self._profilers.clear()
        for p in self.procs:
            p.stop()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class CaseResult:
    case: str
    jobs: int = 0
    seconds: float = float("nan")
    rate: float = float("nan")  # jobs/s as the benchmark defines it
    ideal: float | None = None  # jobs/s, where there is one
    cpu_s: float = float("nan")  # worker CPU seconds over the measured jobs
    rss_mb: float = float("nan")
    note: str = ""
    machine_cpu_s: float = float("nan")  # the whole machine's busy CPU seconds meanwhile
    # CPU seconds meanwhile of PostgreSQL, Redis, and the benchmark process itself (its
    # producer threads and the fake OpenAI server)
    others_cpu_s: tuple[float, float, float] = (float("nan"),) * 3
    error: str | None = None


def run_case(case: str, fn: Callable[[], CaseResult]) -> CaseResult:
    """Run one case; a failure is reported in the table, the other cases still run."""
    print(f"-- {CASE_LABELS[case]} ...", flush=True)
    try:
        return fn()
    except Exception as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [""]
        print(f"   failed: {type(exc).__name__}: {lines[0][:200]}", flush=True)
        if len(lines) > 1:
            print(f"   ... {lines[-1].strip()[:200]}", flush=True)
        return CaseResult(case, error=f"{type(exc).__name__}")


def print_table(
    results: Sequence[CaseResult], note_header: str = "", noop_ratio: bool = True
) -> None:
    head = (f"{'case':<34} {'jobs':>6} {'seconds':>8} {'jobs/s':>8} {'% ideal':>8} "
            f"{'CPU ms/job':>11} {'machine ms/job':>15} {'peak RSS MB':>12}  {note_header}")
    print(head.rstrip())
    print("-" * len(head.rstrip()))
    for r in results:
        label = CASE_LABELS[r.case]
        if r.error is not None:
            print(f"{label:<34} failed ({r.error})")
            continue
        ideal = f"{100 * r.rate / r.ideal:7.0f}%" if r.ideal else f"{'-':>8}"
        cpu_ms = 1000 * r.cpu_s / r.jobs if r.jobs else float("nan")
        machine_ms = 1000 * r.machine_cpu_s / r.jobs if r.jobs else float("nan")
        print(f"{label:<34} {r.jobs:>6} {r.seconds:>8.2f} {r.rate:>8.1f} {ideal} "
              f"{cpu_ms:>11.2f} {machine_ms:>15.2f} {r.rss_mb:>12.0f}  {r.note}".rstrip())
    for r in results:
        if r.error is None and r.jobs and r.others_cpu_s[0] == r.others_cpu_s[0]:
            pg, rd, own = (1000 * v / r.jobs for v in r.others_cpu_s)
            print(f"  {CASE_LABELS[r.case]:<32} ms/job: workers {1000 * r.cpu_s / r.jobs:.2f}, "
                  f"postgres {pg:.2f}, redis {rd:.2f}, producers+fake server {own:.2f}")
    by = {r.case: r for r in results if r.error is None}
    if "aiworker" in by and "handwritten" in by:
        aiw, hand = by["aiworker"], by["handwritten"]
        cpu = ((aiw.cpu_s / aiw.jobs) / (hand.cpu_s / hand.jobs)
               if hand.cpu_s > 0 else float("nan"))
        print(f"ratio ai-worker / hand-written: jobs/s {aiw.rate / hand.rate:.2f}, "
              f"CPU per job {cpu:.2f}")
    if noop_ratio and "aiworker" in by and "noop" in by:
        print(f"ratio ai-worker / raw no-op   : jobs/s {by['aiworker'].rate / by['noop'].rate:.2f}")
