"""OpenAIProvider against the fake OpenAI server, over real HTTP."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from app.ai.base import AIRequest, Usage
from app.ai.openai_provider import (
    PASSTHROUGH_PARAMS,
    OpenAIProvider,
    parse_reset_duration,
    rate_limit_info,
)
from app.ai.pricing import DEFAULT_PRICES
from app.config import get_settings
from app.core.errors import (
    AIProviderError,
    ContextTooLongError,
    InvalidRequestError,
    ProviderAuthenticationError,
    ProviderBadRequestError,
    ProviderConnectionError,
    ProviderNotConfiguredError,
    ProviderNotFoundError,
    ProviderQuotaError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderServerError,
    ProviderTimeoutError,
)
from app.core.retry import RetryPolicy
from app.sandbox.base import Fault
from app.sandbox.openai_server import (
    TINY_CONTEXT,
    FakeOpenAIServer,
    insufficient_quota_fault,
)

CHAT = "/v1/chat/completions"


class RecordingPolicy(RetryPolicy):
    """The provider's policy, but the waits are recorded instead of slept."""

    waits: list[float]

    def call(self, fn: Callable[[], Any], *, sleep: Any = None, before_sleep: Any = None) -> Any:
        return super().call(fn, sleep=self.waits.append, before_sleep=before_sleep)


def record_waits(provider: OpenAIProvider) -> list[float]:
    policy = RecordingPolicy(**dataclasses.asdict(provider.retry_policy))
    waits: list[float] = []
    object.__setattr__(policy, "waits", waits)
    provider.retry_policy = policy
    return waits


@pytest.fixture
def make_provider(openai_env: FakeOpenAIServer) -> Iterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []

    def make(**kwargs: Any) -> OpenAIProvider:
        provider = OpenAIProvider(**kwargs)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


@pytest.fixture
def provider(make_provider: Callable[..., OpenAIProvider]) -> OpenAIProvider:
    return make_provider()


# --- answers ----------------------------------------------------------------------------


def test_answer_with_usage_cost_request_id_and_time(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    response = provider.generate_response(
        "hello there friend", system_prompt="be brief", model="gpt-4o-mini", max_tokens=50
    )
    assert response.content == "echo: hello there friend"
    assert response.provider_name == "openai"
    assert response.model == "gpt-4o-mini"
    assert response.usage == Usage(prompt_tokens=5, completion_tokens=4)
    assert response.usage.total_tokens == 9
    price = DEFAULT_PRICES["gpt-4o-mini"]
    assert response.cost_usd == pytest.approx((5 * price.input + 4 * price.output) / 1e6)
    assert response.request_id is not None and response.request_id.startswith("req_")
    assert isinstance(response.response_time, timedelta)
    assert timedelta(0) < response.response_time < timedelta(seconds=2)
    assert response.metadata["finish_reason"] == "stop"
    assert response.metadata["response_id"].startswith("chatcmpl-")
    rate_limit = response.metadata["rate_limit"]
    assert rate_limit["limit_requests"] == openai_env.rate_limit_requests
    assert rate_limit["remaining_requests"] == openai_env.rate_limit_requests - 1
    assert "reset_tokens" in rate_limit and "reset_tokens_seconds" in rate_limit

    sent = openai_env.chat_requests()[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there friend"},
    ]
    assert sent["temperature"] == 0.0
    assert sent["max_tokens"] == 50
    headers = openai_env.requests[-1].headers
    assert headers["authorization"] == f"Bearer {openai_env.api_key}"


def test_default_model_from_settings(
    env: Callable[..., None], openai_env: FakeOpenAIServer
) -> None:
    env(OPENAI_DEFAULT_MODEL="gpt-4.1-nano")
    with OpenAIProvider() as provider:
        assert provider.generate_response("hi").model == "gpt-4.1-nano"
    assert openai_env.chat_requests()[-1]["model"] == "gpt-4.1-nano"
    assert "max_tokens" not in openai_env.chat_requests()[-1]


def test_cached_tokens_use_cached_price(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    openai_env.cached_tokens = 4
    openai_env.reasoning_tokens = 2
    response = provider.generate_response("one two three four five six", model="gpt-4o")
    assert response.usage == Usage(
        prompt_tokens=6, completion_tokens=7 + 2, cached_tokens=4, reasoning_tokens=2
    )
    price = DEFAULT_PRICES["gpt-4o"]
    assert price.cached_input is not None
    expected = (2 * price.input + 4 * price.cached_input + 9 * price.output) / 1e6
    assert response.cost_usd == pytest.approx(expected)
    uncached = (6 * price.input + 9 * price.output) / 1e6
    assert response.cost_usd is not None and response.cost_usd < uncached


def test_dated_snapshot_is_priced_as_its_model(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    openai_env.model_aliases["gpt-4o"] = "gpt-4o-2024-08-06"
    response = provider.generate_response("hi", model="gpt-4o")
    assert response.model == "gpt-4o-2024-08-06"
    assert response.metadata["requested_model"] == "gpt-4o"
    assert response.cost_usd is not None and response.cost_usd > 0


def test_unknown_model_price_gives_no_cost(provider: OpenAIProvider) -> None:
    response = provider.generate_response("hi", model="local-model")
    assert response.model == "local-model"
    assert response.cost_usd is None
    assert response.usage.total_tokens > 0


def test_missing_usage_fields_count_zero(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    openai_env.send_usage_details = False
    response = provider.generate_response("a b c")
    assert response.usage == Usage(prompt_tokens=3, completion_tokens=4)
    openai_env.send_usage = False
    response = provider.generate_response("a b c")
    assert response.usage == Usage()
    assert response.cost_usd == 0.0


def test_tool_call_answer_graph_sitter_style(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "set_answer",
                "parameters": {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}},
                    "required": ["answer"],
                },
            },
        }
    ]
    response = provider.generate_response(
        "rename foo to bar", model="gpt-4o", tools=tools, tool_choice="required"
    )
    assert response.content == "echo: rename foo to bar"
    assert response.metadata["finish_reason"] == "tool_calls"
    assert response.metadata["tool_calls"] == [
        {"name": "set_answer", "arguments": '{"answer": "echo: rename foo to bar"}'}
    ]
    sent = openai_env.chat_requests()[-1]
    assert sent["tools"] == tools
    assert sent["tool_choice"] == "required"


