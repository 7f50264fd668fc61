"""Every provider call ends at its deadline and never holds more than the answer cap.

Issue 9, items 3 and 4, against the fake servers over real HTTP: a server that trickles
its answer one byte at a time (each read short, the whole endless) and one that answers
a 200 with 50 MB. ``OPENAI_TIMEOUT`` / ``CODEGEN_TIMEOUT`` bound the whole call (connect
to last byte); ``AIW_MAX_ANSWER_BYTES`` bounds what is read (app.core.transfer).

The timing assertions bound behaviour, not machine speed: a 1 s deadline against a
trickle that would need 20 s or more. The memory assertions measure the test process's
Python allocations (tracemalloc) during one call against a 50 MB answer, with a 1 MB cap.
"""

from __future__ import annotations

import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.ai.openai_provider import OpenAIProvider
from app.ai.transport import GuardedTransport, environment_proxy
from app.codegen.agent import Agent
from app.codegen.client import CodegenClient
from app.config import ConfigError, Settings, load_settings
from app.core.errors import (
    AnswerTooLargeError,
    ProviderResponseError,
    ProviderServerError,
    ProviderTimeoutError,
)
from app.core.transfer import DEFAULT_MAX_ANSWER_BYTES
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer

CAP = 1_000_000
DEADLINE = 1.0
SLACK = 1.5  # far below any trickle here (20 s and more)
MB = 1_000_000


def peak_during(call: Callable[[], object]) -> tuple[int, BaseException | None]:
    """The peak of Python allocations (bytes) while ``call`` runs, and what it raised."""
    tracemalloc.start()
    error: BaseException | None = None
    try:
        call()
    except Exception as exc:  # the caller asserts on it
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, error


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


# --- OpenAI -------------------------------------------------------------------------------


@pytest.fixture
def openai(openai_env: FakeOpenAIServer, env: Any) -> Iterator[OpenAIProvider]:
    env(AIW_MAX_ANSWER_BYTES=CAP)
    provider = OpenAIProvider(timeout=DEADLINE, max_retries=0)
    yield provider
    provider.close()


def ask(provider: OpenAIProvider) -> Callable[[], object]:
    return lambda: provider.generate_response("hello")


@pytest.mark.parametrize("from_start", [False, True], ids=["body", "status-line-and-headers"])
def test_openai_trickle_ends_at_the_deadline(
    openai: OpenAIProvider, openai_env: FakeOpenAIServer, from_start: bool
) -> None:
    openai_env.responder = lambda body: "x" * 400  # a ~700-byte answer: 35 s at 0.05 s/byte
    openai_env.faults.push(Fault.trickle(0.05, from_start=from_start))
    elapsed, error = timed(ask(openai))
    assert isinstance(error, ProviderTimeoutError), error
    assert error.timeout_duration == DEADLINE and error.retryable
    assert "whole call" in str(error)
    assert DEADLINE - 0.1 <= elapsed < DEADLINE + SLACK
    # The transport bounds every socket operation (the exact mode, not the fallback).
    transport = openai.client._client._transport
    assert isinstance(transport, GuardedTransport) and transport.exact_deadline


def test_openai_trickle_is_retried_like_any_timeout(
    openai_env: FakeOpenAIServer, env: Any
) -> None:
    env(RETRY_BASE_DELAY=0.01, RETRY_MAX_DELAY=0.01)
    with OpenAIProvider(timeout=0.5, max_retries=1) as provider:
        openai_env.faults.push(Fault.trickle(0.5))
        answer = provider.generate_response("again")
    assert answer.content == "echo: again"
    assert len(openai_env.chat_requests()) == 2


