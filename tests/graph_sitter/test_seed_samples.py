"""The seed document's Python samples, run as written with the integration switched on.

The samples are read from the document itself (``SEED``, a verbatim copy of
``shared/reference/000_0a14e9dd85055f97.txt``: every ```python block, in order,
numbered from 1) and run as ``aiw-graph-sitter run sample.py`` runs a script
(``graph_sitter_run.run``: ``install()``, then the file as ``__main__``), in a small git
repository as the working directory (``Codebase(".")``), against the fake OpenAI and
Codegen servers over HTTP. Samples 9 and 10 run in a fresh Python through the
``AIW_GRAPH_SITTER=1`` startup hook instead (sample 9 configures logging, which pytest
has configured already; sample 10 imports ``graph_sitter.ai.providers`` before anything
else of graph-sitter).

Fragments get a prelude, stated here (``PRELUDES``) and put in front of the sample:
the one name each uses that the document defines elsewhere or leaves to the reader.
Nothing of a sample is changed. Sample 6 imports Codegen's own SDK (``codegen``, not
ours): the README shows it on ai-worker's ``Agent``, and that version runs here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("graph_sitter")

from app.ai.client import reset_ai_clients
from app.ai.factory import clear_validation_cache, create_ai_provider
from app.integrations import graph_sitter_run
from app.integrations.graph_sitter_run import PTH_LINE, PTH_NAME
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.openai_server import FakeOpenAIServer

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The seed document, verbatim (a copy of shared/reference/'s, checked below).
SEED = Path(__file__).with_name("seed") / "000_0a14e9dd85055f97.txt"
SHARED_SEED = REPO_ROOT.parent / "shared" / "reference" / SEED.name
README = REPO_ROOT / "README.md"

#: What each fragment uses without defining it, and where it comes from.
PRELUDES = {
    # "target=my_function": the document leaves the function to the reader.
    1: 'from graph_sitter import Codebase\nmy_function = Codebase(".").get_function("net_price")\n',
    # create_ai_provider, as samples 3 and 5 import it.
    7: "from graph_sitter.ai.providers import create_ai_provider\n",
    # codebase, as samples 1 and 8 make it.
    9: 'from graph_sitter import Codebase\ncodebase = Codebase(".")\n',
}
ANSWER = "Rename it to net_of_vat"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


def sample(n: int) -> str:
    """Sample ``n`` (from 1) of the seed document, with its prelude if it has one."""
    return PRELUDES.get(n, "") + python_blocks(SEED.read_text(encoding="utf-8"))[n - 1]


@pytest.fixture(autouse=True)
def _fresh_providers(tmp_path: Path, env: Callable[..., None]) -> Iterator[None]:
    env(AIW_DATA_DIR=tmp_path / "data")  # no embedded database of the developer's
    clear_validation_cache()
    reset_ai_clients()
    yield
    clear_validation_cache()
    reset_ai_clients()


@pytest.fixture
def both(
    openai_env: FakeOpenAIServer, codegen_env: FakeCodegenServer
) -> tuple[FakeOpenAIServer, FakeCodegenServer]:
    codegen_env.responder = lambda prompt: ANSWER
    return openai_env, codegen_env


@pytest.fixture
def run_sample(
    gs_repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    routed: Any,
) -> Callable[[str], tuple[dict[str, Any], str]]:
    """``run_sample(code)``: as ``aiw-graph-sitter run`` would, in the repository;
    returns the script's globals and what it printed."""
    monkeypatch.chdir(gs_repo)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def run(code: str) -> tuple[dict[str, Any], str]:
        script = tmp_path / "sample.py"
        script.write_text(code, encoding="utf-8")
        capsys.readouterr()
        namespace = graph_sitter_run.run(str(script), [])
        return namespace, capsys.readouterr().out

    return run


def only_run(fake: FakeCodegenServer) -> dict[str, Any]:
    [run_id] = fake.run_ids()
    return fake.run_request(run_id)


