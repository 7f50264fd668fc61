"""The rough edges of the README's tour, met as a user meets them: real ``aiw``
subprocesses (80 columns where widths matter) on a SQLite file whose jobs ran
in-process against the fake OpenAI server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from app.core.cooldown import reset_cooldowns
from app.core.publisher import set_publisher
from app.db.base import utcnow
from app.db.models import AIRequestRow
from app.db.session import dispose_engines, session_scope
from app.jobs import submit
from app.jobs.runner import reset_providers, run_job
from app.sandbox.openai_server import FakeOpenAIServer
from tests.plugins.cli import Result, clean_env, free_port, http, run_aiw

pytestmark = pytest.mark.integration


class _Publisher:
    def publish_job(self, job_id: str, *, countdown: float | None = None) -> None:
        pass

    def send_callback(self, task_name: str, args: list[object]) -> None:
        pass

    def ensure_routes(self) -> None:
        pass

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        pass


@pytest.fixture
def db(migrated_sqlite_url: str, env: Any, openai_env: FakeOpenAIServer) -> Any:
    """Jobs run here, in-process, are what the ``aiw`` subprocesses read."""
    env(DATABASE_URL=migrated_sqlite_url, PREFER_CODEGEN="false")
    set_publisher(_Publisher())
    reset_providers()
    reset_cooldowns()
    yield migrated_sqlite_url
    set_publisher(None)
    reset_providers()
    reset_cooldowns()
    dispose_engines()


def aiw(url: str, *args: str, columns: int = 80) -> Result:
    return run_aiw(
        *args, env=clean_env(DATABASE_URL=url, COLUMNS=columns), cwd=Path(url[10:]).parent
    )


def answered(prompt: str = "hello") -> uuid.UUID:
    handle = submit(prompt, model="gpt-4o-mini")
    assert run_job(handle.id).status == "succeeded"
    return handle.id


def queued_with_id(job_id: str) -> uuid.UUID:
    jid = uuid.UUID(job_id)
    now = utcnow()
    with session_scope() as session:
        session.execute(
            insert(AIRequestRow).values(
                id=jid, prompt="p", status="queued", created_at=now, updated_at=now
            )
        )
    return jid


def test_show_prints_the_tokens_of_a_stored_answer(db: str) -> None:
    job_id = answered()
    r = aiw(db, "show", str(job_id))
    assert r.code == 0, r.err
    assert "? tokens" not in r.out
    assert "tokens" in r.out
    tokens = int(r.out.split(" tokens")[0].rsplit(None, 1)[-1].strip("─╰ "))
    assert tokens > 0


def test_the_short_ids_tables_print_work_as_ids(db: str) -> None:
    job_id = answered()
    listed = aiw(db, "jobs")
    assert listed.code == 0, listed.err
    short = str(job_id)[:8]
    assert short in listed.out and str(job_id) not in listed.out  # 80 columns: the short id
    assert all(len(line) <= 80 for line in listed.out.splitlines())
    shown = aiw(db, "show", short, "--json")
    assert shown.code == 0, shown.err
    assert shown.json()["id"] == str(job_id)
    wide = aiw(db, "jobs", columns=160)
    assert str(job_id) in wide.out  # room enough: the whole id, on one line


def test_an_ambiguous_or_too_short_prefix_is_refused_clearly(db: str) -> None:
    a = queued_with_id("abcd1234-0000-4000-8000-000000000001")
    b = queued_with_id("abcd1234-ffff-4000-8000-000000000002")
    queued_with_id("abcd1235-0000-4000-8000-000000000003")
    r = aiw(db, "show", "abcd1234")
    assert r.code == 1 and "Traceback" not in r.err
    assert r.err.strip() == (
        f"aiw: ambiguous id 'abcd1234': 2 jobs start with it ({a}, {b}); give more of it"
    )
    one = aiw(db, "cancel", "abcd1234-f")
    assert one.code == 0, one.err
    assert one.out.strip() == f"{b} cancelled"
    short = aiw(db, "show", "abc")
    assert short.err.strip() == "aiw: no job 'abc': give at least 4 hex digits of the id"
    none = aiw(db, "watch", "abcd9", "--timeout", "1")
    assert none.err.strip() == "aiw: no job starting with 'abcd9'"


def test_watch_takes_an_all_digit_job_prefix(db: str) -> None:
    jid = queued_with_id("12345678-0000-4000-8000-000000000001")
    r = aiw(db, "watch", "12345678", "--json", "--timeout", "0.5")
    assert '"id": "' + str(jid) + '"' in r.out, r.err


def test_stats_shows_small_costs_whole_at_80_columns(db: str) -> None:
    answered()
    r = aiw(db, "stats")
    assert r.code == 0, r.err
    assert "…" not in r.out
    assert all(len(line) <= 80 for line in r.out.splitlines())
    assert "$0.0000" not in r.out
    cost = [c for c in r.out.split() if c.startswith("0.0")]
    assert cost and all(any(d in "123456789" for d in c) for c in cost), r.out


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", *args],
            env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _until(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200; False while nothing listens yet (Flower starting)."""
    try:
        return http(url)[0] == 200
    except OSError:  # URLError: connection refused, not up yet
        return False