@pytest.mark.parametrize(
    "fault",
    [Fault.huge_body(50), Fault.huge_body(50, chunked=True), Fault.huge_body(50, gzip=True)],
    ids=["declared", "chunked", "gzip"],
)
def test_openai_huge_answer_is_refused_at_the_cap(
    openai: OpenAIProvider, openai_env: FakeOpenAIServer, fault: Fault
) -> None:
    openai_env.faults.push(fault)
    peak, error = peak_during(ask(openai))
    assert isinstance(error, AnswerTooLargeError), error
    assert isinstance(error, ProviderResponseError)
    assert not error.retryable and error.fallback
    assert error.limit_bytes == CAP and error.provider_name == "openai"
    assert f"{CAP:,} bytes" in error.message and "AIW_MAX_ANSWER_BYTES" in error.message
    assert error.to_dict()["limit_bytes"] == CAP
    assert peak < 8 * MB, f"{peak:,} bytes allocated for a {CAP:,}-byte cap"
    if fault.chunked and not fault.gzip:  # read up to the cap, then the socket buffers
        assert openai_env.body_bytes_sent < 12 * MB


def test_openai_huge_answer_is_not_retried(openai_env: FakeOpenAIServer, env: Any) -> None:
    env(AIW_MAX_ANSWER_BYTES=CAP)
    with OpenAIProvider(max_retries=3) as provider:
        openai_env.faults.push(Fault.huge_body(5, chunked=True), times=4)
        with pytest.raises(AnswerTooLargeError):
            provider.generate_response("big")
    assert len(openai_env.chat_requests()) == 1


