"""What the benchmarks share: a throwaway PostgreSQL database, a Redis db, the fake
OpenAI server, and real Celery worker processes with the same environment.

Benchmarks print figures; they assert nothing about time. Run one with
``.venv/bin/python -m bench.<name> --help``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp

import redis

from app.config import get_settings
from app.db import migrate
from app.db.session import dispose_engines
from app.jobs.publisher import set_publisher
from app.sandbox.openai_server import FakeOpenAIServer
from tests.plugins.database import PG_HOST, PG_PORT, _admin_connect, _drop_database, _find_pg_user
from tests.plugins.services import REPO_ROOT, CeleryLauncher

BENCH_REDIS_DB = int(os.environ.get("AIW_BENCH_REDIS_DB", "13"))


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


@contextlib.contextmanager
def bed(openai_latency: float = 0.0, **extra_env: str) -> Iterator[Bed]:
    user, error = _find_pg_user()
    if user is None:
        raise SystemExit(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}: {error}")
    name = f"aiw_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with _admin_connect(user) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db_url = f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    broker_url = f"redis://127.0.0.1:6379/{BENCH_REDIS_DB}"
    redis.Redis.from_url(broker_url).flushdb()
    fake = FakeOpenAIServer(latency=openai_latency).start()
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
    os.environ.update(env)
    get_settings.cache_clear()
    migrate.upgrade(db_url)
    launcher = CeleryLauncher(tmp)
    from workers.celery_app import create_celery_app
    from workers.publisher import CeleryPublisher

    app = create_celery_app(get_settings())
    set_publisher(CeleryPublisher(app))
    try:
        yield Bed(db_url, broker_url, fake, launcher, env)
    finally:
        set_publisher(None)
        app.close()
        launcher.stop_all()
        fake.stop()
        dispose_engines()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        redis.Redis.from_url(broker_url).flushdb()
        _drop_database(user, name)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``predicate()`` was true; raises after ``timeout``."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not done after {timeout}s")
        time.sleep(interval)
    return time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
