"""``aiw demo``: the whole path on one machine, against the built-in fakes.

Starts the fake OpenAI and Codegen servers on loopback, points a private
settings environment at them (SQLite database and the embedded broker in a temporary
data directory, unless DATABASE_URL / CELERY_BROKER_URL are set), migrates,
starts a real Celery worker process, submits a few jobs (one of them meets a
429 with Retry-After and one a 503 on the way), waits for them, and prints the
jobs, their attempts and the usage table. Then a direct call shows fallback
from a failing Codegen to OpenAI. No key and no service needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from app.config import Settings, get_settings
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer


def _wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "ready." in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"the demo worker did not start:\n{tail}")


def run_demo(count: int = 5) -> None:
    console = Console()
    data_dir = Path(tempfile.mkdtemp(prefix="aiw-demo-"))
    openai = FakeOpenAIServer().start()
    codegen = FakeCodegenServer().start()
    env = {
        "AIW_DATA_DIR": str(data_dir),
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.url,
        "CODEGEN_TOKEN": codegen.token,
        "CODEGEN_ORG_ID": str(codegen.org_id),
        "CODEGEN_BASE_URL": codegen.url,
        "CODEGEN_POLL_INTERVAL": "0.2",
        "PREFER_CODEGEN": "false",
        "RETRY_BASE_DELAY": "0.2",
        "AIW_WORKER_CONCURRENCY": "4",
    }
    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()

    from app.db.migrate import upgrade
    from app.db.session import database_url

    upgrade()
    broker = _start_embedded_broker(settings, data_dir) if not settings.celery_broker_url else None
    mode = "PostgreSQL" if settings.database_url else "embedded SQLite"
    console.print(f"[bold]ai-worker demo[/] database: {mode} ({database_url()})")
    console.print(f"fake OpenAI at {openai.url}, fake Codegen at {codegen.url}")

    log = data_dir / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app",
                "worker",
                "-Q",
                "ai_requests,maintenance",
                "--loglevel",
                "INFO",
                "--pool",
                "threads",
                "--concurrency",
                "4",
                "-n",
                "demo@%h",
            ],
            env={**os.environ},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finished = False
    try:
        _wait_ready(log, worker)
        console.print(f"worker started (pid {worker.pid})")
        from app.jobs import get_attempts, submit, usage_stats

        openai.faults.push(Fault.rate_limit(retry_after=1))
        openai.faults.push(Fault.status_code(503))
        handles = [submit(f"Say something about file {n}.py", tags=["demo"]) for n in range(count)]
        console.print(f"submitted {len(handles)} jobs; waiting...")
        jobs = [h.wait(timeout=120) for h in handles]

        table = Table(title="jobs")
        for col in ("id", "status", "provider", "attempts", "answer"):
            table.add_column(col)
        for job in jobs:
            outcomes = " ".join(a.outcome for a in get_attempts(job.id))
            answer = (job.result or {}).get("content", job.error_message or "")
            table.add_row(
                str(job.id)[:8], job.status, job.provider_used or "-", outcomes, answer[:40]
            )
        console.print(table)
        for row in usage_stats(group_by=("provider", "model")):
            console.print(
                f"usage: {row['provider']} {row['model']}: {row['requests']} calls, "
                f"{row['successes']} ok, {row['total_tokens']} tokens, ${row['cost_usd']:.6f}, "
                f"p95 {row['p95_latency_s']:.3f}s"
            )

        from app.ai.providers import create_ai_provider

        codegen.faults.push(Fault.unauthorized(), times=5)
        provider = create_ai_provider(prefer_codegen=True, validate_on_creation=False)
        answer = provider.generate_response("Which provider answers when Codegen refuses?")
        fell_back = [e["provider"] for e in answer.metadata.get("fallback_errors", [])]
        console.print(
            f"direct call with fallback: answered by [bold]{answer.provider_name}[/] "
            f"after {fell_back} failed: {answer.content!r}"
        )
        finished = True
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=20)
        openai.stop()
        codegen.stop()
        if finished:  # nothing to look at: its database, broker and logs go
            from app.core.embedded_broker import socket_path

            shutil.rmtree(data_dir, ignore_errors=True)
            if broker is not None:  # a socket too deep for its path lives in TMPDIR
                shutil.rmtree(socket_path(settings).parent, ignore_errors=True)
        else:
            console.print(f"the demo's database and logs are kept in {data_dir}")
    console.print("[green]demo finished[/]")


def _start_embedded_broker(settings: Settings, data_dir: Path) -> subprocess.Popen[bytes]:
    """The embedded broker ``aiw up`` would run, for the demo's worker and jobs."""
    from app.core.embedded_broker import socket_path
    from app.shell.embedded_server import answers, prepare

    with open(data_dir / "broker.log", "wb") as out:
        proc = subprocess.Popen(prepare(settings), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not answers(socket_path(settings)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the embedded broker did not start: see {data_dir / 'broker.log'}")
        time.sleep(0.1)
    return proc