def test_openai_error_status_with_a_huge_body_keeps_its_meaning(
    openai: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    openai_env.faults.push(Fault.huge_body(50, chunked=True, status=503))
    peak, error = peak_during(ask(openai))
    assert isinstance(error, ProviderServerError) and error.status_code == 503, error
    assert peak < 8 * MB


def test_openai_answers_below_the_cap_still_work(
    openai: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    assert openai.generate_response("hello").content == "echo: hello"
    openai_env.responder = lambda body: "y" * (CAP - 1000)  # just under the cap
    assert len(openai.generate_response("big").content) == CAP - 1000
    assert openai.validate_credentials()  # GET /models goes through the same client


# --- Codegen ------------------------------------------------------------------------------


@pytest.fixture
def codegen(fake_codegen: FakeCodegenServer) -> Iterator[CodegenClient]:
    fake_codegen.rate_limits = False
    with CodegenClient(
        fake_codegen.org_id, fake_codegen.token, fake_codegen.url,
        timeout=DEADLINE, max_answer_bytes=CAP,
    ) as client:
        yield client


@pytest.mark.parametrize("from_start", [False, True], ids=["body", "status-line-and-headers"])
def test_codegen_trickle_ends_at_the_deadline(
    codegen: CodegenClient, fake_codegen: FakeCodegenServer, from_start: bool
) -> None:
    run_id = fake_codegen.add_run("a task")  # its JSON: ~400 bytes, 40 s at 0.1 s/byte
    fake_codegen.faults.push(Fault.trickle(0.1, from_start=from_start))
    elapsed, error = timed(lambda: codegen.get_run(run_id))
    assert isinstance(error, ProviderTimeoutError), error
    assert error.timeout_duration == DEADLINE and error.retryable
    assert "CODEGEN_TIMEOUT" in str(error)
    assert DEADLINE - 0.1 <= elapsed < DEADLINE + SLACK
    assert fake_codegen.body_bytes_sent < 40  # ~1 s of a 0.1 s/byte trickle
    assert codegen.get_run(run_id).id == run_id  # the pool is fine afterwards


@pytest.mark.parametrize(
    "fault",
    [Fault.huge_body(50), Fault.huge_body(50, chunked=True), Fault.huge_body(50, gzip=True)],
    ids=["declared", "chunked", "gzip"],
)
def test_codegen_huge_answer_is_refused_at_the_cap(
    codegen: CodegenClient, fake_codegen: FakeCodegenServer, fault: Fault
) -> None:
    run_id = fake_codegen.add_run("a task")
    fake_codegen.faults.push(fault)
    peak, error = peak_during(lambda: codegen.get_run(run_id))
    assert isinstance(error, AnswerTooLargeError), error
    assert not error.retryable and error.limit_bytes == CAP
    assert error.provider_name == "codegen" and error.status_code == 200
    assert "AIW_MAX_ANSWER_BYTES" in error.message and f"/agent/run/{run_id}" in error.message
    assert peak < 8 * MB, f"{peak:,} bytes allocated for a {CAP:,}-byte cap"
    if fault.chunked and not fault.gzip:
        assert fake_codegen.body_bytes_sent < 12 * MB
    assert codegen.get_run(run_id).id == run_id


def test_codegen_error_status_with_a_huge_body_keeps_its_meaning(
    codegen: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    fake_codegen.faults.push(Fault.huge_body(50, chunked=True, status=503))
    peak, error = peak_during(lambda: codegen.list_runs())
    assert isinstance(error, ProviderServerError) and error.status_code == 503, error
    assert peak < 8 * MB


def test_codegen_answers_below_the_cap_still_work(
    codegen: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    fake_codegen.pending_seconds = fake_codegen.active_seconds = 0
    fake_codegen.responder = lambda prompt: "z" * (CAP - 2000)
    run = codegen.get_run(codegen.create_run("a big result").id)
    assert run.result is not None and len(run.result) == CAP - 2000
    assert [r.id for r in codegen.iter_runs()] == [run.id]


def test_codegen_clients_take_the_cap_from_the_settings(
    codegen_env: FakeCodegenServer, env: Any
) -> None:
    env(AIW_MAX_ANSWER_BYTES=12345)
    assert Agent.from_settings(limiter=None).client.max_answer_bytes == 12345
    assert Agent(1, "t", limiter=None).client.max_answer_bytes == DEFAULT_MAX_ANSWER_BYTES
    with pytest.raises(ValueError, match="max_answer_bytes"):
        CodegenClient(1, "t", max_answer_bytes=0)


# --- settings and plumbing ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_the_cap_setting_is_checked(env: Any, value: str) -> None:
    env(AIW_MAX_ANSWER_BYTES=value)
    with pytest.raises(ConfigError, match="AIW_MAX_ANSWER_BYTES"):
        load_settings()


def test_the_cap_setting_defaults_to_a_few_megabytes() -> None:
    assert Settings().aiw_max_answer_bytes == DEFAULT_MAX_ANSWER_BYTES == 8 * 1024 * 1024


def test_environment_proxies_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert environment_proxy("https://api.openai.com/v1") == "http://proxy.internal:3128"
    assert environment_proxy("http://127.0.0.1:8000/v1") is None


# --- a job: nothing of a huge answer is stored ------------------------------------------------


def test_a_job_with_a_huge_answer_fails_once_and_stores_nothing_of_it(
    migrated_sqlite_url: str, openai_env: FakeOpenAIServer, env: Any
) -> None:
    from sqlalchemy import select

    from app.core.publisher import set_publisher
    from app.db.models import AIRequestRow, AttemptRow
    from app.db.session import dispose_engines, session_scope
    from app.jobs import submit
    from app.jobs.runner import reset_providers, run_job

    class Publisher:
        def publish_job(
            self, job_id: str, *, countdown: float | None = None, priority: str | None = None
        ) -> None:
            pass

        def send_callback(self, task_name: str, args: list[object]) -> None:
            pass

        def ensure_routes(self) -> None:
            pass

        def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
            pass

    env(DATABASE_URL=migrated_sqlite_url, AIW_MAX_ANSWER_BYTES=CAP, OPENAI_MAX_RETRIES=2,
        PREFER_CODEGEN="false")
    set_publisher(Publisher())
    reset_providers()
    try:
        openai_env.faults.push(Fault.huge_body(50, chunked=True), times=3)
        handle = submit("a huge answer, please")
        outcome = run_job(handle.id)
        assert (outcome.action, outcome.status) == ("done", "failed")
        with session_scope() as s:
            row = s.get(AIRequestRow, uuid.UUID(str(handle.id)))
            assert row is not None
            assert row.result is None and row.error_type == "AnswerTooLargeError"
            assert "AIW_MAX_ANSWER_BYTES" in (row.error_message or "")
            attempts = s.scalars(select(AttemptRow)).all()
        assert [a.error_type for a in attempts] == ["AnswerTooLargeError"]
        assert len(openai_env.chat_requests()) == 1  # not retried
    finally:
        set_publisher(None)
        reset_providers()
        dispose_engines()
