"""The graph-sitter integration's parts that need no graph-sitter (these run on 3.11 too):
the answer semantics, the environment switch, the Codegen provider's tool options, the
report rendering. The tests with the real package are in tests/graph_sitter/."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from app.ai.base import AIRequest, AIResponse
from app.ai.codegen_provider import CodegenProvider
from app.config import ConfigError
from app.core.errors import InvalidRequestError
from app.integrations import graph_sitter as integration
from app.integrations.analyze import render_markdown, retry_key
from app.integrations.graph_sitter import answer_from, env_switch_on, tool_choice_for

HAS_GRAPH_SITTER = importlib.util.find_spec("graph_sitter") is not None


def chat(**metadata: Any) -> AIResponse:
    return AIResponse(content="ignored", provider_name="openai", model="m", metadata=metadata)


def tool_call(arguments: str) -> list[dict[str, Any]]:
    return [{"name": "set_answer", "arguments": arguments}]


def test_answer_from_follows_graph_sitter() -> None:
    ok = chat(finish_reason="tool_calls", tool_calls=tool_call('{"answer": "a\\\\nb"}'))
    assert answer_from(ok) == "a\nb"  # graph-sitter's unicode_escape decoding
    stop = chat(finish_reason="stop", tool_calls=tool_call('{"answer": "x"}'))
    assert answer_from(stop) == "x"
    with pytest.raises(ValueError, match="No tool call found"):
        answer_from(chat(finish_reason="stop"))
    with pytest.raises(ValueError, match="No answer found in tool call"):
        answer_from(chat(finish_reason="tool_calls", tool_calls=tool_call('{"other": 1}')))
    with pytest.raises(ValueError, match="ran out of tokens"):
        answer_from(chat(finish_reason="length"))
    with pytest.raises(ValueError, match="content filter"):
        answer_from(chat(finish_reason="content_filter"))
    with pytest.raises(ValueError, match="Unknown finish reason from AI: weird"):
        answer_from(chat(finish_reason="weird"))
    # an agent's (or any provider's without function calling) answer is its text
    agent = AIResponse(content="Done: a\\n", provider_name="codegen", model="codegen-agent")
    assert answer_from(agent) == "Done: a\\n"


def test_tool_choice_is_forced_for_gpt_models_and_the_default() -> None:
    assert tool_choice_for("gpt-4o") == "required"
    assert tool_choice_for(None) == "required"
    assert tool_choice_for("o3-mini") is None


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("1", True),
        ("true", True),
        (" YES ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("", False),
        ("off", False),
        (None, False),
    ],
)
def test_environment_switch_values(value: str | None, on: bool) -> None:
    environ = {} if value is None else {"AIW_GRAPH_SITTER": value}
    assert env_switch_on(environ) is on


def test_environment_switch_refuses_other_values() -> None:
    with pytest.raises(ConfigError, match="AIW_GRAPH_SITTER"):
        env_switch_on({"AIW_GRAPH_SITTER": "maybe"})


def test_install_from_env_off_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIW_GRAPH_SITTER", raising=False)
    assert integration.install_from_env() is False
    assert not integration.is_installed()


@pytest.mark.skipif(HAS_GRAPH_SITTER, reason="graph-sitter is installed here")
def test_without_graph_sitter_install_says_how_to_get_it() -> None:
    with pytest.raises(integration.GraphSitterUnavailableError, match=r"ai-worker\[graph-sitter\]"):
        integration.install()
    assert not integration.is_installed()


def test_codegen_ignores_the_chat_tool_options() -> None:
    """A set_answer request may fall back to an agent run: its answer is the run's text."""
    request = AIRequest.build(
        "x", tools=[{"type": "function"}], tool_choice="required", parallel_tool_calls=False
    )
    assert CodegenProvider().run_options(request)["repo_id"] is None
    with pytest.raises(InvalidRequestError, match="codegen does not take option"):
        CodegenProvider().run_options(AIRequest.build("x", top_p=0.5))


def test_retry_keys_and_markdown() -> None:
    assert retry_key("gs:abc", 0) == "gs:abc" and retry_key("gs:abc", 2) == "gs:abc:retry2"
    report = {
        "repository_name": "r",
        "repository": "/r",
        "commit": None,
        "prompt": "p",
        "filter": "functions",
        "provider": None,
        "model": None,
        "generated_at": "now",
        "complete": True,
        "totals": {
            "symbols": 2,
            "succeeded": 1,
            "failed": 1,
            "pending": 0,
            "skipped": 0,
            "total_tokens": 3,
            "cost_usd": 0.5,
        },
        "symbols": [
            {
                "kind": "function",
                "name": "f",
                "file": "a.py",
                "line": 1,
                "status": "succeeded",
                "provider": "openai",
                "model": "m",
                "answer": "has ``` inside",
                "error": None,
            },
            {
                "kind": "class",
                "name": "C",
                "file": "a.py",
                "line": None,
                "status": "failed",
                "provider": None,
                "model": None,
                "answer": None,
                "error": "E: boom",
            },
        ],
    }
    text = render_markdown(report)
    assert "## function `f`" in text and "````\nhas ``` inside\n````" in text
    assert "> E: boom" in text and "| 2 | 1 | 1 | 0 | 0 | 3 | 0.500000 |" in text