@pytest.mark.skipif(not SHARED_SEED.is_file(), reason="no shared/reference next to the checkout")
def test_the_copy_is_the_seed_document() -> None:
    assert SEED.read_bytes() == SHARED_SEED.read_bytes()


def test_the_document_has_ten_python_samples() -> None:
    blocks = python_blocks(SEED.read_text(encoding="utf-8"))
    assert len(blocks) == 10
    assert "codebase.ai(" in blocks[0] and "from codegen import Agent" in blocks[5]


def test_sample_1_codebase_ai_prefers_codegen(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], run_sample: Callable[..., Any]
) -> None:
    openai, codegen = both
    namespace, _ = run_sample(sample(1))
    assert namespace["result"] == ANSWER  # the agent run's text is the answer
    prompt = only_run(codegen)["prompts"][0]
    assert "Improve this function" in prompt and "def net_price(gross, rate):" in prompt
    assert openai.chat_requests() == []


def test_sample_1_falls_back_to_openai(
    openai_env: FakeOpenAIServer, run_sample: Callable[..., Any]
) -> None:
    namespace, _ = run_sample(sample(1))  # no Codegen credentials
    assert namespace["result"] == "echo: Improve this function"  # from the set_answer tool
    [body] = openai_env.chat_requests()
    assert "def net_price(gross, rate):" in body["messages"][0]["content"]


def test_sample_2_explicit_provider_choice(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], run_sample: Callable[..., Any]
) -> None:
    import graph_sitter.ai.client as gs_client

    from app.ai.client import get_ai_client

    _, codegen = both
    namespace, _ = run_sample(sample(2))
    assert namespace["get_ai_client"] is get_ai_client
    assert namespace["codegen_client"].name == "codegen"
    assert namespace["openai_client"].name == "openai"
    response = namespace["response"]
    assert response.provider_name == "codegen" and response.content == ANSWER
    run = only_run(codegen)
    assert "You are a code analysis expert" in run["prompts"][0]
    assert "Analyze this code" in run["prompts"][0]
    assert run["model"] is None  # "codegen-agent": the organization's default, not sent
    assert callable(gs_client.get_openai_client)  # graph-sitter's own function stays


def test_sample_3_every_keyword_reaches_the_run(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], run_sample: Callable[..., Any]
) -> None:
    _, codegen = both
    repo_id = codegen.add_repo("owner/repo")
    namespace, _ = run_sample(sample(3))
    provider = namespace["provider"]
    assert [p.name for p in provider.providers] == ["codegen", "openai"]  # prefer, fallback
    assert all(p.timeout == 300 and p.max_retries == 3 for p in provider.providers)
    response = namespace["response"]
    assert response.provider_name == "codegen" and response.content == ANSWER
    run = only_run(codegen)
    assert run["repo_id"] == repo_id
    assert run["metadata"]["priority"] == "normal"
    assert run["metadata"]["tags"] == ["test", "generation"]
    assert run["metadata"]["repository"] == "owner/repo"
    assert run["metadata"]["branch"] == "main"
    prompt = run["prompts"][0]
    assert "Work on the branch `main` of owner/repo." in prompt
    assert "You are a test writing expert" in prompt and "Generate a test function" in prompt


def test_sample_4_status_and_monitoring(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], run_sample: Callable[..., Any]
) -> None:
    namespace, out = run_sample(sample(4))
    assert "Recommended provider: codegen" in out
    assert "Detected credentials: {'codegen': True, 'openai': True}" in out
    status = namespace["status"]
    assert out.count("Available providers: {") == 1 and set(status) == {"codegen", "openai"}
    assert status["codegen"]["is_available"] and status["openai"]["valid"] is True
    assert "token" not in repr(status).lower()


@pytest.fixture
def codegen_only(codegen_env: FakeCodegenServer, env: Callable[..., None]) -> FakeCodegenServer:
    env(CODEGEN_MAX_RETRIES=0)
    return codegen_env


def test_sample_5_answers(codegen_only: FakeCodegenServer, run_sample: Callable[..., Any]) -> None:
    namespace, out = run_sample(sample(5))
    assert out == "" and namespace["response"].provider_name == "codegen"


