"""The fake OpenAI server answers like the real API (shapes, auth, headers, faults)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
import requests

from app.sandbox.base import Fault
from app.sandbox.openai_server import (
    TINY_CONTEXT,
    FakeOpenAIServer,
    context_length_fault,
    insufficient_quota_fault,
)

SET_ANSWER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "set_answer",
        "description": "Use this function to set the final answer to the given prompt.",
        "parameters": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        },
    },
}

RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def post_chat(
    srv: FakeOpenAIServer, body: Any, *, key: str | None = None, timeout: float = 2
) -> requests.Response:
    headers = {} if key == "" else {"Authorization": f"Bearer {key or srv.api_key}"}
    return requests.post(
        f"{srv.url}/chat/completions", json=body, headers=headers, timeout=timeout
    )


def chat_body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def assert_error_shape(resp: requests.Response, status: int, code: str | None) -> dict[str, Any]:
    assert resp.status_code == status
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code
    return dict(error)


def test_url_is_root_plus_v1(fake_openai: FakeOpenAIServer) -> None:
    assert fake_openai.url == fake_openai.root_url + "/v1"
    assert fake_openai.url.startswith("http://127.0.0.1:")


def test_context_manager_starts_and_stops() -> None:
    with FakeOpenAIServer(api_key="sk-other") as srv:
        resp = requests.get(
            f"{srv.url}/models", headers={"Authorization": "Bearer sk-other"}, timeout=2
        )
        assert resp.status_code == 200
        url = srv.url
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/models", timeout=1)


def test_chat_completion_full_shape(fake_openai: FakeOpenAIServer) -> None:
    resp = post_chat(
        fake_openai,
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "you are terse"},
                {"role": "user", "content": "say hi please"},
            ],
        },
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o"
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: say hi please"
    usage = body["usage"]
    # words of all messages / words of the content
    assert usage["prompt_tokens"] == 6
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == 10
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


def test_headers_request_id_unique_and_rate_limits(fake_openai: FakeOpenAIServer) -> None:
    first = post_chat(fake_openai, chat_body())
    second = post_chat(fake_openai, chat_body())
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    for name in RATE_LIMIT_HEADERS:
        assert name in first.headers
    limit = int(first.headers["x-ratelimit-limit-requests"])
    assert int(first.headers["x-ratelimit-remaining-requests"]) == limit - 1
    assert int(second.headers["x-ratelimit-remaining-requests"]) == limit - 2
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < int(
        second.headers["x-ratelimit-limit-tokens"]
    )
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")


def test_responder_cached_and_reasoning_tokens(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.responder = lambda body: f"{len(body['messages'])} messages seen"
    fake_openai.cached_tokens = 2
    fake_openai.reasoning_tokens = 5
    body = post_chat(fake_openai, chat_body("one two three")).json()
    assert body["choices"][0]["message"]["content"] == "1 messages seen"
    usage = body["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 2
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 5
    assert usage["completion_tokens"] == 3 + 5  # reasoning is part of the completion


def test_max_tokens_cuts_with_length_finish(fake_openai: FakeOpenAIServer) -> None:
    body = post_chat(fake_openai, chat_body("a b c d e f", max_tokens=3)).json()
    assert body["choices"][0]["message"]["content"] == "echo: a b"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("key", ["", "sk-wrong-key-123456"])
def test_chat_needs_the_key(fake_openai: FakeOpenAIServer, key: str) -> None:
    resp = post_chat(fake_openai, chat_body(), key=key)
    error = assert_error_shape(resp, 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert "sk-wrong-key-123456" not in resp.text  # the real API masks the key too
    assert resp.headers["x-request-id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]},
         "messages[0].role"),
        (chat_body(temperature=3), "temperature"),
        (chat_body(frobnicate=True), "frobnicate"),
    ],
)
def test_invalid_bodies_are_400(
    fake_openai: FakeOpenAIServer, body: dict[str, Any], param: str
) -> None:
    resp = post_chat(fake_openai, body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_unknown_model_is_404(fake_openai: FakeOpenAIServer) -> None:
    resp = post_chat(fake_openai, {**chat_body(), "model": "gpt-99"})
    assert_error_shape(resp, 404, "model_not_found")


def test_tiny_context_model(fake_openai: FakeOpenAIServer) -> None:
    ok = post_chat(fake_openai, {**chat_body("short prompt"), "model": "tiny-context"})
    assert ok.status_code == 200
    long_prompt = " ".join(["word"] * (TINY_CONTEXT + 1))
    resp = post_chat(fake_openai, {**chat_body(long_prompt), "model": "tiny-context"})
    error = assert_error_shape(resp, 400, "context_length_exceeded")
    assert error["param"] == "messages"


def test_tool_call_answer_with_sdk(fake_openai: FakeOpenAIServer) -> None:
    # graph-sitter's call: one set_answer tool, tool_choice "required", temperature 0.
    client = openai.OpenAI(api_key=fake_openai.api_key, base_url=fake_openai.url, max_retries=0)
    with client:
        params: dict[str, Any] = {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "context"},
                {"role": "user", "content": "rename foo"},
            ],
            "tools": [SET_ANSWER_TOOL],
            "tool_choice": "required",
            "temperature": 0,
        }
        completion = client.chat.completions.create(**params)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "set_answer"
    assert json.loads(call.function.arguments) == {"answer": "echo: rename foo"}


def test_tool_choice_naming_a_function(fake_openai: FakeOpenAIServer) -> None:
    other = {"type": "function", "function": {"name": "other", "parameters": {}}}
    body = post_chat(
        fake_openai,
        chat_body(
            tools=[other, SET_ANSWER_TOOL],
            tool_choice={"type": "function", "function": {"name": "set_answer"}},
        ),
    ).json()
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "set_answer"


@pytest.mark.parametrize("tool_choice", [None, "auto", "none"])
def test_tools_without_forced_choice_answer_text(
    fake_openai: FakeOpenAIServer, tool_choice: str | None
) -> None:
    body = post_chat(
        fake_openai, chat_body(tools=[SET_ANSWER_TOOL], tool_choice=tool_choice)
    ).json()
    message = body["choices"][0]["message"]
    assert message["content"] == "echo: hello there"
    assert "tool_calls" not in message


def test_models_list(fake_openai: FakeOpenAIServer) -> None:
    resp = requests.get(
        f"{fake_openai.url}/models",
        headers={"Authorization": f"Bearer {fake_openai.api_key}"},
        timeout=2,
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert "gpt-4o-mini" in ids and "tiny-context" in ids
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model"


def test_models_needs_the_key(fake_openai: FakeOpenAIServer) -> None:
    resp = requests.get(f"{fake_openai.url}/models", timeout=2)
    assert_error_shape(resp, 401, "invalid_api_key")


def test_models_with_sdk(fake_openai: FakeOpenAIServer) -> None:
    with openai.OpenAI(
        api_key=fake_openai.api_key, base_url=fake_openai.url, max_retries=0
    ) as client:
        assert [m.id for m in client.models.list()] == list(fake_openai.models)


def test_unknown_path_is_404(fake_openai: FakeOpenAIServer) -> None:
    resp = requests.post(
        f"{fake_openai.url}/nothing",
        json={},
        headers={"Authorization": f"Bearer {fake_openai.api_key}"},
        timeout=2,
    )
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("fault", "status", "kind", "code"),
    [
        (Fault.rate_limit(retry_after=1), 429, "rate_limit_exceeded", "rate_limit_exceeded"),
        (Fault.status_code(500), 500, "server_error", None),
        (Fault.status_code(503), 503, "server_error", None),
        (Fault.unauthorized(), 401, "invalid_request_error", "invalid_api_key"),
        (insufficient_quota_fault(), 429, "insufficient_quota", "insufficient_quota"),
        (context_length_fault(), 400, "invalid_request_error", "context_length_exceeded"),
    ],
)
def test_status_faults_use_openai_error_shape(
    fake_openai: FakeOpenAIServer, fault: Fault, status: int, kind: str, code: str | None
) -> None:
    fake_openai.faults.push(fault)
    resp = post_chat(fake_openai, chat_body())
    error = assert_error_shape(resp, status, code)
    assert error["type"] == kind
    assert resp.headers["x-request-id"]
    for name, value in fault.headers.items():
        assert resp.headers[name] == value
    # The fault is used up: the next request is answered normally.
    assert post_chat(fake_openai, chat_body()).status_code == 200


def test_rate_limit_fault_headers(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.faults.push(Fault.rate_limit(retry_after=2))
    fake_openai.faults.push(Fault.rate_limit(retry_after_ms=250))
    assert post_chat(fake_openai, chat_body()).headers["Retry-After"] == "2"
    assert post_chat(fake_openai, chat_body()).headers["retry-after-ms"] == "250"


def test_bad_json_fault(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.faults.push(Fault.bad_json())
    resp = post_chat(fake_openai, chat_body())
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        resp.json()


def test_drop_fault(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.faults.push(Fault.drop())
    with pytest.raises(requests.ConnectionError):
        post_chat(fake_openai, chat_body())


def test_slow_fault(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.faults.push(Fault.slow(1.0))
    with pytest.raises(requests.Timeout):
        post_chat(fake_openai, chat_body(), timeout=0.2)


def test_requests_are_recorded(fake_openai: FakeOpenAIServer) -> None:
    post_chat(fake_openai, chat_body("first"))
    post_chat(fake_openai, chat_body("second"))
    assert fake_openai.request_count("/chat/completions", method="POST") == 2
    bodies = fake_openai.chat_requests()
    assert [b["messages"][0]["content"] for b in bodies] == ["first", "second"]


def test_model_aliases_answer_with_snapshot_name(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.model_aliases["gpt-4o"] = "gpt-4o-2024-08-06"
    body = post_chat(fake_openai, {**chat_body(), "model": "gpt-4o"}).json()
    assert body["model"] == "gpt-4o-2024-08-06"


def test_random_rate_limits_only_the_chosen_models(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.rate_limit_randomly(0.5, retry_after=1.0, models=["gpt-4o-mini"], seed=7)
    statuses = [post_chat(fake_openai, chat_body()).status_code for _ in range(40)]
    assert 5 < statuses.count(429) < 35 and set(statuses) == {200, 429}
    assert fake_openai.random_rate_limited == {"gpt-4o-mini": statuses.count(429)}
    other = [post_chat(fake_openai, chat_body(model="gpt-4.1-mini")) for _ in range(20)]
    assert {r.status_code for r in other} == {200}
    fake_openai.rate_limit_randomly(1.0)
    resp = post_chat(fake_openai, chat_body(model="gpt-4.1-mini"))
    error = assert_error_shape(resp, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert resp.headers["retry-after-ms"] == "1000" and resp.headers["retry-after"] == "1"
    for name in RATE_LIMIT_HEADERS:
        assert resp.headers[name]
    fake_openai.rate_limit_randomly(0)
    assert post_chat(fake_openai, chat_body()).status_code == 200
