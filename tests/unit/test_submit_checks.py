"""Bad input is refused by ``submit`` before anything is written or queued: options no
provider takes, ``stream``, absurd ``max_tokens``, NUL characters and lone surrogates,
over-long names; the same through the task Flower's API sends, and the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.errors import InvalidRequestError
from app.core.publisher import set_publisher
from app.db.models import AIRequestRow
from app.db.session import dispose_engines, session_scope
from app.jobs import submit
from app.jobs.runner import reset_providers
from tests.plugins.cli import run_aiw


class RecordingPublisher:
    def __init__(self) -> None:
        self.jobs: list[str] = []

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        self.jobs.append(job_id)

    def send_callback(self, task_name: str, args: list[object]) -> None:
        pass

    def ensure_routes(self) -> None:
        pass

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        pass

    def queue_depth(self, queue: str) -> int | None:
        return None


@pytest.fixture
def published(migrated_sqlite_url: str, env: Any) -> Iterator[RecordingPublisher]:
    env(DATABASE_URL=migrated_sqlite_url, OPENAI_API_KEY="sk-test", PREFER_CODEGEN="false")
    publisher = RecordingPublisher()
    set_publisher(publisher)
    reset_providers()
    yield publisher
    set_publisher(None)
    dispose_engines()


def rows() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(AIRequestRow)) or 0


BAD: list[tuple[dict[str, Any], str]] = [
    ({"prompt": "x", "foo": 1}, "foo"),
    ({"prompt": "x", "stream": True}, "stream"),
    ({"prompt": "x", "provider": "openai", "repo_id": 7}, "repo_id"),
    ({"prompt": "x", "max_tokens": 10**30}, "max_tokens"),
    ({"prompt": "a\x00b"}, "NUL"),
    ({"prompt": "a\ud800b"}, "surrogate"),
    ({"prompt": "x", "system_prompt": "s\x00"}, "system_prompt"),
    ({"prompt": "x", "model": "m" * 10_000}, "model"),
    ({"prompt": "x", "tags": ["ok", "bad\x00"]}, "tags"),
    ({"prompt": "x", "user": "u\x00"}, "NUL"),
    ({"prompt": "x", "subject": {"file": "a\udc80"}}, "subject"),
    ({"prompt": "x", "idempotency_key": "k\x00"}, "idempotency_key"),
    ({"prompt": None}, "prompt is required"),
]


@pytest.mark.parametrize(("kwargs", "named"), BAD, ids=[named for _, named in BAD])
def test_refused_before_anything_is_written(
    published: RecordingPublisher, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequestError, match=named):
        submit(**kwargs)
    assert rows() == 0 and published.jobs == []


def test_good_options_still_pass(published: RecordingPublisher) -> None:
    submit("x", provider="codegen", repo_id=7, branch="main", priority="low")
    submit("x", tools=[{"type": "function", "function": {"name": "f"}}], seed=3)
    submit("x", repo_id=7)  # automatic choice: Codegen takes it
    assert rows() == 3 and len(published.jobs) == 3


def test_the_task_flowers_api_sends_fails_clearly_without_a_prompt(
    published: RecordingPublisher,
) -> None:
    from workers.tasks.ai import submit_ai_request

    with pytest.raises(InvalidRequestError, match="prompt is required"):
        submit_ai_request.run()  # what POST .../async-apply/aiw.ai_request.submit {} runs
    with pytest.raises(InvalidRequestError, match="foo"):
        submit_ai_request.run("hello", foo=1)
    assert rows() == 0


def test_the_cli_says_what_is_wrong_in_one_line(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_", "AIW_"))
    }
    env.update(DATABASE_URL=migrated_sqlite_url, OPENAI_API_KEY="sk-test")
    result = run_aiw("submit", env=env, cwd=tmp_path, stdin="hello\x00world")
    assert result.code == 1, result
    assert result.err.strip().splitlines() == ["aiw: prompt contains a NUL character (\\x00)"]
    assert "database" not in result.err and "Traceback" not in result.err