def test_sample_5_rate_limited(
    codegen_only: FakeCodegenServer, run_sample: Callable[..., Any]
) -> None:
    create_ai_provider(provider_name="codegen")  # credentials checked (and remembered) now,
    codegen_only.faults.push(Fault.rate_limit(retry_after=7))  # so this meets the creation
    namespace, out = run_sample(sample(5))
    assert out == "Rate limited, retry after: 7.0\n"
    assert "response" not in namespace and codegen_only.run_count == 0


def test_sample_5_timed_out(
    codegen_only: FakeCodegenServer, env: Callable[..., None], run_sample: Callable[..., Any]
) -> None:
    codegen_only.active_seconds = 30.0
    env(CODEGEN_RUN_TIMEOUT=0.3)
    _, out = run_sample(sample(5))
    assert out == "Request timed out after: 0.3\n"


def test_sample_5_unavailable(
    openai_env: FakeOpenAIServer, run_sample: Callable[..., Any]
) -> None:
    _, out = run_sample(sample(5))  # Codegen has no credentials
    assert out == "Provider unavailable: [codegen] codegen has no credentials configured\n"


def test_sample_6_is_in_the_readme_on_our_agent(
    codegen_env: FakeCodegenServer, run_sample: Callable[..., Any]
) -> None:
    """The document's sample needs Codegen's SDK (``codegen``); the README's is the same
    after its first two statements, on ``app.codegen.Agent``. It waits 10 s (its
    ``poll_interval``) for the one poll."""
    ours = next(b for b in python_blocks(README.read_text()) if "progress_callback" in b)
    theirs = sample(6)
    head, _, rest = theirs.partition("\ndef progress_callback")
    assert head.splitlines()[0] == "from codegen import Agent"
    assert ours.startswith("from app.codegen import Agent\n\nagent = Agent.from_settings()\n")
    assert ours.endswith(rest)
    namespace, out = run_sample(ours)
    assert namespace["task"].status == "COMPLETE"
    assert "Status changed: PENDING -> COMPLETE\n" in out
    assert f"Task progress: <Task id={namespace['task'].id} status='COMPLETE'>\n" in out


def test_sample_7_stats(codegen_env: FakeCodegenServer, run_sample: Callable[..., Any]) -> None:
    namespace, out = run_sample(sample(7))
    assert out == "Requests: 0, Errors: 0\nSuccess rate: 0.00%\nTask count: 0\n"
    provider = namespace["provider"]  # the same provider, after a call
    provider.generate_response("Analyze this code")
    enhanced = provider.get_enhanced_stats()
    assert f"{enhanced['success_rate']:.2%}" == "100.00%" and enhanced["task_count"] == 1


def test_sample_8_backward_compatible(
    both: tuple[FakeOpenAIServer, FakeCodegenServer], run_sample: Callable[..., Any]
) -> None:
    _, codegen = both
    namespace, _ = run_sample(sample(8))
    assert namespace["result"] == ANSWER
    assert "Generate code" in only_run(codegen)["prompts"][0]