def test_celery_finds_the_app_by_the_package_name(
    tmp_path: Path, redis_url: str, migrated_sqlite_url: str
) -> None:
    """``celery -A workers worker`` and ``celery -A workers flower``, Celery's convention."""
    env = clean_env(
        CELERY_BROKER_URL=redis_url, DATABASE_URL=migrated_sqlite_url, AIW_DATA_DIR=tmp_path
    )
    worker_log, flower_log = tmp_path / "worker.log", tmp_path / "flower.log"
    port = free_port()
    worker = _start(
        ["worker", "-Q", "maintenance", "--pool", "solo", "--without-gossip", "--without-mingle"],
        env,
        worker_log,
    )
    flower = _start(["flower", "--address=127.0.0.1", f"--port={port}"], env, flower_log)
    try:
        _until(worker, lambda: "ready." in worker_log.read_text(errors="replace"), worker_log)
        _until(flower, lambda: _answers(f"http://127.0.0.1:{port}/healthcheck"), flower_log)
        assert "has no attribute 'celery'" not in worker_log.read_text() + flower_log.read_text()
    finally:
        for proc in (worker, flower):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_submit_wait_with_no_worker_says_to_start_one(
    tmp_path: Path, redis_url: str, migrated_sqlite_url: str
) -> None:
    env = clean_env(CELERY_BROKER_URL=redis_url, DATABASE_URL=migrated_sqlite_url,
                    OPENAI_API_KEY="sk-test", AIW_DATA_DIR=tmp_path)  # fmt: skip
    r = run_aiw("submit", "--wait", "1", "hello", env=env, cwd=tmp_path)
    assert r.code == 1 and "Traceback" not in r.err
    assert "still queued after 1.0s" in r.err
    assert "no worker has taken it yet" in r.err and "`aiw worker`" in r.err, r.err


def test_demo_leaves_no_temporary_directory(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    r = run_aiw("demo", "--jobs", "2", env=clean_env(TMPDIR=temp), cwd=tmp_path, timeout=120)
    assert r.code == 0, r.out + r.err
    assert "demo finished" in r.out
    assert list(temp.iterdir()) == []


def test_webhook_endpoints_print_and_take_short_ids(db: str, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=db, COLUMNS=80, AIW_WEBHOOK_ALLOW_PRIVATE="true",
                    AIW_DATA_DIR=tmp_path)  # fmt: skip
    added = run_aiw("webhooks", "add", "http://127.0.0.1:9/hook", "--json", env=env, cwd=tmp_path)
    assert added.code == 0, added.err
    endpoint_id = added.json()["id"]
    listed = run_aiw("webhooks", "list", env=env, cwd=tmp_path)
    assert endpoint_id[:8] in listed.out and endpoint_id not in listed.out
    r = run_aiw("webhooks", "disable", endpoint_id[:8], env=env, cwd=tmp_path)
    assert r.code == 0, r.err
    assert endpoint_id in r.out