def test_passthrough_none_is_not_sent(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    provider.generate_response("hi", tool_choice=None, seed=7, top_p=0.5, stop=["\n"])
    sent = openai_env.chat_requests()[-1]
    assert "tool_choice" not in sent
    assert (sent["seed"], sent["top_p"], sent["stop"]) == (7, 0.5, ["\n"])


def test_length_finish_reason(provider: OpenAIProvider) -> None:
    response = provider.generate_response("a b c d e", max_tokens=2)
    assert response.content == "echo: a"
    assert response.metadata["finish_reason"] == "length"


# --- refused before the network -----------------------------------------------------------


@pytest.mark.parametrize("name", ["frobnicate", "stream", "n", "extra_headers", "timeout"])
def test_unknown_extra_refused_before_any_request(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer, name: str
) -> None:
    extra: dict[str, Any] = {name: 1}
    with pytest.raises(InvalidRequestError, match=name) as info:
        provider.generate_response("hi", **extra)
    assert info.value.provider_name == "openai"
    assert openai_env.request_count() == 0
    assert provider._client is None  # not even a client was made


def test_unknown_extra_refused_in_generate_once(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    request = AIRequest.build("hi", frobnicate=True)
    with pytest.raises(InvalidRequestError, match="frobnicate"):
        provider.generate_once(request)
    assert openai_env.request_count() == 0


def test_every_passthrough_param_is_one_the_sdk_takes() -> None:
    import inspect

    import openai

    params = set(inspect.signature(openai.resources.chat.Completions.create).parameters)
    assert params >= PASSTHROUGH_PARAMS


def test_not_configured(env: Callable[..., None]) -> None:
    env(OPENAI_API_KEY=None)
    provider = OpenAIProvider()
    assert not provider.is_configured()
    assert provider.validate_credentials() is False
    with pytest.raises(ProviderNotConfiguredError):
        provider.generate_response("hi")
    assert provider.get_available_models() == sorted(DEFAULT_PRICES)


def test_construction_touches_nothing(env: Callable[..., None]) -> None:
    env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    provider = OpenAIProvider()
    assert provider._client is None
    assert provider.timeout == get_settings().openai_timeout
    assert provider.max_retries == get_settings().openai_max_retries


def test_client_settings(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    client = provider.client
    assert client is provider.client  # one client per provider
    assert client.max_retries == 0
    assert client.timeout == 2.0
    assert str(client.base_url).rstrip("/") == openai_env.url


# --- retries ----------------------------------------------------------------------------------


def test_retry_after_seconds_waited_exactly(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(Fault.rate_limit(retry_after=1))
    response = provider.generate_response("hi")
    assert response.content == "echo: hi"
    assert waits == [1.0]
    assert openai_env.request_count(CHAT) == 2


def test_retry_after_ms(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(Fault.rate_limit(retry_after_ms=250))
    provider.generate_response("hi")
    assert waits == [0.25]


def test_retry_after_http_date(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(Fault.rate_limit(retry_after=3, http_date=True))
    provider.generate_response("hi")
    assert len(waits) == 1
    assert 1.0 <= waits[0] <= 3.0  # an HTTP date has whole seconds


def test_429_without_header_backs_off_within_cap(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(Fault.rate_limit(), times=3)
    provider.generate_response("hi")
    assert len(waits) == 3
    settings = get_settings()
    for wait in waits:
        assert 0 < wait <= settings.retry_max_delay
    assert waits[0] <= settings.retry_base_delay


def test_retry_after_above_max_is_capped(
    env: Callable[..., None], make_provider: Callable[..., OpenAIProvider],
    openai_env: FakeOpenAIServer,
) -> None:
    env(RETRY_AFTER_MAX=0.5)
    provider = make_provider()
    waits = record_waits(provider)
    openai_env.faults.push(Fault.rate_limit(retry_after=30))
    provider.generate_response("hi")
    assert waits == [0.5]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_retried_then_succeed(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer, status: int
) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(Fault.status_code(status), times=2)
    response = provider.generate_response("hi")
    assert response.content == "echo: hi"
    assert len(waits) == 2
    assert openai_env.request_count(CHAT) == 3
    stats = provider.get_stats()
    assert (stats["request_count"], stats["error_count"]) == (3, 2)
    assert stats["errors_by_type"] == {"ProviderServerError": 2}


def test_retries_spent_raise_last_error(
    make_provider: Callable[..., OpenAIProvider], openai_env: FakeOpenAIServer
) -> None:
    provider = make_provider(max_retries=2)
    record_waits(provider)
    openai_env.faults.push(Fault.status_code(500), times=2)
    openai_env.faults.push(Fault.rate_limit(retry_after=0.01))
    with pytest.raises(ProviderRateLimitError) as info:
        provider.generate_response("hi")
    assert openai_env.request_count(CHAT) == 3
    error = info.value
    assert error.status_code == 429
    assert error.retry_after == pytest.approx(0.01)
    assert error.provider_name == "openai"
    assert error.request_id is not None


@pytest.mark.parametrize(
    ("fault", "error_cls"),
    [
        (Fault.status_code(400), ProviderBadRequestError),
        (Fault.unauthorized(), ProviderAuthenticationError),
        (Fault.status_code(403), ProviderAuthenticationError),
        (Fault.status_code(404), ProviderNotFoundError),
        (Fault.status_code(422), ProviderBadRequestError),
    ],
)
def test_client_errors_tried_once(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer, fault: Fault,
    error_cls: type[AIProviderError],
) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(fault, times=5)
    with pytest.raises(error_cls) as info:
        provider.generate_response("hi")
    assert type(info.value) is error_cls
    assert info.value.status_code == fault.status
    assert info.value.request_id is not None
    assert not info.value.retryable
    assert openai_env.request_count(CHAT) == 1
    assert waits == []


def test_wrong_key_is_authentication_error(
    env: Callable[..., None], make_provider: Callable[..., OpenAIProvider],
    openai_env: FakeOpenAIServer,
) -> None:
    env(OPENAI_API_KEY="sk-not-the-right-one")
    provider = make_provider()
    with pytest.raises(ProviderAuthenticationError) as info:
        provider.generate_response("hi")
    assert info.value.status_code == 401
    assert "invalid_api_key" in info.value.message
    assert openai_env.request_count(CHAT) == 1
    assert provider.validate_credentials() is False


def test_unknown_model_is_not_found(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderNotFoundError) as info:
        provider.generate_response("hi", model="gpt-99")
    assert "model_not_found" in info.value.message


def test_timeout(
    make_provider: Callable[..., OpenAIProvider], openai_env: FakeOpenAIServer
) -> None:
    provider = make_provider(timeout=0.5, max_retries=0)
    openai_env.faults.push(Fault.slow(1.5))
    with pytest.raises(ProviderTimeoutError) as info:
        provider.generate_response("hi")
    assert info.value.timeout_duration == 0.5
    assert info.value.retryable
    assert info.value.provider_name == "openai"


def test_timeout_uses_configured_setting(
    env: Callable[..., None], make_provider: Callable[..., OpenAIProvider],
    openai_env: FakeOpenAIServer,
) -> None:
    env(OPENAI_TIMEOUT=0.4, OPENAI_MAX_RETRIES=1)
    provider = make_provider()
    waits = record_waits(provider)
    openai_env.faults.push(Fault.slow(1.0), times=2)
    with pytest.raises(ProviderTimeoutError) as info:
        provider.generate_response("hi")
    assert info.value.timeout_duration == 0.4
    assert len(waits) == 1  # retried once, as timeouts are retryable


def test_timeout_then_success(
    make_provider: Callable[..., OpenAIProvider], openai_env: FakeOpenAIServer
) -> None:
    provider = make_provider(timeout=0.4)
    record_waits(provider)
    openai_env.faults.push(Fault.slow(1.0))
    assert provider.generate_response("hi").content == "echo: hi"
    assert openai_env.request_count(CHAT) == 2


def test_dropped_connection(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(Fault.drop(), times=10)
    with pytest.raises(ProviderConnectionError) as info:
        provider.generate_response("hi")
    assert info.value.retryable
    assert info.value.provider_name == "openai"
    assert len(waits) == provider.max_retries
    assert openai_env.request_count(CHAT) == provider.max_retries + 1


def test_connection_refused(env: Callable[..., None], make_provider: Callable[..., Any]) -> None:
    env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL="http://127.0.0.1:9/v1", OPENAI_MAX_RETRIES=0)
    with pytest.raises(ProviderConnectionError):
        make_provider().generate_response("hi")


def test_bad_json(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    openai_env.faults.push(Fault.bad_json())
    with pytest.raises(ProviderResponseError) as info:
        provider.generate_once(provider.build_request("hi"))
    assert info.value.provider_name == "openai"
    assert info.value.retryable
    # Through the retry loop, the next try succeeds.
    record_waits(provider)
    openai_env.faults.push(Fault.bad_json())
    assert provider.generate_response("hi").content == "echo: hi"


def test_json_without_choices(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    openai_env.faults.push(Fault.status_code(200, body={"id": "x", "object": "chat.completion"}))
    with pytest.raises(ProviderResponseError, match="no choices"):
        provider.generate_once(provider.build_request("hi"))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ([{"choices": []}], "no choices"),  # JSON, but not an object
        ({"choices": "many"}, "no choices"),
        ({"choices": [{"index": 0, "message": "hi"}]}, "has no message"),
        ({"choices": [{"index": 0, "message": {"content": ["a"]}}]}, "a list, not text"),
    ],
)
def test_answers_of_the_wrong_shape_are_response_errors(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer, body: object, match: str
) -> None:
    openai_env.faults.push(Fault.status_code(200, body=body))
    with pytest.raises(ProviderResponseError, match=match):
        provider.generate_once(provider.build_request("hi"))


def test_odd_usage_counts_as_zero(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    message = {"role": "assistant", "content": "ok"}
    body = {
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": "3", "completion_tokens": 2, "prompt_tokens_details": None},
    }
    openai_env.faults.push(Fault.status_code(200, body=body))
    response = provider.generate_once(provider.build_request("hi"))
    assert (response.content, response.usage.prompt_tokens) == ("ok", 0)
    assert (response.usage.completion_tokens, response.usage.cached_tokens) == (2, 0)
    assert response.metadata["finish_reason"] == "stop"


def test_context_too_long(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    prompt = " ".join(["word"] * (TINY_CONTEXT + 5))
    with pytest.raises(ContextTooLongError) as info:
        provider.generate_response(prompt, model="tiny-context")
    assert info.value.status_code == 400
    assert not info.value.retryable
    assert openai_env.request_count(CHAT) == 1


def test_insufficient_quota_not_retried(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    waits = record_waits(provider)
    openai_env.faults.push(insufficient_quota_fault(), times=3)
    with pytest.raises(ProviderQuotaError) as info:
        provider.generate_response("hi")
    assert info.value.status_code == 429
    assert not info.value.retryable
    assert openai_env.request_count(CHAT) == 1
    assert waits == []


# --- stats ------------------------------------------------------------------------------------


def test_stats_add_up(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    record_waits(provider)
    openai_env.cached_tokens = 1
    responses = [provider.generate_response(f"prompt number {i}") for i in range(4)]
    responses.append(provider.generate_response("unpriced", model="local-model"))
    openai_env.faults.push(Fault.status_code(503))  # one retried error
    responses.append(provider.generate_response("after a 503"))
    openai_env.faults.push(Fault.status_code(400))  # one final error
    with pytest.raises(ProviderBadRequestError):
        provider.generate_response("refused")

    stats = provider.get_stats()
    assert stats["provider_name"] == "openai"
    assert stats["request_count"] == len(responses) + 2
    assert stats["error_count"] == 2
    assert stats["success_count"] == len(responses)
    assert stats["success_rate"] == pytest.approx(len(responses) / (len(responses) + 2))
    assert stats["errors_by_type"] == {"ProviderServerError": 1, "ProviderBadRequestError": 1}
    assert stats["tokens"] == {
        "prompt": sum(r.usage.prompt_tokens for r in responses),
        "completion": sum(r.usage.completion_tokens for r in responses),
        "cached": sum(r.usage.cached_tokens for r in responses),
        "reasoning": 0,
    }
    assert stats["total_tokens"] == sum(r.usage.total_tokens for r in responses)
    assert stats["cost_usd"] == pytest.approx(
        sum(r.cost_usd for r in responses if r.cost_usd is not None)
    )
    assert stats["average_response_time"] > 0


def test_one_client_shared_by_threads(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: provider.generate_response(f"n {i}"), range(40)))
    assert sorted(a.content for a in answers) == sorted(f"echo: n {i}" for i in range(40))
    assert len({a.request_id for a in answers}) == 40
    assert provider.get_stats()["request_count"] == 40
    assert openai_env.request_count(CHAT) == 40


# --- credentials and models -----------------------------------------------------------------


def test_validate_credentials(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    assert provider.validate_credentials() is True
    assert openai_env.request_count("/v1/models", method="GET") == 1
    openai_env.faults.push(Fault.status_code(403))
    assert provider.validate_credentials() is False
    openai_env.faults.push(Fault.status_code(503))
    with pytest.raises(ProviderServerError):
        provider.validate_credentials()


def test_available_models(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    assert provider.get_available_models() == sorted(openai_env.models)


def test_available_models_fall_back_to_price_table(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    openai_env.faults.push(Fault.status_code(500))
    with caplog.at_level(logging.WARNING, logger="app.ai.openai_provider"):
        assert provider.get_available_models() == sorted(DEFAULT_PRICES)
    assert "ProviderServerError" in caplog.text


# --- secrets ----------------------------------------------------------------------------------


def test_repr_never_shows_the_key(provider: OpenAIProvider, openai_env: FakeOpenAIServer) -> None:
    provider.generate_response("hi")
    text = repr(provider) + str(provider)
    assert openai_env.api_key not in text
    assert "configured=True" in text


def test_no_key_in_debug_logs(
    provider: OpenAIProvider, openai_env: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpcore2", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        provider.generate_response("hi")
        openai_env.faults.push(Fault.unauthorized())
        with pytest.raises(ProviderAuthenticationError):
            provider.generate_response("hi")
        provider.validate_credentials()
    finally:
        for name in ("openai", "httpx2", "httpcore2", "httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert any(r.name.startswith("openai") for r in caplog.records)  # the SDK did log
    assert openai_env.api_key not in caplog.text
    for record in caplog.records:
        assert openai_env.api_key not in record.getMessage()
        assert openai_env.api_key not in repr(record.args)


def test_no_key_in_sdk_debug_logging_openai_log_env(openai_env: FakeOpenAIServer) -> None:
    # OPENAI_LOG=debug is read by the SDK at import: check a fresh process.
    script = textwrap.dedent(
        """
        import logging
        logging.basicConfig(level=logging.DEBUG)
        from app.ai.openai_provider import OpenAIProvider
        with OpenAIProvider() as p:
            print(p.generate_response("hi").content)
        """
    )
    environment = {**os.environ, "OPENAI_LOG": "debug"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "echo: hi" in done.stdout
    assert "Sending HTTP Request" in done.stderr  # the SDK's debug log was on
    assert openai_env.api_key not in done.stdout + done.stderr


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1s", 1.0), ("1.5s", 1.5), ("6m0s", 360.0), ("1h2m3s", 3723.0),
     ("2", 2.0), ("soon", None), ("", None)],
)
def test_parse_reset_duration(text: str, seconds: float | None) -> None:
    assert parse_reset_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_rate_limit_info() -> None:
    info = rate_limit_info(
        {
            "X-RateLimit-Limit-Requests": "60",
            "x-ratelimit-remaining-tokens": "many",
            "x-ratelimit-reset-requests": "1s",
            "content-type": "application/json",
        }
    )
    assert info == {
        "limit_requests": 60,
        "remaining_tokens": "many",
        "reset_requests": "1s",
        "reset_requests_seconds": 1.0,
    }