def _fresh_python(
    code: str, site_dir: Path, cwd: Path, extra_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``code`` as a script of a fresh Python whose site dir has the startup hook."""
    script = cwd.parent / "fresh_sample.py"
    script.write_text(code, encoding="utf-8")
    start = textwrap.dedent(
        f"""
        import runpy, site, sys
        site.addsitedir({str(site_dir)!r})
        sys.argv = [{str(script)!r}]
        runpy.run_path({str(script)!r}, run_name="__main__")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_", "AIW_"))}
    env.update({"AIW_GRAPH_SITTER": "1", "PYTHONPATH": str(REPO_ROOT), **extra_env})
    return subprocess.run(
        [sys.executable, "-c", start],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    (path / PTH_NAME).write_text(PTH_LINE)
    return path


def _codegen_env(fake: FakeCodegenServer) -> dict[str, str]:
    return {
        "CODEGEN_TOKEN": fake.token,
        "CODEGEN_ORG_ID": str(fake.org_id),
        "CODEGEN_BASE_URL": fake.url,
        "CODEGEN_POLL_INTERVAL": "0.05",
        "AIW_DATA_DIR": os.environ["AIW_DATA_DIR"],
    }


def test_sample_9_debug_logging_through_the_switch(
    fake_codegen: FakeCodegenServer, gs_repo: Path, site_dir: Path
) -> None:
    """As written it answers but logs nothing: graph-sitter's ``get_logger`` puts a
    NullHandler on the root logger (``basicConfig(handlers=[NullHandler()], force=True)``)
    whenever one of its modules is imported, so a later ``basicConfig`` without
    ``force=True`` does nothing. With ``force=True`` the debug lines are there."""
    written = sample(9)
    done = _fresh_python(written, site_dir, gs_repo, _codegen_env(fake_codegen))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DEBUG" not in done.stderr  # graph-sitter's doing, see above
    assert "Debug this code" in fake_codegen.run_request(fake_codegen.run_ids()[0])["prompts"][0]
    assert "logging.basicConfig(level=logging.DEBUG)" in written
    forced = written.replace(
        "logging.basicConfig(level=logging.DEBUG)",
        "logging.basicConfig(level=logging.DEBUG, force=True)",
    )
    done = _fresh_python(forced, site_dir, gs_repo, _codegen_env(fake_codegen))
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr
    assert "DEBUG:app.ai.factory:automatic choice: configured ['codegen']" in log
    assert "DEBUG:app.integrations.graph_sitter:codebase.ai: asking codegen" in log
    assert "DEBUG:app.codegen.client:codegen POST" in log


def marks(code: str) -> tuple[str, str]:
    """The document's own marks for an available and an unavailable provider (its
    emoji, as the file spells them)."""
    ok = re.search(r'print\(f"(.*?) \{provider_name\}: Available"\)', code)
    bad = re.search(r'print\(f"(.*?) \{provider_name\}: \{provider_status', code)
    assert ok and bad
    return ok.group(1), bad.group(1)


def test_sample_10_health_checks_through_the_switch(
    fake_codegen: FakeCodegenServer, gs_repo: Path, site_dir: Path
) -> None:
    """Its first import is graph_sitter.ai.providers; OpenAI is not configured."""
    done = _fresh_python(sample(10), site_dir, gs_repo, _codegen_env(fake_codegen))
    assert done.returncode == 0, done.stderr[-3000:]
    ok, bad = marks(sample(10))
    assert done.stdout.splitlines() == [
        f"{ok} codegen: Available",
        f"{bad} openai: not configured (set OPENAI_API_KEY)",
    ]
    without = _fresh_python(sample(10), site_dir, gs_repo, {"AIW_GRAPH_SITTER": "0"})
    assert "No module named 'graph_sitter.ai.providers'" in without.stderr


def test_sample_10_refused_credentials(
    codegen_env: FakeCodegenServer, env: Callable[..., None], run_sample: Callable[..., Any]
) -> None:
    env(CODEGEN_TOKEN="not-the-token")
    _, out = run_sample(sample(10))
    _, bad = marks(sample(10))
    assert out.splitlines() == [
        f"{bad} codegen: credentials refused",
        f"{bad} openai: not configured (set OPENAI_API_KEY)",
    ]


def test_uninstall_takes_the_seed_names_away(routed: Any) -> None:
    import importlib

    import graph_sitter.ai.client as gs_client

    routed.install()
    providers = importlib.import_module("graph_sitter.ai.providers")
    from app.ai import providers as ours

    assert providers.create_ai_provider is ours.create_ai_provider
    assert providers.ProviderRateLimitError is ours.ProviderRateLimitError
    assert providers.CodegenProvider is ours.CodegenProvider
    assert providers.get_provider_status is not ours.get_provider_status  # the seed's shape
    assert gs_client.get_ai_client is not None
    assert gs_client.get_openai_client("sk-x").api_key == "sk-x"  # graph-sitter's, working
    routed.uninstall()
    assert not hasattr(gs_client, "get_ai_client") and callable(gs_client.get_openai_client)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("graph_sitter.ai.providers")
