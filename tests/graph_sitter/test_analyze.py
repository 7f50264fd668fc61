"""``aiw analyze``: graph-sitter parses a repository the test makes, one job per symbol
runs in a real Celery worker (Redis, PostgreSQL, the fake OpenAI / Codegen servers),
and a report comes out; an interrupted run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("graph_sitter")

from click.testing import CliRunner, Result
from sqlalchemy import func, select

from app.cli import main
from app.db.models import AIRequestRow
from app.db.session import session_scope
from app.integrations.analyze import analyze
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from tests.graph_sitter.conftest import CLASSES, FUNCTIONS
from tests.plugins.queue import QueueBed
from tests.plugins.services import REPO_ROOT

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["analyze", *args], catch_exceptions=False)


def read_report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


def counts() -> dict[str, int]:
    with session_scope() as s:
        rows = s.execute(
            select(AIRequestRow.status, func.count()).group_by(AIRequestRow.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def test_analyze_writes_a_report_and_a_second_run_redoes_nothing(
    queue_bed: QueueBed, gs_repo: Path, tmp_path: Path
) -> None:
    queue_bed.worker(concurrency=4)
    out = tmp_path / "report"
    result = run_cli(str(gs_repo), "--prompt", "Any bug here?", "--out", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    assert "6 functions" in result.stderr and "6 queued" in result.stderr

    report = read_report(out)
    totals = report["totals"]
    assert totals["symbols"] == totals["succeeded"] == totals["new_jobs"] == len(FUNCTIONS)
    assert totals["failed"] == totals["pending"] == 0 and report["complete"]
    assert totals["prompt_tokens"] > 6 * 100 and totals["completion_tokens"] > 0
    assert totals["cost_usd"] > 0
    assert {s["name"] for s in report["symbols"]} == FUNCTIONS
    assert {s["answer"] for s in report["symbols"]} == {"echo: Any bug here?"}
    by_name = {s["name"]: s for s in report["symbols"]}
    assert by_name["Basket.total"]["kind"] == "method"
    assert by_name["net_price"]["file"] == "shop/pricing.py" and by_name["net_price"]["line"] == 4
    assert report["repository"] == str(gs_repo) and len(report["commit"]) == 40
    markdown = (out / "report.md").read_text()
    assert "# Analysis of shop-repo" in markdown
    assert "## method `Basket.total`" in markdown and "echo: Any bug here?" in markdown
    # each job records what it was about
    with session_scope() as s:
        subjects = [r for r in s.scalars(select(AIRequestRow.subject))]
    assert {subject["symbol"] for subject in subjects} == FUNCTIONS
    assert all(subject["analysis"] == report["analysis_id"] for subject in subjects)

    # the same command again: every answer from the first run, nothing asked again
    again = run_cli(str(gs_repo), "--prompt", "Any bug here?", "--out", str(out), "--json")
    assert again.exit_code == 0, again.output + again.stderr
    second = json.loads(again.stdout)
    assert second["totals"]["reused_jobs"] == 6 and second["totals"]["new_jobs"] == 0
    assert second["totals"]["succeeded"] == 6
    assert len(queue_bed.openai.chat_requests()) == 6

    # another filter: other symbols, other jobs
    classes = run_cli(
        str(gs_repo),
        "-p",
        "Any bug here?",
        "--filter",
        "classes",
        "--out",
        str(tmp_path / "classes"),
    )
    assert classes.exit_code == 0, classes.output + classes.stderr
    report = read_report(tmp_path / "classes")
    assert {s["name"] for s in report["symbols"]} == CLASSES
    assert report["totals"]["new_jobs"] == 2 and report["totals"]["succeeded"] == 2


def test_an_interrupted_analysis_resumes_without_redoing_finished_symbols(
    queue_bed: QueueBed, gs_repo: Path, tmp_path: Path
) -> None:
    queue_bed.openai.latency = 0.4  # one answer at a time, slowly
    worker = queue_bed.worker(concurrency=1)
    out = tmp_path / "report"
    env = {**os.environ, **queue_bed.env, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("AIW_IMPORTS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "analyze",
            str(gs_repo),
            "--prompt",
            "Why?",
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches it as a terminal's would, even when this test runs where SIGINT
        # is ignored (a background job of a shell): an ignored SIGINT is inherited.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while counts().get("succeeded", 0) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, counts()
        time.sleep(0.05)
    worker.stop()  # warm: the answer in flight ends, the rest stays queued
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    partial = read_report(out)
    assert not partial["complete"] and partial["totals"]["pending"] > 0
    assert len(queue_bed.openai.chat_requests()) <= 3

    queue_bed.openai.latency = 0.0
    queue_bed.worker(concurrency=4)
    result = run_cli(str(gs_repo), "--prompt", "Why?", "--out", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    report = read_report(out)
    assert report["complete"] and report["totals"]["succeeded"] == 6
    assert report["totals"]["new_jobs"] == 0 and report["totals"]["reused_jobs"] == 6
    # every symbol was asked exactly once over both runs
    assert len(queue_bed.openai.chat_requests()) == 6
    assert counts() == {"succeeded": 6}


def test_a_failed_symbol_is_asked_again_on_the_next_run(
    queue_bed: QueueBed, gs_repo: Path, tmp_path: Path
) -> None:
    queue_bed.worker(concurrency=1)
    queue_bed.openai.faults.push(Fault.status_code(400))  # never retried: one job fails
    first = analyze(gs_repo, "Why?", filter="classes", out_dir=tmp_path / "r", timeout=30)
    assert first.report["totals"]["failed"] == 1 and first.report["totals"]["succeeded"] == 1
    failed = [s for s in first.report["symbols"] if s["status"] == "failed"]
    assert failed[0]["error"].startswith("ProviderBadRequestError")
    assert "ProviderBadRequestError" in first.markdown_path.read_text()

    second = analyze(gs_repo, "Why?", filter="classes", out_dir=tmp_path / "r", timeout=30)
    totals = second.report["totals"]
    assert totals["succeeded"] == 2 and totals["retried_jobs"] == 1 and totals["reused_jobs"] == 1
    assert len(queue_bed.openai.chat_requests()) == 3
    assert counts() == {"succeeded": 2, "failed": 1}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, repos: tmp / "missing", "no such directory"),
        (
            lambda tmp, repos: (tmp / "plain.txt", (tmp / "plain.txt").write_text("x"))[0],
            "is not a directory",
        ),
        (lambda tmp, repos: (tmp / "nogit", (tmp / "nogit").mkdir())[0], "is not a git repository"),
        (
            lambda tmp, repos: repos("rusty", {"src/main.rs": "fn main() {}\n"}),
            "graph-sitter cannot parse the code",
        ),
        (
            lambda tmp, repos: repos("flat", {"m.py": "def f():\n    return 1\n"}),
            "no classes found",
        ),
    ],
    ids=["missing", "file", "not-git", "language", "nothing-matches"],
)
def test_bad_input_is_one_clear_error_and_queues_nothing(
    queue_bed: QueueBed,
    tmp_path: Path,
    repo_factory: Callable[..., Path],
    make: Callable[..., Path],
    message: str,
) -> None:
    path = make(tmp_path, repo_factory)
    result = run_cli(str(path), "--prompt", "Why?", "--filter", "classes")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("aiw:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert counts() == {}
    assert queue_bed.redis.llen("ai_requests") == 0


def test_an_empty_prompt_is_refused(queue_bed: QueueBed, gs_repo: Path) -> None:
    result = run_cli(str(gs_repo), "--prompt", "  ")
    assert result.exit_code == 1 and "aiw: the prompt is empty" in result.stderr
    assert counts() == {}


def test_agent_mode_hands_the_repository_to_a_tracked_codegen_run(
    queue_bed: QueueBed, gs_repo: Path, tmp_path: Path
) -> None:
    with FakeCodegenServer(pending_seconds=0.1, active_seconds=0.2) as fake_codegen:
        queue_bed.configure(
            CODEGEN_TOKEN=fake_codegen.token,
            CODEGEN_ORG_ID=fake_codegen.org_id,
            CODEGEN_BASE_URL=fake_codegen.url,
            AIW_AGENT_POLL_SWEEP_INTERVAL=0.5,
            AIW_AGENT_POLL_INTERVAL=0.5,
            AIW_AGENT_POLL_MAX_INTERVAL=1,
        )
        queue_bed.worker(concurrency=2)
        queue_bed.beat()
        out = tmp_path / "agent"
        args = [str(gs_repo), "--prompt", "Find bugs", "--agent", "--repo-id", "7"]
        result = run_cli(*args, "--out", str(out), "--timeout", "60")
        assert result.exit_code == 0, result.output + result.stderr
        assert "started a Codegen agent run" in result.stderr
        # the same command again follows the same run: no second creation
        again = run_cli(*args, "--out", str(tmp_path / "again"), "--timeout", "60")
        assert again.exit_code == 0, again.output + again.stderr
        assert "following the earlier Codegen agent run" in again.stderr
        [run_id] = fake_codegen.run_ids()
        created = fake_codegen.run_request(run_id)
    assert created["repo_id"] == 7
    assert created["metadata"]["source"] == "aiw analyze"
    assert created["prompts"][0].startswith("Repository: shop-repo")
    assert "Find bugs" in created["prompts"][0] and "Basket.total" in created["prompts"][0]
    report = read_report(out)
    assert report["mode"] == "agent" and report["status"] == "COMPLETE" and report["complete"]
    assert report["answer"].startswith("Done: Repository: shop-repo")
    assert report["web_url"] and report["pull_requests"] and report["error"] is None
    assert report["totals"]["succeeded"] == 1 and report["totals"]["symbols"] == 6
    assert read_report(tmp_path / "again")["reused"] is True
    assert len(queue_bed.openai.chat_requests()) == 0
    assert "# Agent analysis of shop-repo" in (out / "report.md").read_text()
