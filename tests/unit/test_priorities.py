"""Priorities and per-tag caps in the domain (SQLite, no broker): a priority is checked
before anything is written and goes with every message of its job; a job over its tag's
cap is held back without an attempt, and runs once there is room."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.config import load_settings, parse_tag_caps
from app.core.errors import InvalidRequestError
from app.core.publisher import set_publisher
from app.db.base import utcnow
from app.db.models import AIRequestRow, AttemptRow, JobStatus
from app.db.session import dispose_engines, session_scope
from app.jobs import get_job, submit
from app.jobs.runner import reset_providers, run_job
from app.jobs.sweep import sweep
from app.sandbox.openai_server import FakeOpenAIServer
from tests.plugins.cli import run_aiw


class RecordingPublisher:
    def __init__(self) -> None:
        self.jobs: list[tuple[str, str | None]] = []

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        self.jobs.append((job_id, priority))

    def send_callback(self, task_name: str, args: list[object]) -> None:
        pass

    def ensure_routes(self) -> None:
        pass

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        pass

    def queue_depth(self, queue: str) -> int | None:
        return None


@pytest.fixture
def published(
    migrated_sqlite_url: str, env: Any, openai_env: FakeOpenAIServer
) -> Iterator[RecordingPublisher]:
    env(DATABASE_URL=migrated_sqlite_url, PREFER_CODEGEN="false",
        AIW_TAG_CONCURRENCY="bulk=1,team-a=2", AIW_TAG_WAIT=0.5)  # fmt: skip
    publisher = RecordingPublisher()
    set_publisher(publisher)
    reset_providers()
    yield publisher
    set_publisher(None)
    reset_providers()
    dispose_engines()


def count(model: Any) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.parametrize("bad", ["urgent", "HIGH", "", None, 1])
def test_a_priority_not_one_of_the_three_is_refused_and_nothing_is_written(
    published: RecordingPublisher, bad: object
) -> None:
    with pytest.raises(InvalidRequestError, match="priority must be one of 'high', 'normal'"):
        submit("hello", priority=bad)  # type: ignore[arg-type]
    assert count(AIRequestRow) == 0 and published.jobs == []


def test_the_priority_is_kept_and_goes_with_every_message(
    published: RecordingPublisher,
) -> None:
    jobs = {p: submit(f"at {p}", priority=p).id for p in ("high", "normal", "low")}
    default = submit("no priority given").id
    assert [(uuid.UUID(j), p) for j, p in published.jobs] == [
        *((job_id, p) for p, job_id in jobs.items()),
        (default, "normal"),
    ]
    assert get_job(jobs["low"]).priority == "low" and get_job(default).priority == "normal"
    # A lost message: the sweep publishes the job at its priority again.
    published.jobs.clear()
    with session_scope() as s:
        s.execute(update(AIRequestRow).values(published_at=None))
    assert sweep() == 4
    assert sorted(p or "" for _, p in published.jobs) == ["high", "low", "normal", "normal"]


def test_priority_is_no_longer_an_unknown_option_for_openai(
    published: RecordingPublisher,
) -> None:
    job = submit("hi", provider="openai", priority="high")
    assert run_job(job.id).action == "done" and get_job(job.id).status == JobStatus.SUCCEEDED


def hold(job_id: uuid.UUID, lease_s: float) -> None:
    """As if a worker had claimed the job and held it (its lease ``lease_s`` from now)."""
    with session_scope() as s:
        s.execute(
            update(AIRequestRow)
            .where(AIRequestRow.id == job_id)
            .values(
                status=JobStatus.RUNNING,
                claim_token=str(uuid.uuid4()),
                lease_expires_at=utcnow() + timedelta(seconds=lease_s),
            )
        )


def test_a_job_over_its_tags_cap_waits_without_an_attempt_then_runs(
    published: RecordingPublisher,
) -> None:
    first = submit("one", tags=["bulk"]).id
    second = submit("two", tags=["bulk", "team-b"]).id
    other = submit("not capped", tags=["team-b"]).id
    hold(first, 30)
    outcome = run_job(second)
    assert outcome.action == "retry" and 0.5 <= (outcome.countdown or 0) <= 1.0
    assert "bulk" in outcome.reason
    job = get_job(second)
    assert (job.status, job.attempt_count) == (JobStatus.QUEUED, 0)
    assert count(AttemptRow) == 0
    assert run_job(other).action == "done"  # other tags are not held back
    # The holder dies: its lease runs out, and its claim stops counting.
    hold(first, -1)
    assert run_job(second).action == "done"
    job = get_job(second)
    assert (job.status, job.attempt_count) == (JobStatus.SUCCEEDED, 1)


def test_a_cap_of_two_lets_two_run(published: RecordingPublisher) -> None:
    ids = [submit(f"a{n}", tags=["team-a"]).id for n in range(3)]
    hold(ids[0], 30)
    assert run_job(ids[1]).action == "done"  # one running: room for a second
    hold(ids[1], 30)  # now two hold it (the finished one stands for a running one)
    with session_scope() as s:
        s.execute(
            update(AIRequestRow)
            .where(AIRequestRow.id == ids[1])
            .values(status=JobStatus.RUNNING)
        )
    assert run_job(ids[2]).action == "retry"


@pytest.mark.parametrize(
    ("value", "message"),
    [("bulk", "not TAG=N"), ("bulk=0", "at least 1"), ("bulk=x", "whole number"),
     ("a=1,a=2", "capped twice"), ("=3", "not TAG=N")],
)  # fmt: skip
def test_bad_tag_caps_are_refused_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(Exception, match=message) as info:
        load_settings(aiw_tag_concurrency=value)
    assert "AIW_TAG_CONCURRENCY" in str(info.value)


def test_tag_caps_parse() -> None:
    assert parse_tag_caps("") == {}
    assert parse_tag_caps(" bulk=4, team-a=8 ,") == {"bulk": 4, "team-a": 8}


def test_aiw_submit_refuses_a_priority_not_one_of_the_three(
    migrated_sqlite_url: str, tmp_path: Path, env: Any
) -> None:
    cli_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_", "AIW_"))
    }
    cli_env.update(DATABASE_URL=migrated_sqlite_url, OPENAI_API_KEY="sk-test")
    result = run_aiw("submit", "--priority", "urgent", "hello", env=cli_env, cwd=tmp_path)
    assert result.code == 2, result
    assert "'urgent' is not one of 'high', 'normal', 'low'" in result.err
    env(DATABASE_URL=migrated_sqlite_url)
    try:
        assert count(AIRequestRow) == 0
    finally:
        dispose_engines()


def test_flowers_submit_task_takes_the_priority_and_refuses_a_bad_one(
    published: RecordingPublisher,
) -> None:
    from workers.tasks.ai import submit_ai_request

    with pytest.raises(InvalidRequestError, match="priority must be one of"):
        submit_ai_request.run("hello", priority="urgent")
    assert count(AIRequestRow) == 0
    job_id = submit_ai_request.run("hello", priority="high")
    assert get_job(job_id).priority == "high" and published.jobs == [(job_id, "high")]
