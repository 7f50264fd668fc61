"""Choosing providers, fallback and status, over real HTTP to both fakes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app.ai.base import AIProvider, AIRequest, AIResponse
from app.ai.client import get_ai_client, reset_ai_clients
from app.ai.factory import ProviderChain, clear_validation_cache
from app.ai.providers import (
    CodegenProvider,
    InvalidRequestError,
    OpenAIProvider,
    ProviderAuthenticationError,
    ProviderBadRequestError,
    ProviderNotConfiguredError,
    ProviderServerError,
    ProviderUnavailableError,
    UnknownProviderError,
    create_ai_provider,
    detect_available_credentials,
    get_provider_comparison,
    get_provider_status,
    register_provider,
    unregister_provider,
)
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer


@pytest.fixture(autouse=True)
def _fresh_caches() -> Any:
    clear_validation_cache()
    reset_ai_clients()
    yield
    clear_validation_cache()
    reset_ai_clients()


@pytest.fixture
def both(openai_env: FakeOpenAIServer, codegen_env: FakeCodegenServer):  # type: ignore[no-untyped-def]
    return openai_env, codegen_env


def test_no_credentials_is_a_clear_error() -> None:
    with pytest.raises(ProviderUnavailableError, match="OPENAI_API_KEY"):
        create_ai_provider()


def test_forced_provider_without_credentials(openai_env: FakeOpenAIServer) -> None:
    with pytest.raises(ProviderNotConfiguredError, match="codegen"):
        create_ai_provider(provider_name="codegen")
    assert openai_env.request_count() == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"provider_name": "gemini"}, UnknownProviderError),
        ({"timeout": -1}, InvalidRequestError),
        ({"timeout": 0}, InvalidRequestError),
        ({"max_retries": -2}, InvalidRequestError),
    ],
)
def test_bad_arguments_fail_before_any_call(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], kwargs: dict[str, Any], error: type
) -> None:
    with pytest.raises(error):
        create_ai_provider(**kwargs)
    assert both[0].request_count() == 0 and both[1].request_count() == 0


def test_bad_prompts_fail_before_any_call(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], env
) -> None:  # type: ignore[no-untyped-def]
    env(AI_MAX_PROMPT_CHARS=100)
    provider = create_ai_provider(validate_on_creation=False)
    for prompt in ["", "   ", "x" * 101]:
        with pytest.raises(InvalidRequestError):
            provider.generate_response(prompt)
    assert both[0].request_count() == 0 and both[1].request_count() == 0


def test_automatic_order_follows_prefer_codegen(
    both: tuple[FakeOpenAIServer, FakeCodegenServer],
) -> None:
    chain = create_ai_provider(validate_on_creation=False)
    assert isinstance(chain, ProviderChain)
    assert [p.name for p in chain.providers] == ["codegen", "openai"]
    chain = create_ai_provider(prefer_codegen=False, validate_on_creation=False)
    assert isinstance(chain, ProviderChain)
    assert [p.name for p in chain.providers] == ["openai", "codegen"]
    single = create_ai_provider(fallback_enabled=False, validate_on_creation=False)
    assert isinstance(single, CodegenProvider)


def test_fallback_from_failing_codegen_to_openai(
    both: tuple[FakeOpenAIServer, FakeCodegenServer],
) -> None:
    fake_openai, fake_codegen = both
    fake_codegen.faults.push(Fault.status_code(503), times=100)
    provider = create_ai_provider(validate_on_creation=False)
    answer = provider.generate_response("who answers?")
    assert answer.provider_name == "openai"
    assert answer.content == "echo: who answers?"
    failures = answer.metadata["fallback_errors"]
    assert [f["provider"] for f in failures] == ["codegen"]
    assert failures[0]["error_type"] == "ProviderServerError"
    # Codegen was tried once plus its retries, then OpenAI once.
    assert fake_codegen.request_count(method="POST") == 1 + provider.providers[0].max_retries  # type: ignore[attr-defined]
    assert len(fake_openai.chat_requests()) == 1


def test_fallback_from_failing_openai_to_codegen(
    both: tuple[FakeOpenAIServer, FakeCodegenServer],
) -> None:
    fake_openai = both[0]
    fake_openai.faults.push(Fault.unauthorized(), times=10)
    provider = create_ai_provider(prefer_codegen=False, validate_on_creation=False)
    answer = provider.generate_response("agent, please")
    assert answer.provider_name == "codegen"
    assert answer.metadata["agent_run_id"]
    assert answer.metadata["fallback_errors"][0]["error_type"] == "ProviderAuthenticationError"
    assert len(fake_openai.chat_requests()) == 1  # 401 is never retried


def test_forced_provider_never_falls_back(both: tuple[FakeOpenAIServer, FakeCodegenServer]) -> None:
    fake_openai, fake_codegen = both
    fake_openai.faults.push(Fault.status_code(500), times=100)
    provider = create_ai_provider(provider_name="openai", validate_on_creation=False, max_retries=2)
    assert isinstance(provider, OpenAIProvider)
    with pytest.raises(ProviderServerError):
        provider.generate_response("only you")
    assert len(fake_openai.chat_requests()) == 3
    assert fake_codegen.request_count() == 0


def test_invalid_request_does_not_fall_back(
    both: tuple[FakeOpenAIServer, FakeCodegenServer],
) -> None:
    provider = create_ai_provider(prefer_codegen=False, validate_on_creation=False)
    with pytest.raises(InvalidRequestError):
        provider.generate_response("x", no_such_option=True)
    assert both[0].request_count() == 0 and both[1].request_count() == 0


def test_validation_on_creation_is_cached(both: tuple[FakeOpenAIServer, FakeCodegenServer]) -> None:
    fake_openai, _ = both
    for _ in range(3):
        create_ai_provider(provider_name="openai")
    assert fake_openai.request_count(path_contains="/models") == 1


def test_validation_drops_refused_provider_from_the_chain(
    both: tuple[FakeOpenAIServer, FakeCodegenServer],
) -> None:
    _, fake_codegen = both
    fake_codegen.faults.push(Fault.unauthorized())
    provider = create_ai_provider()
    assert isinstance(provider, OpenAIProvider)


def test_forced_provider_with_refused_credentials(
    both: tuple[FakeOpenAIServer, FakeCodegenServer],
) -> None:
    fake_openai, _ = both
    fake_openai.faults.push(Fault.unauthorized())
    with pytest.raises(ProviderAuthenticationError):
        create_ai_provider(provider_name="openai")


def test_stats_and_cost_add_up_over_a_run(both: tuple[FakeOpenAIServer, FakeCodegenServer]) -> None:
    fake_openai, _ = both
    fake_openai.cached_tokens = 2
    provider = create_ai_provider(provider_name="openai", validate_on_creation=False, max_retries=0)
    answers = [provider.generate_response(f"question number {n}", model="gpt-4o") for n in range(5)]
    fake_openai.faults.push(Fault.status_code(400))
    with pytest.raises(ProviderBadRequestError):
        provider.generate_response("refused")
    stats = provider.get_stats()
    assert stats["request_count"] == 6
    assert stats["error_count"] == 1
    assert stats["success_rate"] == pytest.approx(5 / 6)
    assert stats["tokens"]["prompt"] == sum(a.usage.prompt_tokens for a in answers)
    assert stats["tokens"]["cached"] == 10
    assert stats["cost_usd"] == pytest.approx(sum(a.cost_usd or 0 for a in answers))
    assert all(a.cost_usd and a.cost_usd > 0 for a in answers)
    assert stats["p95_response_time"] is not None and stats["average_response_time"] > 0


class EchoProvider(AIProvider):
    """A custom provider, registered by name."""

    name = "echo"

    def default_timeout(self) -> float:
        return 1.0

    def default_max_retries(self) -> int:
        return 0

    def is_configured(self) -> bool:
        return True

    def _generate(self, request: AIRequest) -> AIResponse:
        return AIResponse(content=request.prompt[::-1], provider_name=self.name, model="rev")

    def validate_credentials(self) -> bool:
        return True

    def get_available_models(self) -> list[str]:
        return ["rev"]


def test_custom_provider_can_be_registered_and_forced() -> None:
    register_provider("echo", lambda **kw: EchoProvider(**kw))
    try:
        answer = create_ai_provider(provider_name="echo").generate_response("abc")
        assert answer.content == "cba" and answer.provider_name == "echo"
        assert detect_available_credentials()["echo"] is True
        # With no built-in credentials, automatic choice finds the custom provider.
        assert create_ai_provider().name == "echo"
    finally:
        unregister_provider("echo")
    with pytest.raises(UnknownProviderError):
        create_ai_provider(provider_name="echo")


def test_no_secret_in_status_repr_or_debug_logs(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], caplog: pytest.LogCaptureFixture, env
) -> None:  # type: ignore[no-untyped-def]
    fake_openai, fake_codegen = both
    caplog.set_level(logging.DEBUG)
    secrets = [fake_openai.api_key, fake_codegen.token]
    fake_codegen.faults.push(Fault.status_code(503), times=100)
    provider = create_ai_provider(validate_on_creation=False)
    texts = [
        repr(provider),
        repr(provider.providers),  # type: ignore[attr-defined]
        str(get_provider_status()),
        str(get_provider_comparison()),
        str(detect_available_credentials()),
    ]
    try:
        provider.generate_response("hello")
    except Exception as exc:
        texts.append(repr(exc))
    texts.append(caplog.text)
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_status_and_comparison(both: tuple[FakeOpenAIServer, FakeCodegenServer]) -> None:
    status = get_provider_status(validate=True)
    assert status["providers"]["openai"]["configured"] is True
    assert status["providers"]["openai"]["valid"] is True
    assert status["automatic_order"] == ["codegen", "openai"]
    comparison = get_provider_comparison()
    assert comparison["summary"]["recommended_provider"] == "codegen"
    assert comparison["summary"]["fallback_possible"] is True
    assert detect_available_credentials() == {"codegen": True, "openai": True}


def test_get_ai_client_is_shared(openai_env: FakeOpenAIServer) -> None:
    client = get_ai_client()
    assert client is get_ai_client()
    assert client.generate_response("hi").provider_name == "openai"


def test_credentials_in_a_base_url_are_refused(env) -> None:  # type: ignore[no-untyped-def]
    from app.config import ConfigError, get_settings

    env(OPENAI_BASE_URL="http://user:pw-secret@127.0.0.1:9/v1")
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert "OPENAI_BASE_URL" in str(info.value)
    assert "pw-secret" not in str(info.value)


def test_success_rate_is_a_number_before_the_first_call(
    both: tuple[FakeOpenAIServer, FakeCodegenServer],
) -> None:
    """The seed's samples format it (f"{rate:.2%}") on a provider that has asked nothing."""
    chain = create_ai_provider()
    assert isinstance(chain, ProviderChain)
    for stats in (chain.get_stats(), *(p.get_stats() for p in chain.providers)):
        assert stats["request_count"] == 0 and stats["success_rate"] == 0.0
    chain.generate_response("hi")
    assert chain.get_stats()["success_rate"] == 1.0


def test_seed_shaped_status_for_graph_sitter_ai_providers(
    codegen_env: FakeCodegenServer, env: Any
) -> None:
    """What graph_sitter.ai.providers.get_provider_status answers (no graph-sitter needed)."""
    from app.integrations.graph_sitter_providers import get_provider_status as seed_status

    health = seed_status()
    assert set(health) == {"codegen", "openai"}
    assert health["codegen"]["is_available"] is True and "error" not in health["codegen"]
    assert health["codegen"]["valid"] is True  # checked: a health check
    assert health["openai"] == {
        **get_provider_status()["providers"]["openai"],
        "is_available": False,
        "error": "not configured (set OPENAI_API_KEY)",
    }
    env(CODEGEN_TOKEN="refused")
    assert seed_status()["codegen"]["error"] == "credentials refused"
    assert seed_status(validate=False)["codegen"]["is_available"] is True  # settings only
    env(CODEGEN_BASE_URL="http://127.0.0.1:45999")  # nothing listens: cannot be checked
    refused = seed_status()["codegen"]
    assert refused["error"] == f"credentials could not be checked ({refused['error_type']})"
