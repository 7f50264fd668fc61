"""``submit_codebase_ai`` / ``submit_many``: jobs built from a real graph-sitter codebase,
answered by a real Celery worker (Redis, PostgreSQL, the fake OpenAI server)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("graph_sitter")

from graph_sitter.codebase.codebase_ai import generate_system_prompt, generate_tools
from sqlalchemy import func, select

from app.core.errors import InvalidRequestError
from app.db.models import AIRequestRow, JobStatus
from app.db.session import session_scope
from app.integrations.graph_sitter import (
    answer_from,
    submit_codebase_ai,
    submit_many,
)
from app.sandbox.codegen_server import FakeCodegenServer
from tests.graph_sitter.conftest import FUNCTIONS
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration


def job_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(AIRequestRow)) or 0)


def test_submit_codebase_ai_is_answered_by_a_worker(queue_bed: QueueBed, codebase: Any) -> None:
    queue_bed.worker(concurrency=4)
    target = codebase.get_function("net_price")
    context = [codebase.get_class("Basket")]
    handle = submit_codebase_ai(
        codebase, "Is the VAT maths right?", target=target, context=context, tags=["vat"]
    )
    job = handle.wait(timeout=30)
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert answer_from(handle.result()) == "echo: Is the VAT maths right?"
    # what the worker sent: graph-sitter's system prompt, temperature 0, set_answer
    [body] = queue_bed.openai.chat_requests()
    assert body["messages"][0] == {
        "role": "system",
        "content": generate_system_prompt(target, context),
    }
    assert body["temperature"] == 0
    assert body["tools"] == generate_tools() and body["tool_choice"] == "required"
    assert body["model"] == "gpt-4o-mini"  # model=None: the worker's default
    # what the history records
    assert job.system_prompt == generate_system_prompt(target, context)
    assert job.tags == ["graph-sitter", "vat"]
    subject = job.subject or {}
    assert subject["source"] == "graph_sitter"
    assert subject["repository"] == str(codebase.repo_path)
    assert subject["repository_name"] == "shop-repo"
    assert subject["file"] == "shop/pricing.py"
    assert subject["symbol"] == "net_price"
    assert subject["symbol_type"] == "PyFunction"
    assert subject["line"] == 4
    assert len(subject["commit"]) == 40
    assert subject["context"] == ["PyClass:Basket"]
    assert handle.result().usage.prompt_tokens > 100


def test_submit_many_one_job_per_target(queue_bed: QueueBed, codebase: Any) -> None:
    queue_bed.worker(concurrency=4)
    methods = [m for c in codebase.classes for m in c.methods]
    targets = [*codebase.functions, *methods]
    keys = [f"k-{i}" for i in range(len(targets))]
    handles = submit_many(codebase, "Summarise", targets, idempotency_keys=keys)
    assert len(handles) == len(targets) == len(FUNCTIONS)
    for handle in handles:
        assert handle.wait(timeout=30).status == JobStatus.SUCCEEDED
    symbols = {h.get().subject["symbol"] for h in handles}  # type: ignore[index]
    assert symbols == FUNCTIONS  # methods recorded as Class.method
    # the same keys again: the same jobs, nothing new asked
    again = submit_many(codebase, "Summarise", targets, idempotency_keys=keys)
    assert [h.id for h in again] == [h.id for h in handles]
    assert len(queue_bed.openai.chat_requests()) == len(targets)


def test_bad_input_queues_nothing(queue_bed: QueueBed, codebase: Any) -> None:
    function = codebase.get_function("slug")
    with pytest.raises(InvalidRequestError, match="target must be a graph-sitter symbol"):
        submit_many(codebase, "Summarise", [function, "not a symbol"])
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        submit_many(codebase, "  ", [function])
    with pytest.raises(InvalidRequestError, match="temperature"):
        submit_codebase_ai(codebase, "x", target=function, temperature=0.7)
    with pytest.raises(InvalidRequestError, match="tags must be a list"):
        submit_codebase_ai(codebase, "x", target=function, tags="one")
    with pytest.raises(InvalidRequestError, match="codebase must be a graph-sitter Codebase"):
        submit_codebase_ai(object(), "x", target=function)
    with pytest.raises(InvalidRequestError, match="idempotency_keys has 2 keys for 1 targets"):
        submit_many(codebase, "x", [function], idempotency_keys=["a", "b"])
    assert job_count() == 0
    assert queue_bed.redis.llen("ai_requests") == 0


def test_a_queued_request_falls_back_from_codegen_to_openai(
    queue_bed: QueueBed, codebase: Any
) -> None:
    """Codegen first in the worker's chain (PREFER_CODEGEN), refusing the token: the job
    goes on to OpenAI, which answers with set_answer. (Codegen ignores the tool options
    instead of refusing the request, so the chain can move on.)"""
    with FakeCodegenServer(pending_seconds=0.05, active_seconds=0.1) as fake_codegen:
        queue_bed.configure(
            PREFER_CODEGEN="true",
            CODEGEN_TOKEN="not-the-token",
            CODEGEN_ORG_ID=fake_codegen.org_id,
            CODEGEN_BASE_URL=fake_codegen.url,
            CODEGEN_MAX_RETRIES=0,
        )
        queue_bed.worker(concurrency=2)
        handle = submit_codebase_ai(codebase, "Explain", target=codebase.get_function("slug"))
        job = handle.wait(timeout=30)
        assert fake_codegen.request_count("/agent/run", method="POST") == 1
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    assert job.provider_chain == ["codegen", "openai"]
    assert [(a.provider, a.outcome) for a in handle.attempts()] == [
        ("codegen", "failed"),
        ("openai", "succeeded"),
    ]
    assert answer_from(handle.result()) == "echo: Explain"
