"""CodegenProvider against the fake Codegen server (real HTTP, settings from the environment)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from app.ai.base import AIRequest, Usage
from app.ai.codegen_provider import DEFAULT_MODEL, CodegenProvider, compose_prompt
from app.codegen import AgentRunTimeoutError, Task
from app.core.errors import (
    AgentRunFailedError,
    InvalidRequestError,
    ProviderNotConfiguredError,
    ProviderQuotaError,
    ProviderTimeoutError,
)
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer


def creations(srv: FakeCodegenServer) -> int:
    return srv.request_count("/agent/run", method="POST")


def test_settings_and_configuration(codegen_env: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    assert provider.name == "codegen"
    assert provider.is_configured()
    assert provider.timeout == 2  # CODEGEN_TIMEOUT, per HTTP request
    assert provider.max_retries == 3  # CODEGEN_MAX_RETRIES default
    assert provider.get_available_models() == [DEFAULT_MODEL]
    assert CodegenProvider(timeout=7, max_retries=1).timeout == 7
    # nothing is built or called until first use
    assert provider._agent is None
    assert codegen_env.requests == []


def test_not_configured(env: Callable[..., None]) -> None:
    provider = CodegenProvider()
    assert not provider.is_configured()
    assert provider.validate_credentials() is False
    with pytest.raises(ProviderNotConfiguredError):
        provider.generate_response("hi")
    env(CODEGEN_TOKEN="tok")  # an org id is needed too
    assert not CodegenProvider().is_configured()


def test_generate_response_is_one_finished_agent_run(codegen_env: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    answer = provider.generate_response("Add a changelog entry")
    run_id = codegen_env.run_ids()[-1]
    assert answer.content == "Done: Add a changelog entry"
    assert answer.provider_name == "codegen"
    assert answer.model == DEFAULT_MODEL
    assert answer.usage == Usage() and answer.usage.total_tokens == 0
    assert answer.cost_usd is None
    assert answer.request_id == str(run_id)
    assert answer.response_time > timedelta(seconds=0.15)
    meta = answer.metadata
    assert meta["agent_run_id"] == run_id and meta["status"] == "COMPLETE"
    assert meta["web_url"] == f"https://codegen.com/agent/trace/{run_id}"
    assert meta["summary"]
    (pr,) = meta["pull_requests"]
    assert set(pr) >= {"id", "title", "url", "created_at", "head_branch_name"}
    assert provider.get_stats()["request_count"] == 1
    assert creations(codegen_env) == 1
    # the model pseudo-name is not sent
    assert "model" not in codegen_env.requests[0].body


def test_system_prompt_and_options_reach_codegen(codegen_env: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    answer = provider.generate_response(
        "Fix the bug",
        system_prompt="You are careful.",
        model="claude-sonnet-4",
        repo_id=12,
        metadata={"ticket": "T-1", "tags": ["old"]},
        tags=["nightly", "old"],
        images=["data:image/png;base64,AAAA"],
        agent_type="claude_code",
    )
    assert answer.model == "claude-sonnet-4"
    body = codegen_env.requests[0].body
    assert body["prompt"] == compose_prompt("Fix the bug", "You are careful.")
    assert body["prompt"].index("You are careful.") < body["prompt"].index("Fix the bug")
    assert "## Instructions" in body["prompt"] and "## Task" in body["prompt"]
    assert body["model"] == "claude-sonnet-4"
    assert body["repo_id"] == 12
    assert body["metadata"] == {"ticket": "T-1", "tags": ["old", "nightly"]}
    assert body["images"] == ["data:image/png;base64,AAAA"]
    assert body["agent_type"] == "claude_code"
    assert compose_prompt("p", None) == "p"


@pytest.mark.parametrize(
    "options",
    [
        {"response_format": {"type": "json_object"}},
        {"repo": 3},
        {"tags": "nightly"},
        {"tags": [1, 2]},
        {"metadata": "x"},
        {"repo_id": "12"},
        {"agent_type": "devin"},
        {"images": "data:x"},
    ],
)
def test_bad_options_are_refused_before_any_call(
    codegen_env: FakeCodegenServer, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError):
        CodegenProvider().generate_response("x", **options)
    assert codegen_env.requests == []


def test_failed_run_raises_agent_run_failed(codegen_env: FakeCodegenServer) -> None:
    codegen_env.default_outcome = "FAILED"
    provider = CodegenProvider()
    with pytest.raises(AgentRunFailedError) as info:
        provider.generate_response("x")
    error = info.value
    run_id = codegen_env.run_ids()[-1]
    assert error.run_id == run_id and error.run_status == "FAILED"
    assert error.provider_name == "codegen" and not error.retryable
    assert creations(codegen_env) == 1  # not retried
    assert provider.get_stats()["errors_by_type"] == {"AgentRunFailedError": 1}


def test_run_timeout_is_not_retried(
    codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    env(CODEGEN_RUN_TIMEOUT=0.3)
    codegen_env.pending_seconds = 60
    with pytest.raises(ProviderTimeoutError) as info:
        CodegenProvider().generate_response("x")
    assert isinstance(info.value, AgentRunTimeoutError)
    assert info.value.timeout_duration == 0.3
    assert info.value.run_id == codegen_env.run_ids()[-1]
    assert creations(codegen_env) == 1  # retrying would start a second run


def test_creation_is_retried_on_429_and_the_wait_survives_faults(
    codegen_env: FakeCodegenServer, env: Callable[..., None]
) -> None:
    # A 429 without Retry-After makes every client wait until its bucket is full again
    # (a minute for creations by default): small windows keep this test short.
    env(CODEGEN_CREATE_WINDOW=1, CODEGEN_RATE_WINDOW=1, CODEGEN_RATE_MARGIN=0.1)
    codegen_env.faults.push(Fault.rate_limit())  # the creation
    provider = CodegenProvider()
    task_faults = [Fault.status_code(503), Fault.bad_json(), Fault.rate_limit()]
    original_start = provider.start_run

    def start_then_break(request: AIRequest) -> Task:
        task = original_start(request)
        for fault in task_faults:  # the next polls
            codegen_env.faults.push(fault)
        return task

    provider.start_run = start_then_break  # type: ignore[method-assign]
    answer = provider.generate_response("x")
    assert answer.metadata["status"] == "COMPLETE"
    assert creations(codegen_env) == 2  # one 429, one success
    assert codegen_env.rate_limited_count == 2
    assert codegen_env.run_count == 1


def test_run_limit_is_a_quota_error_without_retry(codegen_env: FakeCodegenServer) -> None:
    codegen_env.max_runs = 0
    with pytest.raises(ProviderQuotaError):
        CodegenProvider().generate_response("x")
    assert creations(codegen_env) == 1


def test_validate_credentials(codegen_env: FakeCodegenServer, env: Callable[..., None]) -> None:
    assert CodegenProvider().validate_credentials() is True
    assert codegen_env.request_count("/agent/runs") == 1
    assert codegen_env.requests[0].query == {"skip": ["0"], "limit": ["1"]}
    env(CODEGEN_ORG_ID=codegen_env.org_id + 1)
    assert CodegenProvider().validate_credentials() is False  # 403
    env(CODEGEN_ORG_ID=codegen_env.org_id, CODEGEN_TOKEN="wrong")
    assert CodegenProvider().validate_credentials() is False  # 401


def test_start_run_returns_at_once(codegen_env: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    request = provider.build_request("later", tags=["async"])
    task = provider.start_run(request)
    assert not task.is_terminal
    with pytest.raises(InvalidRequestError):
        provider.response_from_task(task)
    task.wait_for_completion(timeout=5, poll_interval=0.02)
    answer = provider.response_from_task(task, model=request.model)
    assert answer.content == "Done: later"
    assert codegen_env.run_request(task.id)["metadata"] == {"tags": ["async"]}
    provider.close()


def test_token_never_shows(
    codegen_env: FakeCodegenServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = CodegenProvider()
    answer = provider.generate_response("x")
    token = codegen_env.token
    assert token not in repr(provider) and token not in repr(provider.agent)
    assert token not in answer.model_dump_json()
    assert token not in str(provider.get_stats())
    assert caplog.records
    assert all(token not in record.getMessage() for record in caplog.records)


# --- repository, branch, priority ------------------------------------------------------------


def test_the_seed_example_works(codegen_env: FakeCodegenServer) -> None:
    repo_id = codegen_env.add_repo("owner/repo")
    provider = CodegenProvider()
    answer = provider.generate_response(
        "Fix the flaky test",
        system_prompt="You are careful.",
        priority="normal",
        tags=["ci"],
        repository="owner/repo",
        branch="main",
    )
    assert answer.metadata["status"] == "COMPLETE"
    (create,) = [r for r in codegen_env.requests if r.method == "POST"]
    assert create.body["repo_id"] == repo_id
    assert create.body["metadata"] == {
        "tags": ["ci"], "repository": "owner/repo", "branch": "main", "priority": "normal",
    }
    assert "Work on the branch `main` of owner/repo." in create.body["prompt"]
    assert create.body["prompt"].index("You are careful.") < create.body["prompt"].index("main")
    # the repository list is read once, then cached for this provider's client
    provider.generate_response("Again", repository="OWNER/repo")
    assert codegen_env.request_count("/repos") == 1
    assert codegen_env.run_request(codegen_env.run_ids()[-1])["repo_id"] == repo_id
    assert {"repository", "branch", "priority"} <= CodegenProvider.EXTRA_OPTIONS


def test_an_unknown_repository_is_refused_before_any_run(codegen_env: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    with pytest.raises(InvalidRequestError) as info:
        provider.generate_response("x", repository="owner/missing", branch="main")
    message = str(info.value)
    assert "'owner/missing'" in message and "2 repositories" in message  # the fake's two
    assert creations(codegen_env) == 0
    assert codegen_env.request_count("/repos") == 1  # refused, not retried
    assert provider.get_stats()["errors_by_type"] == {"InvalidRequestError": 1}


def test_repository_and_repo_id_that_disagree_are_refused(codegen_env: FakeCodegenServer) -> None:
    repo_id = codegen_env.add_repo("owner/repo")
    with pytest.raises(InvalidRequestError, match="give one of them"):
        CodegenProvider().generate_response("x", repository="owner/repo", repo_id=repo_id + 1)
    assert creations(codegen_env) == 0
    answer = CodegenProvider().generate_response("x", repository="owner/repo", repo_id=repo_id)
    assert answer.metadata["status"] == "COMPLETE"


@pytest.mark.parametrize(
    "options",
    [{"branch": "has space"}, {"branch": ""}, {"priority": "urgent"}, {"repository": "norepo"},
     {"repository": 5}, {"branch": "main", "metadata": {"branch": "dev"}}],
)
def test_bad_repository_branch_priority_are_refused_before_any_call(
    codegen_env: FakeCodegenServer, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError):
        CodegenProvider().generate_response("x", **options)
    assert codegen_env.requests == []


def test_run_input_is_the_pure_step(codegen_env: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    request = provider.build_request("p", repository="owner/repo", branch="dev", priority="low")
    run_input = provider.run_input(request)
    assert run_input.needs_resolution and run_input.metadata == {
        "repository": "owner/repo", "branch": "dev", "priority": "low",
    }
    assert provider.run_options(request)["repo_id"] is None
    assert codegen_env.requests == []  # no network for either
