"""``Codebase.ai`` through the provider layer: real graph-sitter on a small repository,
the fake OpenAI and Codegen servers over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("graph_sitter")

from graph_sitter import Codebase
from graph_sitter.codebase.codebase_ai import generate_system_prompt, generate_tools
from graph_sitter.shared.exceptions.control_flow import MaxAIRequestsError

from app.ai.base import AIProvider, AIRequest, AIResponse
from app.ai.factory import clear_validation_cache, register_provider, unregister_provider
from app.core.errors import ProviderServerError
from app.integrations import graph_sitter as integration
from app.integrations.graph_sitter_run import PTH_LINE, PTH_NAME
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_validation_cache() -> Iterator[None]:
    clear_validation_cache()
    yield
    clear_validation_cache()


def tool_answer_requests(fake: FakeOpenAIServer) -> list[dict[str, Any]]:
    return [b for b in fake.chat_requests() if b.get("tools")]


def test_unchanged_call_answers_through_the_provider_layer(
    openai_env: FakeOpenAIServer, codebase: Any, routed: Any, env: Callable[..., None]
) -> None:
    env(PREFER_CODEGEN="false")
    original = Codebase.ai
    routed.install()
    assert routed.is_installed() and Codebase.ai is not original
    assert openai_env.requests == []  # install() calls nothing

    target = codebase.get_function("net_price")
    context = codebase.get_class("Basket")
    # the call exactly as a graph-sitter script writes it
    answer = codebase.ai("Suggest a better name", target=target, context=context)

    assert answer == "echo: Suggest a better name"
    [body] = openai_env.chat_requests()
    assert body["messages"] == [
        {"role": "system", "content": generate_system_prompt(target, context)},
        {"role": "user", "content": "Suggest a better name"},
    ]
    assert "def net_price(gross, rate):" in body["messages"][0]["content"]
    assert "class Basket:" in body["messages"][0]["content"]
    assert body["temperature"] == 0
    assert body["model"] == "gpt-4o"  # graph-sitter's default model
    assert body["tools"] == generate_tools()
    assert body["tools"][0]["function"]["name"] == "set_answer"
    assert body["tool_choice"] == "required"

    stats = routed.get_stats()
    openai_stats = stats["providers"]["openai"]
    assert openai_stats["request_count"] == 1 and openai_stats["error_count"] == 0
    assert openai_stats["tokens"]["prompt"] > 100  # the system prompt, counted
    assert openai_stats["tokens"]["completion"] > 0
    assert openai_stats["cost_usd"] > 0 and stats["cost_usd"] == openai_stats["cost_usd"]


def test_same_request_as_graph_sitter_itself(
    openai_env: FakeOpenAIServer,
    codebase: Any,
    routed: Any,
    env: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """graph-sitter's own method against the same fake (its client reads OPENAI_BASE_URL),
    then the installed one: the same body, the same answer."""
    env(PREFER_CODEGEN="false")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_env.url)
    target = codebase.get_function("discount")
    codebase.set_ai_key(openai_env.api_key)
    theirs = codebase.ai("Explain", target=target, context="a shop")
    routed.install()
    ours = codebase.ai("Explain", target=target, context="a shop")
    assert ours == theirs == "echo: Explain"
    first, second = openai_env.chat_requests()
    for field in ("messages", "model", "temperature", "tools", "tool_choice"):
        assert first[field] == second[field], field
    assert codebase._num_ai_requests == 2  # one count for both ways


def test_fallback_from_a_refusing_codegen_to_openai(
    openai_env: FakeOpenAIServer,
    fake_codegen: FakeCodegenServer,
    codebase: Any,
    routed: Any,
    env: Callable[..., None],
) -> None:
    env(
        PREFER_CODEGEN="true",  # Codegen first
        CODEGEN_TOKEN="not-the-token",
        CODEGEN_ORG_ID=fake_codegen.org_id,
        CODEGEN_BASE_URL=fake_codegen.url,
    )
    routed.install(validate_on_creation=False)  # find out at call time
    answer = codebase.ai("Summarise", target=codebase.get_function("slug"))
    assert answer == "echo: Summarise"
    assert fake_codegen.request_count("/agent/run", method="POST") == 1  # tried, 401
    stats = routed.get_stats()["providers"]
    assert stats["codegen"]["errors_by_type"] == {"ProviderAuthenticationError": 1}
    assert stats["openai"]["success_count"] == 1
    assert stats["openai"]["tokens"]["prompt"] > 0
    assert len(tool_answer_requests(openai_env)) == 1


class TextOnlyProvider(AIProvider):
    """A registered provider without function calling: records what it was asked."""

    name = "text-only"
    calls: list[AIRequest] = []

    def default_timeout(self) -> float:
        return 5.0

    def default_max_retries(self) -> int:
        return 0

    def is_configured(self) -> bool:
        return True

    def validate_credentials(self) -> bool:
        return True

    def get_available_models(self) -> list[str]:
        return ["plain"]

    def _generate(self, request: AIRequest) -> AIResponse:
        TextOnlyProvider.calls.append(request)
        return AIResponse(content="a plain answer\\n", provider_name=self.name, model="plain")


def test_openai_out_falls_back_to_a_provider_without_tools(
    openai_env: FakeOpenAIServer, codebase: Any, routed: Any, env: Callable[..., None]
) -> None:
    env(PREFER_CODEGEN="false", OPENAI_MAX_RETRIES=1)
    openai_env.faults.push(Fault.status_code(503), times=2)  # one try and one retry
    register_provider("text-only", lambda **kw: TextOnlyProvider(**kw))
    TextOnlyProvider.calls.clear()
    try:
        routed.install(validate_on_creation=False)
        target = codebase.get_function("net_price")
        answer = codebase.ai("Explain", target=target)
    finally:
        unregister_provider("text-only")
    assert answer == "a plain answer\\n"  # text as is: no tool call to decode
    [request] = TextOnlyProvider.calls
    assert request.system_prompt == generate_system_prompt(target, None)
    assert request.extra == {} and request.model is None  # no tools, no OpenAI model
    assert request.temperature == 0
    stats = routed.get_stats()["providers"]
    assert stats["openai"]["errors_by_type"] == {"ProviderServerError": 2}
    assert stats["text-only"]["success_count"] == 1


def test_no_fallback_without_a_second_provider(
    openai_env: FakeOpenAIServer, codebase: Any, routed: Any, env: Callable[..., None]
) -> None:
    env(OPENAI_MAX_RETRIES=0)
    openai_env.faults.push(Fault.status_code(500))
    routed.install(validate_on_creation=False)
    with pytest.raises(ProviderServerError):
        codebase.ai("Explain", target=codebase.get_function("slug"))


def test_max_ai_requests_is_graph_sitter_s(
    openai_env: FakeOpenAIServer, codebase: Any, routed: Any
) -> None:
    routed.install()
    codebase.set_session_options(max_ai_requests=2)
    codebase.ai("one")
    codebase.ai("two")
    with pytest.raises(MaxAIRequestsError, match="Maximum number of AI requests reached: 2") as e:
        codebase.ai("three")
    assert e.value.threshold == 2
    assert len(openai_env.chat_requests()) == 2


def test_answer_semantics(
    openai_env: FakeOpenAIServer, codebase: Any, routed: Any, env: Callable[..., None]
) -> None:
    routed.install()
    # graph-sitter decodes escapes in the tool answer
    openai_env.responder = lambda body: "line one\\nline two"
    assert codebase.ai("Two lines") == "line one\nline two"
    # a non-gpt model: no forced tool (graph-sitter's rule), and no tool call is an error
    openai_env.responder = None
    with pytest.raises(ValueError, match="No tool call found in AI response"):
        codebase.ai("Plain", model="o3-mini")
    body = openai_env.chat_requests()[-1]
    assert body["model"] == "o3-mini" and "tool_choice" not in body
    assert body["tools"] == generate_tools()


def test_uninstall_restores_the_original(codebase: Any, routed: Any) -> None:
    original = Codebase.__dict__["ai"]
    routed.install()
    routed.install(provider="openai")  # again: options replaced, original kept
    assert Codebase.ai.__aiw_original__ is original
    routed.uninstall()
    assert Codebase.__dict__["ai"] is original and not routed.is_installed()
    routed.uninstall()  # twice is fine
    with pytest.raises(ValueError, match="OpenAI key is not set"):
        codebase.ai("graph-sitter's own again")  # its own client, no key


SCRIPT = """\
import sys
from graph_sitter import Codebase

