"""A database or broker that accepts connections and then says nothing (a partition
behind a middlebox, a paused VM) must not hang ``aiw submit``: the command ends within
its deadlines (``AIW_CONNECT_TIMEOUT``, ``AIW_READ_TIMEOUT``) with the documented
outcome. The stall is a real TCP proxy in front of the real servers (``TcpProxy.stall``).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine, func, select

from app.db.models import AIRequestRow
from tests.plugins.cli import Result, clean_env, run_aiw
from tests.plugins.services import TcpProxy

pytestmark = pytest.mark.integration

# A stalled server is given up after these; the command itself gets 30 s to prove
# it does not hang (it waited forever before the deadlines existed).
DEADLINES = {"AIW_CONNECT_TIMEOUT": "2", "AIW_READ_TIMEOUT": "2"}
HANG = 30


@pytest.fixture
def proxies(migrated_pg_url: str) -> Iterator[tuple[TcpProxy, TcpProxy]]:
    pg = urlsplit(migrated_pg_url)
    pg_proxy = TcpProxy(pg.hostname or "127.0.0.1", pg.port or 5432)
    redis_proxy = TcpProxy("127.0.0.1", 6379)
    yield pg_proxy, redis_proxy
    pg_proxy.close()
    redis_proxy.close()


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _submit(
    tmp_path: Path, database_url: str, broker_url: str, prompt: str
) -> tuple[Result, float]:
    env = clean_env(
        AIW_DATA_DIR=tmp_path / "data",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        OPENAI_API_KEY="sk-test-stalls",
        **DEADLINES,
    )
    t0 = time.monotonic()
    result = run_aiw("submit", prompt, "--json", env=env, cwd=tmp_path, timeout=HANG)
    return result, time.monotonic() - t0


def _jobs_with(migrated_pg_url: str, prompt: str) -> int:
    engine = create_engine(migrated_pg_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(AIRequestRow)
                    .where(AIRequestRow.prompt == prompt)
                )
                or 0
            )
    finally:
        engine.dispose()


def test_a_silent_broker_still_accepts_the_job_warns_and_exits_3(
    tmp_path: Path, migrated_pg_url: str, redis_db: int, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    _, redis_proxy = proxies
    redis_proxy.stall()
    prompt = f"kept through a silent broker {uuid.uuid4()}"
    r, took = _submit(
        tmp_path, migrated_pg_url, f"redis://127.0.0.1:{redis_proxy.port}/{redis_db}", prompt
    )
    assert r.code == 3, (r.code, r.err)
    (warning,) = r.err.strip().splitlines()
    assert warning.startswith("aiw: warning: broker unreachable"), warning
    assert r.json()["status"] == "queued"
    assert _jobs_with(migrated_pg_url, prompt) == 1  # accepted: the sweep publishes it
    print(f"silent broker: aiw submit answered in {took:.1f} s")


def test_a_silent_database_is_one_line_and_writes_nothing(
    tmp_path: Path, migrated_pg_url: str, redis_db: int, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    pg_proxy, _ = proxies
    pg_proxy.stall()
    prompt = f"never half-written {uuid.uuid4()}"
    r, took = _submit(
        tmp_path,
        _through(migrated_pg_url, pg_proxy.port),
        f"redis://127.0.0.1:6379/{redis_db}",
        prompt,
    )
    assert r.code == 1, (r.code, r.err)
    assert "Traceback" not in r.out + r.err
    (line,) = r.err.strip().splitlines()
    assert line.startswith("aiw: database unreachable"), line
    pg_proxy.up()
    assert _jobs_with(migrated_pg_url, prompt) == 0
    print(f"silent database: aiw submit answered in {took:.1f} s")


_SUBMIT_TWICE = """
import sys
from app.jobs import submit
submit("warm: the connection is in the pool now")
print("ready", flush=True)
sys.stdin.readline()  # the test stalls the link meanwhile
try:
    submit(sys.argv[1])
except Exception as exc:
    print("raised", type(exc).__name__, str(exc).splitlines()[0], flush=True)
else:
    print("returned", flush=True)
"""


def test_a_database_gone_silent_under_an_open_connection_fails_submit_not_hangs(
    tmp_path: Path, migrated_pg_url: str, redis_db: int, proxies: tuple[TcpProxy, TcpProxy]
) -> None:
    pg_proxy, _ = proxies
    prompt = f"silent under an open connection {uuid.uuid4()}"
    env = clean_env(
        AIW_DATA_DIR=tmp_path / "data",
        DATABASE_URL=_through(migrated_pg_url, pg_proxy.port),
        CELERY_BROKER_URL=f"redis://127.0.0.1:6379/{redis_db}",
        OPENAI_API_KEY="sk-test-stalls",
        AIW_STATEMENT_TIMEOUT="2",
        **DEADLINES,
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUBMIT_TWICE, prompt],
        env=env, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        pg_proxy.stall()  # the pooled connection stays open; nothing comes back
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=HANG)
    finally:
        proc.kill()
    assert out.startswith("raised OperationalError"), out
    assert "no answer from PostgreSQL within" in out
    # The partition ends with the link cut (what it held is lost): nothing was written.
    # Had the held bytes reached the server after all, the job would be there whole
    # (one statement): the README tells callers to retry with an idempotency_key.
    pg_proxy.down()
    pg_proxy.up()
    assert _jobs_with(migrated_pg_url, prompt) == 0
