"""``aiw up`` as a user runs it: the real command line, real worker/beat/Flower/exporter
processes, the fake OpenAI server over HTTP; a SQLite file and the embedded broker (the
valkey-server ``aiw up`` starts) or Redis and PostgreSQL (production).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, func, select

from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, UsageRow
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer
from app.sandbox.webhook_receiver import WebhookReceiver
from tests.plugins.cli import (
    Up,
    UpLauncher,
    alive,
    clean_env,
    descendants,
    http,
    process_groups_alive,
    run_aiw,
)

pytestmark = pytest.mark.integration

FLOWER_LOGIN = "admin:not-a-real-secret-42"


@pytest.fixture
def openai() -> FakeOpenAIServer:
    server = FakeOpenAIServer().start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def codegen() -> FakeCodegenServer:
    server = FakeCodegenServer().start()
    yield server  # type: ignore[misc]
    server.stop()


def up_env(tmp_path: Path, openai: FakeOpenAIServer, **extra: object) -> dict[str, str]:
    return clean_env(
        AIW_DATA_DIR=tmp_path / "data",
        OPENAI_API_KEY=openai.api_key,
        OPENAI_BASE_URL=openai.url,
        PREFER_CODEGEN="false",
        FLOWER_BASIC_AUTH=FLOWER_LOGIN,
        AIW_SWEEP_INTERVAL=1,
        AIW_WORKER_CONCURRENCY=4,
        AIW_METRICS_CACHE=0,
        RETRY_BASE_DELAY=0.05,
        **extra,
    )


def metric(up: Up, name: str, labels: str = "") -> float:
    status, body = http(up.metrics_url)
    assert status == 200
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    total = 0.0
    for line in body.decode().splitlines():
        m = pattern.match(line)
        if m and all(part in (m.group(1) or "") for part in labels.split(",") if part):
            total += float(m.group(2))
    return total


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def db_figures(db_url: str) -> dict[str, float]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {
                "calls": conn.scalar(select(func.count()).select_from(AttemptRow)) or 0,
                "ok": conn.scalar(
                    select(func.count())
                    .select_from(AttemptRow)
                    .where(AttemptRow.outcome == AttemptOutcome.SUCCEEDED)
                )
                or 0,
                "tokens": conn.scalar(select(func.sum(UsageRow.total_tokens))) or 0,
                "cost": float(conn.scalar(select(func.sum(UsageRow.cost_usd))) or 0),
            }
    finally:
        engine.dispose()


def succeeded_attempts(db_url: str) -> tuple[dict[str, str], Counter[str]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            statuses = {str(i): s for i, s in conn.execute(
                select(AIRequestRow.id, AIRequestRow.status))}
            ok = Counter(str(i) for i in conn.scalars(select(AttemptRow.request_id).where(
                AttemptRow.outcome == AttemptOutcome.SUCCEEDED)))
    finally:
        engine.dispose()
    return statuses, ok


def submit_and_follow(up: Up, db_url: str) -> None:
    """submit --wait, watch, show, stats (== the database), metrics moving."""
    before = metric(up, "aiw_requests_total")
    tokens_before = metric(up, "aiw_tokens_total")

    r = up.aiw("submit", "hello from the test", "--wait", "60", "--json")
    assert r.code == 0, r.err
    job = r.json()
    assert job["status"] == "succeeded"
    assert job["result"]["content"] == "echo: hello from the test"

    r = up.aiw("watch", job["id"], "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out.splitlines()[-1])["status"] == "succeeded"
    r = up.aiw("watch", job["id"])
    assert r.code == 0 and "echo: hello from the test" in r.out

    r = up.aiw("stats", "--json", "--group-by", "provider,model")
    assert r.code == 0, r.err
    rows = r.json()
    figures = db_figures(db_url)
    assert sum(row["requests"] for row in rows) == figures["calls"]
    assert sum(row["successes"] for row in rows) == figures["ok"]
    assert sum(row["total_tokens"] for row in rows) == figures["tokens"]
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(figures["cost"])
    assert up.aiw("stats").code == 0

    assert metric(up, "aiw_requests_total") == before + 1
    assert metric(up, "aiw_tokens_total") > tokens_before
    assert metric(up, "aiw_provider_calls_total", 'outcome="succeeded"') >= 1
    assert metric(up, "aiw_database_up") == 1
    assert metric(up, "aiw_broker_up") == 1


def flower_checks(up: Up) -> None:
    """Login enforced on pages and API; /metrics and /healthcheck open; enqueue by API."""
    assert http(up.flower_url + "/")[0] == 401
    assert http(up.flower_url + "/", auth="admin:wrong")[0] == 401
    assert http(up.flower_url + "/", auth=FLOWER_LOGIN)[0] == 200
    assert http(up.flower_url + "/api/workers")[0] == 401
    assert http(up.flower_url + "/metrics")[0] == 200  # Flower's own metrics stay available
    assert http(up.flower_url + "/healthcheck")[0] == 200

    status, body = http(
        up.flower_url + "/api/task/async-apply/aiw.ai_request.submit",
        auth=FLOWER_LOGIN,
        data={"kwargs": {"prompt": "sent through Flower", "tags": ["flower"]}},
    )
    assert status == 200, body
    task_id = json.loads(body)["task-id"]

    def done() -> bool:
        r = up.aiw("jobs", "--tag", "flower", "--json")
        assert r.code == 0, r.err
        return any(j["status"] == "succeeded" for j in r.json())

    wait_until(done, 60, "the job sent through Flower")
    (flower_job,) = up.aiw("jobs", "--tag", "flower", "--json").json()
    assert flower_job["idempotency_key"] == f"celery:{task_id}"
    assert flower_job["result"]["content"] == "echo: sent through Flower"

    # Bad arguments through Flower write nothing (the task fails with the reason).
    status, _ = http(
        up.flower_url + "/api/task/async-apply/aiw.ai_request.submit",
        auth=FLOWER_LOGIN,
        data={"kwargs": {"prompt": "", "tags": ["flower-bad"]}},
    )
    assert status == 200
    time.sleep(3)
    assert up.aiw("jobs", "--tag", "flower-bad", "--json").json() == []


def flower_sees_workers_and_tasks(up: Up) -> None:
    """Broadcast and events reach Flower: a worker of each kind of work (the bulkheads)
    and the tasks they ran, with their job ids."""

    def sees_workers() -> bool:
        status, body = http(up.flower_url + "/api/workers?refresh=1", auth=FLOWER_LOGIN)
        kinds = {name.split("@")[0] for name in json.loads(body)} if status == 200 else set()
        return kinds == {"ai", "webhooks", "agent-runs", "maintenance"}

    wait_until(sees_workers, 30, "Flower to see a worker of each kind")
    # Flower turns task events on in the workers it sees (every few seconds): a job run
    # after that shows as a task. One more job per look until one does.
    job_ids: list[str] = []

    def sees_the_task() -> bool:
        status, body = http(up.flower_url + "/api/tasks?taskname=aiw.ai_request.run",
                            auth=FLOWER_LOGIN)  # fmt: skip
        tasks = json.loads(body).values() if status == 200 else []
        if any(j in t["args"] and t["state"] == "SUCCESS" for t in tasks for j in job_ids):
            return True
        r = up.aiw("submit", "seen by Flower", "--json")
        assert r.code == 0, r.err
        job_ids.append(r.json()["id"])
        return False

    wait_until(sees_the_task, 30, "Flower to list the job's task")


def interrupt_with_jobs_in_flight(
    aiw_up: UpLauncher, up: Up, openai: FakeOpenAIServer, db_url: str
) -> None:
    """Ctrl-C with calls in flight and jobs queued: nothing left running, nothing lost."""
    openai.latency = 3.0
    # Ten jobs at once (one process: ten `aiw submit` would take seconds): at most four
    # run (AIW_WORKER_CONCURRENCY), the rest wait in the broker.
    script = (
        "from app.jobs import submit\n"
        "for n in range(10): print(submit(f'slow job {n}', tags=['slow']).id)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=up.env, cwd=up.cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 10
    calls_before = len(openai.chat_requests())
    wait_until(lambda: len(openai.chat_requests()) >= calls_before + 2, 30, "calls in flight")

    pids = descendants(up.proc.pid)
    pgids = {os.getpgid(pid) for pid in pids if alive(pid)}
    assert len(pids) >= 4  # worker, beat, flower, metrics (and their helpers)
    assert up.interrupt() == 0
    assert "stopped" in up.lines[-1]
    assert [pid for pid in pids if alive(pid)] == []
    assert process_groups_alive(pgids) == set()

    statuses, _ = succeeded_attempts(db_url)
    unfinished = [i for i in ids if statuses[i] != "succeeded"]
    assert unfinished, "every job finished before the interrupt: the test proves nothing"

    openai.latency = 0.0
    aiw_up.start(up.env)

    def all_done() -> bool:
        statuses, _ = succeeded_attempts(db_url)
        return all(statuses[i] == "succeeded" for i in ids)

    wait_until(all_done, 60, "every accepted job after the restart")
    _, ok = succeeded_attempts(db_url)
    assert all(ok[i] == 1 for i in ids), ok  # each ran to success exactly once


def agent_run_flow(up: Up) -> None:
    """aiw agent run --wait, watch (status changes, pull request, web_url), list, show."""
    r = up.aiw("agent", "run", "Fix the flaky test", "--tag", "cli", "--wait", "60", "--json")
    assert r.code == 0, r.err
    run = r.json()
    assert run["state"] == "finished" and run["remote_status"] == "COMPLETE"
    assert any(a["kind"] == "pull_request" for a in run["artifacts"])

    r = up.aiw("watch", str(run["id"]), "--json")
    assert r.code == 0, r.err
    final = json.loads(r.out.splitlines()[-1])
    assert final["web_url"] and final["pull_requests"]
    assert [e["new_status"] for e in final["events"] if e["kind"] == "status_changed"][-1] == (
        "COMPLETE"
    )
    r = up.aiw("watch", str(run["id"]))
    assert r.code == 0 and "COMPLETE" in r.out and "pull requests:" in r.out

    assert [x["id"] for x in up.aiw("agent", "list", "--tag", "cli", "--json").json()] == [
        run["id"]
    ]
    assert up.aiw("agent", "show", str(run["id"])).code == 0
    assert metric(up, "aiw_agent_runs", 'state="finished"') >= 1

    r = up.aiw("agent", "show", "999999")
    assert r.code == 1 and r.err.strip() == "aiw: no agent run 999999"
    r = up.aiw("agent", "resume", "999999", "go on")
    assert r.code == 1 and r.err.strip() == "aiw: no agent run 999999"


def test_up_embedded(
    aiw_up: UpLauncher, openai: FakeOpenAIServer, codegen: FakeCodegenServer, tmp_path: Path
) -> None:
    env = up_env(
        tmp_path,
        openai,
        CODEGEN_TOKEN=codegen.token,
        CODEGEN_ORG_ID=codegen.org_id,
        CODEGEN_BASE_URL=codegen.url,
        AIW_AGENT_POLL_SWEEP_INTERVAL=0.5,
        AIW_AGENT_POLL_INTERVAL=0.5,
        AIW_AGENT_POLL_MAX_INTERVAL=2,
    )
    up = aiw_up.start(env)
    out = up.output
    assert "mode      embedded" in out
    socket = tmp_path / "data" / "broker" / "valkey.sock"
    assert f"broker    redis+socket://{socket} (valkey-server " in out
    assert "listens on a unix socket" in out  # the limits are said at start
    assert f"login {FLOWER_LOGIN.split(':')[0]}, FLOWER_BASIC_AUTH" in out
    assert FLOWER_LOGIN.split(":")[1] not in out  # never the password
    assert openai.api_key not in out
    db_url = f"sqlite:///{tmp_path / 'data' / 'aiw.sqlite3'}"

    r = up.aiw("check", "--json")
    assert r.code == 0 and r.json()["broker"] == {"url": f"redis+socket://{socket}", "ok": True}
    submit_and_follow(up, db_url)
    agent_run_flow(up)
    flower_checks(up)
    flower_sees_workers_and_tasks(up)
    # The agent-run budget and the poll lease are shared through the embedded server.
    keys = redis.Redis(unix_socket_path=str(socket)).keys("aiw:*")
    assert any(k.startswith(b"aiw:budget:codegen") for k in keys), keys
    interrupt_with_jobs_in_flight(aiw_up, up, openai, db_url)


def test_up_on_redis_and_postgres(
    aiw_up: UpLauncher,
    openai: FakeOpenAIServer,
    tmp_path: Path,
    pg_database_factory: Callable[[], str],
    redis_url: str,
) -> None:
    db_url = pg_database_factory()
    env = up_env(tmp_path, openai, DATABASE_URL=db_url, CELERY_BROKER_URL=redis_url,
                 REDIS_URL=redis_url)
    up = aiw_up.start(env)
    assert "mode      production" in up.output
    assert "cannot do everything" not in up.output

    submit_and_follow(up, db_url)
    flower_checks(up)
    flower_sees_workers_and_tasks(up)
    assert metric(up, "aiw_queue_depth") == 0
    interrupt_with_jobs_in_flight(aiw_up, up, openai, db_url)


def test_up_refuses_an_unreachable_broker_in_one_line(tmp_path: Path) -> None:
    from tests.plugins.cli import run_aiw

    env = clean_env(AIW_DATA_DIR=tmp_path / "data", CELERY_BROKER_URL="redis://127.0.0.1:1/0",
                    FLOWER_BASIC_AUTH=FLOWER_LOGIN)
    r = run_aiw("up", env=env, cwd=tmp_path)
    assert r.code == 1
    assert r.err.strip().splitlines() == [
        "aiw: broker unreachable: redis://127.0.0.1:1/0 (ConnectionError: Error 111 connecting "
        "to 127.0.0.1:1. Connection refused.)"
    ]
    assert "Traceback" not in r.out + r.err


def test_up_sandbox_is_seen_from_a_second_shell(aiw_up: UpLauncher, tmp_path: Path) -> None:
    """The tour: `aiw up --sandbox` in one shell, the README's commands in another with
    nothing configured: they use the sandbox's fakes, and `aiw providers` says so."""
    env = clean_env(AIW_DATA_DIR=tmp_path / "data", FLOWER_BASIC_AUTH=FLOWER_LOGIN)
    up = aiw_up.start(env, "--sandbox", "--no-flower", "--no-metrics")
    settings_file = tmp_path / "data" / "sandbox.env"
    assert f"settings in {settings_file}" in up.output
    assert settings_file.stat().st_mode & 0o077 == 0

    second_shell = dict(env)  # the same directory, none of the sandbox's variables
    assert "OPENAI_BASE_URL" not in second_shell
    r = run_aiw("providers", "--json", env=second_shell, cwd=tmp_path)
    assert r.code == 0, r.err
    report = r.json()
    assert report["environment"].startswith("the sandbox of `aiw up --sandbox` (pid ")
    r = run_aiw("providers", env=second_shell, cwd=tmp_path)
    assert r.out.splitlines()[0].startswith("settings: the sandbox of `aiw up --sandbox`")

    receiver = WebhookReceiver().start()
    try:
        r = run_aiw("webhooks", "add", receiver.url, "--event", "ai_request.*", "--json",
                    env=second_shell, cwd=tmp_path)  # fmt: skip
        assert r.code == 0, r.err  # a receiver on this machine: the sandbox allows it
        receiver.secret = r.json()["secret"]
        r = run_aiw("submit", "from the second shell", "--wait", "60", "--json",
                    env=second_shell, cwd=tmp_path)  # fmt: skip
        assert r.code == 0, r.err
        job = r.json()
        assert job["status"] == "succeeded" and job["provider_used"] == "openai"
        (hook,) = receiver.wait_for(1, timeout=30)
        assert hook.event_type == "ai_request.succeeded"
    finally:
        receiver.stop()

    assert up.interrupt() == 0
    assert not settings_file.exists()  # gone with the sandbox: the next shell is its own
    r = run_aiw("providers", "--json", env=second_shell, cwd=tmp_path)
    assert r.json()["environment"] == "this shell's environment (and .env)"
