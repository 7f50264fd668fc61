"""``kill -9`` of the embedded mode's AI worker with calls in flight and jobs queued in the
embedded broker: ``aiw up`` stops the rest, the next ``aiw up`` finishes every job, each
exactly once. The real command line and processes, the fake OpenAI server over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select

from app.db.models import AttemptOutcome, AttemptRow
from app.sandbox.openai_server import FakeOpenAIServer
from tests.integration.test_up import openai, succeeded_attempts, up_env, wait_until
from tests.plugins.cli import UpLauncher, descendants

pytestmark = pytest.mark.integration
QUICK = ("--no-flower", "--no-metrics", "--grace", "5")  # beat stays: the sweep
__all__ = ["openai"]  # the fixture


def ai_worker_pid(up_pid: int) -> int:
    for pid in descendants(up_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and b"ai@%h" in argv:
            return pid
    raise AssertionError("no AI worker process under aiw up")


def test_kill_9_of_the_embedded_worker_loses_no_job(
    aiw_up: UpLauncher, openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    env = up_env(tmp_path, openai, AIW_LEASE=3, AIW_HEARTBEAT_INTERVAL=1,
                 AIW_REPUBLISH_AFTER=5)  # fmt: skip
    db_url = f"sqlite:///{tmp_path / 'data' / 'aiw.sqlite3'}"
    up = aiw_up.start(env, *QUICK)
    openai.latency = 3.0
    script = (
        "from app.jobs import submit\n"
        "for n in range(12): print(submit(f'in flight {n}').id)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=up.env, cwd=up.cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 12
    wait_until(lambda: len(openai.chat_requests()) >= 4, 30, "four calls in flight")
    socket = tmp_path / "data" / "broker" / "valkey.sock"
    broker = redis.Redis(unix_socket_path=str(socket))
    # kombu keeps a priority step's messages in a list of its own ("<queue>\x06\x16<step>").
    waiting = sum(broker.llen(q) for q in broker.keys("ai_requests*") if broker.type(q) == b"list")

    os.kill(ai_worker_pid(up.proc.pid), signal.SIGKILL)
    assert up.proc.wait(timeout=90) == 1  # aiw up stops the rest on a dead child
    assert "worker-ai exited on its own" in up.output
    statuses, _ = succeeded_attempts(db_url)
    unfinished = [i for i in ids if statuses[i] != "succeeded"]
    assert len(unfinished) >= 8 and waiting >= 4, (unfinished, waiting)

    openai.latency = 0.0
    up = aiw_up.start(env, *QUICK)

    def all_done() -> bool:
        statuses, _ = succeeded_attempts(db_url)
        return all(statuses[i] == "succeeded" for i in ids)

    wait_until(all_done, 60, "every accepted job after the restart")
    _, ok = succeeded_attempts(db_url)
    assert Counter(ok[i] for i in ids) == Counter({1: 12}), ok  # each succeeded once
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            lost = conn.scalar(select(func.count()).select_from(AttemptRow).where(
                AttemptRow.outcome == AttemptOutcome.LOST))  # fmt: skip
    finally:
        engine.dispose()
    assert lost and lost >= 4  # the calls the dead worker had in flight show as lost
    assert up.interrupt() == 0