codebase = Codebase(sys.argv[1])
print("ANSWER", codebase.ai("Rate this", target=codebase.get_function("slug")))
print("ROUTED", hasattr(Codebase.ai, "__aiw_original__"))
"""


def _run(
    args: list[str], fake: FakeOpenAIServer, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_", "AIW_"))}
    env.update(
        OPENAI_API_KEY=fake.api_key,
        OPENAI_BASE_URL=fake.url,
        PREFER_CODEGEN="false",
        PYTHONPATH=str(REPO_ROOT),
        **extra_env,
    )
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_launcher_runs_an_unchanged_script(
    fake_openai: FakeOpenAIServer, gs_repo: Path, tmp_path: Path
) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = _run(
        ["-m", "app.integrations.graph_sitter_run", "run", str(script), str(gs_repo)], fake_openai
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ANSWER echo: Rate this" in done.stdout and "ROUTED True" in done.stdout
    [body] = fake_openai.chat_requests()
    assert body["tools"][0]["function"]["name"] == "set_answer"
    # the same script without the launcher: graph-sitter's own client (it reads
    # OPENAI_API_KEY and OPENAI_BASE_URL too, so it reaches the same fake)
    plain = _run([str(script), str(gs_repo)], fake_openai)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "ROUTED False" in plain.stdout


def test_environment_switch_through_the_startup_hook(
    fake_openai: FakeOpenAIServer, gs_repo: Path, tmp_path: Path
) -> None:
    """The .pth line as site.py runs it (from a site dir of the test's own)."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / PTH_NAME).write_text(PTH_LINE)
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    start = textwrap.dedent(
        f"""
        import runpy, site, sys
        site.addsitedir({str(site_dir)!r})
        sys.argv = [{str(script)!r}, {str(gs_repo)!r}]
        runpy.run_path({str(script)!r}, run_name="__main__")
        """
    )
    on = _run(["-c", start], fake_openai, AIW_GRAPH_SITTER="1")
    assert on.returncode == 0, on.stderr[-3000:]
    assert "ANSWER echo: Rate this" in on.stdout and "ROUTED True" in on.stdout
    off = _run(["-c", start], fake_openai)  # unset (0/false/no/off: see the unit tests)
    assert off.returncode == 0, off.stderr[-3000:]
    assert "ROUTED False" in off.stdout
    bad = _run(["-c", start], fake_openai, AIW_GRAPH_SITTER="maybe")
    assert "AIW_GRAPH_SITTER: expected 1/true/yes/on" in bad.stderr
    assert "ROUTED False" in bad.stdout


def test_hook_enable_and_disable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.integrations import graph_sitter_run

    monkeypatch.setattr(graph_sitter_run, "site_packages", lambda: tmp_path)
    path = graph_sitter_run.enable_hook()
    assert path == tmp_path / PTH_NAME and path.read_text() == PTH_LINE
    assert graph_sitter_run.disable_hook() is True
    assert not path.exists() and graph_sitter_run.disable_hook() is False


def test_install_checks_its_options(routed: Any) -> None:
    from app.core.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        routed.install(timeout=-1)
    with pytest.raises(InvalidRequestError, match="unknown provider 'nope'"):
        routed.install(provider="nope")
    assert not routed.is_installed()
    assert integration.get_stats() is None
