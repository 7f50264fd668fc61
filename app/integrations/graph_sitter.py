"""graph-sitter's ``Codebase.ai`` through the provider layer, and AI jobs from a codebase.

Existing scripts, unchanged::

    from app.integrations import graph_sitter as aiw_graph_sitter

    aiw_graph_sitter.install()      # every Codebase.ai(...) now uses ai-worker's providers
    codebase.ai("Name this better", target=function)   # automatic choice, fallback, retry
    aiw_graph_sitter.get_stats()    # requests, tokens, cost per provider
    aiw_graph_sitter.uninstall()    # graph-sitter's own method again

Without touching the script at all: ``aiw-graph-sitter run script.py`` (or the
``AIW_GRAPH_SITTER=1`` environment switch, see ``app.integrations.graph_sitter_run``).
Installed, the seed document's imports work too: ``graph_sitter.ai.providers`` and
``graph_sitter.ai.client.get_ai_client`` (``app.integrations.graph_sitter_names``).

What stays exactly graph-sitter's: the system prompt (graph-sitter's own
``generate_system_prompt(target, context)``, so the target's ``extended_source``
and the context), the user prompt, temperature 0, the ``set_answer`` tool (with
``tool_choice="required"`` for ``gpt*`` models), the answer taken from the tool
call (same ``ValueError`` when there is none, same ``unicode_escape`` decoding),
and the per-codebase count that raises ``MaxAIRequestsError`` past
``session_options.max_ai_requests``.

What changes: the call goes through the provider layer. The provider order is the
automatic choice (``PREFER_CODEGEN``; or a forced ``provider=``), every provider
runs under the shared retry policy, a provider that is out hands over to the next,
and stats, usage and cost are counted (``get_stats()``). OpenAI-compatible
providers get the model and the tool; a provider without function calling (a
Codegen agent run) gets the same prompts and its text answer is the answer.
Failures raise ``app.core.errors`` exceptions (``AIProviderError`` subclasses), not
the openai SDK's.

Queued instead of answered in place::

    handle = submit_codebase_ai(codebase, "Summarise", target=function)
    handles = submit_many(codebase, "Summarise", codebase.functions)
    handle.wait(60); answer_from(handle.result())

The system prompt and the tool are built here, in the submitting process (the
worker needs no graph-sitter), and the job's ``subject`` records the repository,
file and symbol it was about.

Importing this module does not import graph-sitter; ``install()`` and the
functions that need it raise ``GraphSitterUnavailableError`` when it is missing.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from app.ai.base import AIProvider, AIRequest, AIResponse
from app.core.errors import AIProviderError, InvalidRequestError

if TYPE_CHECKING:
    from app.ai.factory import ProviderChain
    from app.jobs.service import JobHandle

log = logging.getLogger(__name__)

#: graph-sitter's default model for ``Codebase.ai``.
GRAPH_SITTER_DEFAULT_MODEL = "gpt-4o"
#: The tag every job made here carries (``aiw jobs --tag graph-sitter``).
TAG = "graph-sitter"
#: What ``subject["source"]`` says for jobs made here.
SUBJECT_SOURCE = "graph_sitter"
INSTALL_HINT = "pip install 'ai-worker[graph-sitter]' (graph-sitter needs Python >= 3.12)"

# Options a caller may not override: they are what makes the answer graph-sitter's.
_FIXED_OPTIONS = frozenset({"system_prompt", "temperature", "tools", "tool_choice"})


class GraphSitterUnavailableError(ImportError):
    """graph-sitter is not installed (or cannot be imported) in this Python."""


@functools.cache
def graph_sitter_api() -> SimpleNamespace:
    """The parts of graph-sitter this module uses, imported on first need."""
    try:
        from graph_sitter.codebase.codebase_ai import generate_system_prompt, generate_tools
        from graph_sitter.core.codebase import Codebase
        from graph_sitter.shared.exceptions.control_flow import MaxAIRequestsError
    except ImportError as exc:
        raise GraphSitterUnavailableError(
            f"graph-sitter is not available ({exc}); {INSTALL_HINT}"
        ) from exc
    return SimpleNamespace(
        Codebase=Codebase,
        generate_system_prompt=generate_system_prompt,
        generate_tools=generate_tools,
        MaxAIRequestsError=MaxAIRequestsError,
    )


# --- the request graph-sitter would send ---------------------------------------------------


@dataclass(frozen=True)
class CodebaseAIRequest:
    """What ``Codebase.ai`` sends: system prompt, user prompt, model, the set_answer tool."""

    prompt: str
    system_prompt: str
    model: str | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | None = None

    def tool_kwargs(self) -> dict[str, Any]:
        """Provider keyword arguments for an OpenAI-compatible provider."""
        kwargs: dict[str, Any] = {"tools": self.tools}
        if self.tool_choice is not None:
            kwargs["tool_choice"] = self.tool_choice
        return kwargs


def tool_choice_for(model: str | None) -> str | None:
    """graph-sitter forces the tool for ``gpt*`` models. ``None`` (the worker's default
    model, ``OPENAI_DEFAULT_MODEL``) is forced too."""
    if model is None or model.startswith("gpt"):
        return "required"
    return None


def build_codebase_request(
    prompt: str,
    target: Any = None,
    context: Any = None,
    model: str | None = GRAPH_SITTER_DEFAULT_MODEL,
) -> CodebaseAIRequest:
    """The request ``Codebase.ai(prompt, target, context, model)`` would make."""
    gs = graph_sitter_api()
    if target is not None and not hasattr(target, "extended_source"):
        raise InvalidRequestError(
            f"target must be a graph-sitter symbol or file (an Editable), "
            f"got {type(target).__name__}"
        )
    return CodebaseAIRequest(
        prompt=prompt,
        system_prompt=gs.generate_system_prompt(target, context),
        model=model,
        tools=gs.generate_tools(),
        tool_choice=tool_choice_for(model),
    )


def answer_from(response: AIResponse) -> str:
    """The answer string, exactly as ``Codebase.ai`` extracts it.

    A chat completion (``metadata["finish_reason"]`` present) must end in a tool call
    whose arguments hold ``answer``; otherwise graph-sitter's ``ValueError``. The
    answer then goes through graph-sitter's ``codecs.decode(answer, "unicode_escape")``
    (which turns a literal ``\\n`` into a newline, and, as in graph-sitter, garbles
    non-ASCII text). An answer from a provider without function calling (a Codegen
    run) is its text, as is.
    """
    meta = response.metadata
    if "finish_reason" not in meta:
        return response.content
    finish_reason = meta.get("finish_reason")
    if finish_reason in ("tool_calls", "function_call", "stop"):
        calls = meta.get("tool_calls") or []
        if not calls:
            raise ValueError(
                "No tool call found in AI response. (choice.message.tool_calls is empty)"
            )
        arguments = json.loads(calls[0]["arguments"])
        if "answer" not in arguments:
            raise ValueError(
                "No answer found in tool call. "
                "(tool_call.function.arguments does not contain answer)"
            )
        answer = arguments["answer"]
    elif finish_reason == "length":
        raise ValueError(
            "AI response too long / ran out of tokens. (choice.finish_reason == length)"
        )
    elif finish_reason == "content_filter":
        raise ValueError(
            "AI response was blocked by OpenAI's content filter. "
            "(choice.finish_reason == content_filter)"
        )
    else:
        raise ValueError(f"Unknown finish reason from AI: {finish_reason}")
    return str(codecs.decode(answer, "unicode_escape"))


# --- answering in place ----------------------------------------------------------------


def takes_tools(provider: AIProvider) -> bool:
    """True for OpenAI-compatible providers (``OpenAIProvider`` and its subclasses)."""
    from app.ai.openai_provider import OpenAIProvider

    return isinstance(provider, OpenAIProvider)


@dataclass(frozen=True)
class _Options:
    provider: str | None = None
    prefer_codegen: bool | None = None
    fallback_enabled: bool = True
    validate_on_creation: bool = True
    timeout: float | None = None
    max_retries: int | None = None


class _Router:
    """The providers ``Codebase.ai`` uses while installed, made on the first call."""

    def __init__(self, options: _Options) -> None:
        self.options = options
        self._chain: ProviderChain | None = None
        self._lock = threading.Lock()

    def chain(self) -> ProviderChain:
        with self._lock:
            if self._chain is None:
                from app.ai.factory import ProviderChain, create_ai_provider
                from app.config import get_settings

                settings = get_settings()
                o = self.options
                made = create_ai_provider(
                    provider_name=o.provider,
                    prefer_codegen=settings.prefer_codegen
                    if o.prefer_codegen is None
                    else o.prefer_codegen,
                    fallback_enabled=o.fallback_enabled,
                    validate_on_creation=o.validate_on_creation,
                    timeout=o.timeout,
                    max_retries=o.max_retries,
                    settings=settings,
                )
                providers = made.providers if isinstance(made, ProviderChain) else [made]
                self._chain = ProviderChain(providers, settings=settings)
            return self._chain

    def ask(self, request: CodebaseAIRequest) -> AIResponse:
        """Each provider in turn (each under its own retry policy), like ``ProviderChain``,
        but with per-provider arguments: only OpenAI-compatible providers get the model
        and the tool."""
        failures: list[dict[str, Any]] = []
        last: AIProviderError | None = None
        for provider in self.chain().providers:
            chat = takes_tools(provider)
            log.debug("codebase.ai: asking %s (tools: %s)", provider.name, chat)
            try:
                response = provider.generate_response(
                    request.prompt,
                    system_prompt=request.system_prompt,
                    model=request.model if chat else None,
                    temperature=0.0,
                    **(request.tool_kwargs() if chat else {}),
                )
            except AIProviderError as error:
                if not error.fallback:
                    raise
                log.warning("%s failed (%s); falling back", provider.name, error.error_type)
                failures.append({"provider": provider.name, **error.to_dict()})
                last = error
                continue
            if failures:
                response = response.model_copy(
                    update={"metadata": {**response.metadata, "fallback_errors": failures}}
                )
            return response
        assert last is not None
        raise last


@dataclass
class _Installed:
    original: Callable[..., str]
    router: _Router


_installed: _Installed | None = None
_install_lock = threading.Lock()


def _make_ai(original: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(original)
    def ai(
        self: Any,
        prompt: str,
        target: Any = None,
        context: Any = None,
        model: str = GRAPH_SITTER_DEFAULT_MODEL,
    ) -> str:
        installed = _installed
        if installed is None:  # uninstalled between the method lookup and the call
            return original(self, prompt, target, context, model)
        # graph-sitter's own count and limit, unchanged.
        self._num_ai_requests += 1
        limit = self.ctx.session_options.max_ai_requests
        if limit is not None and self._num_ai_requests > limit:
            raise graph_sitter_api().MaxAIRequestsError(
                f"Maximum number of AI requests reached: {limit}", threshold=limit
            )
        request = build_codebase_request(prompt, target, context, model)
        return answer_from(installed.router.ask(request))

    ai.__aiw_original__ = original  # type: ignore[attr-defined]
    return ai


def install(
    *,
    provider: str | None = None,
    prefer_codegen: bool | None = None,
    fallback_enabled: bool = True,
    validate_on_creation: bool = True,
    timeout: float | None = None,
    max_retries: int | None = None,
) -> None:
    """Route every ``Codebase.ai(...)`` through the provider layer, and make the seed
    document's ``graph_sitter.ai.providers`` and ``graph_sitter.ai.client.get_ai_client``
    importable (``app.integrations.graph_sitter_names``).

    The options are ``create_ai_provider``'s: ``provider`` forces one (no fallback);
    ``prefer_codegen`` defaults to ``PREFER_CODEGEN``. Nothing is created or called
    now (an unknown provider name or a bad timeout is refused at once): the providers
    are made on the first ``Codebase.ai``. Calling ``install``
    again replaces the options (and the providers). Raises
    ``GraphSitterUnavailableError`` when graph-sitter cannot be imported.
    """
    global _installed
    from app.ai.base import check_max_retries, check_timeout
    from app.ai.factory import provider_names
    from app.core.errors import UnknownProviderError
    from app.integrations.graph_sitter_names import mount

    check_timeout(timeout)
    check_max_retries(max_retries)
    if provider is not None and provider not in provider_names():
        raise UnknownProviderError(
            f"unknown provider {provider!r}; known providers: {', '.join(provider_names())}"
        )
    codebase_cls = graph_sitter_api().Codebase
    options = _Options(
        provider, prefer_codegen, fallback_enabled, validate_on_creation, timeout, max_retries
    )
    with _install_lock:
        current = codebase_cls.ai
        original = getattr(current, "__aiw_original__", current)
        codebase_cls.ai = _make_ai(original)
        _installed = _Installed(original, _Router(options))
        mount()  # graph_sitter.ai.providers, graph_sitter.ai.client.get_ai_client
    log.info("graph-sitter Codebase.ai now goes through the ai-worker provider layer")


def uninstall() -> None:
    """Give ``Codebase.ai`` back its original method and take away the seed's
    ``graph_sitter.ai`` names. Does nothing if not installed."""
    global _installed
    from app.integrations.graph_sitter_names import unmount

    with _install_lock:
        if _installed is None:
            return
        graph_sitter_api().Codebase.ai = _installed.original
        _installed = None
        unmount()


def is_installed() -> bool:
    return _installed is not None


def get_stats() -> dict[str, Any] | None:
    """Figures of the providers ``Codebase.ai`` used since ``install()`` (None before the
    first call): requests, errors, tokens and cost, in total and per provider."""
    installed = _installed
    if installed is None or installed.router._chain is None:
        return None
    return installed.router._chain.get_stats()


def env_switch_on(environ: Mapping[str, str] | None = None) -> bool:
    """The ``AIW_GRAPH_SITTER`` switch: ``1/true/yes/on`` or ``0/false/no/off``/unset;
    ``ConfigError`` naming the variable for anything else."""
    from app.integrations.graph_sitter_run import ENV_SWITCH, switch_state

    state = switch_state(environ)
    if state is None:
        from app.config import ConfigError

        value = (os.environ if environ is None else environ).get(ENV_SWITCH, "")
        raise ConfigError(f"{ENV_SWITCH}: expected 1/true/yes/on or 0/false/no/off, got {value!r}")
    return state


def install_from_env() -> bool:
    """``install()`` when ``AIW_GRAPH_SITTER`` is on. True if installed."""
    if not env_switch_on():
        return False
    install()
    return True


# --- queued ----------------------------------------------------------------------------


def _line_of(target: Any) -> int | None:
    point = getattr(target, "start_point", None)
    row = getattr(point, "row", None)
    return row + 1 if isinstance(row, int) else None


def _describe(item: Any) -> str:
    name = getattr(item, "name", None) or getattr(item, "filepath", None)
    return f"{type(item).__name__}:{name}" if name else type(item).__name__


def _context_names(context: Any) -> list[str]:
    if context is None:
        return []
    if isinstance(context, str):
        return ["text"]
    if isinstance(context, dict):
        return [str(k) for k in context]
    if isinstance(context, list | tuple):
        return [_describe(c) for c in context]
    return [_describe(context)]


def git_output(path: str | Path, *args: str) -> str | None:
    """The stripped output of ``git -C path ARGS``; None when git fails or is missing."""
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "-C", str(path), *args], capture_output=True, text=True, check=False
    )
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def repository_of(codebase: Any) -> str:
    """The absolute path of the codebase's repository."""
    repo_path = getattr(codebase, "repo_path", None)
    if repo_path is None:
        raise InvalidRequestError(
            f"codebase must be a graph-sitter Codebase, got {type(codebase).__name__}"
        )
    return str(Path(str(repo_path)).resolve())


def subject_for(codebase: Any, target: Any = None, context: Any = None) -> dict[str, Any]:
    """What a job was about, for the job history (``Job.subject``)."""
    repository = repository_of(codebase)
    subject: dict[str, Any] = {
        "source": SUBJECT_SOURCE,
        "repository": repository,
        "repository_name": Path(repository).name,
        "commit": git_output(repository, "rev-parse", "HEAD"),
    }
    if target is not None:
        filepath = getattr(target, "filepath", None)
        subject["file"] = str(filepath) if filepath is not None else None
        name = getattr(target, "name", None)
        parent = getattr(target, "parent_class", None)
        parent_name = getattr(parent, "name", None) if parent is not None else None
        subject["symbol"] = f"{parent_name}.{name}" if parent_name and name else name
        subject["symbol_type"] = type(target).__name__
        subject["line"] = _line_of(target)
    names = _context_names(context)
    if names:
        subject["context"] = names
    return subject


def _check_options(options: dict[str, Any]) -> None:
    fixed = sorted(_FIXED_OPTIONS & set(options))
    if fixed:
        raise InvalidRequestError(
            f"{', '.join(fixed)} cannot be set: graph-sitter's system prompt, temperature 0 "
            "and set_answer tool are what make the answer codebase.ai's"
        )


def _submit_kwargs(
    codebase: Any,
    request: CodebaseAIRequest,
    target: Any,
    context: Any,
    options: dict[str, Any],
) -> dict[str, Any]:
    extra_subject = options.pop("subject", None) or {}
    if not isinstance(extra_subject, dict):
        raise InvalidRequestError("subject must be a dict")
    extra_tags = options.pop("tags", None) or []
    if isinstance(extra_tags, str) or not isinstance(extra_tags, list | tuple):
        raise InvalidRequestError("tags must be a list of strings")
    subject = {**subject_for(codebase, target, context), **extra_subject}
    tags = [TAG, *[t for t in extra_tags if t != TAG]]
    return {
        "prompt": request.prompt,
        "system_prompt": request.system_prompt,
        "model": request.model,
        "temperature": 0.0,
        "tags": tags,
        "subject": subject,
        **request.tool_kwargs(),
        **options,
    }


def submit_codebase_ai(
    codebase: Any,
    prompt: str,
    target: Any = None,
    context: Any = None,
    model: str | None = None,
    **options: Any,
) -> JobHandle:
    """Queue what ``codebase.ai(prompt, target, context, model)`` would ask, as an
    ordinary AI request. Returns the ``JobHandle`` at once.

    ``model=None`` is the worker's default (``OPENAI_DEFAULT_MODEL``; graph-sitter's
    own default is ``gpt-4o``). ``options`` go to ``app.jobs.submit``: ``provider``,
    ``max_tokens``, ``tags`` (``graph-sitter`` is always added), ``idempotency_key``,
    ``callback``, ``subject`` (merged into the one made here) and provider keyword
    arguments. ``answer_from(handle.result())`` is the answer as ``codebase.ai`` gives it.
    Raises ``InvalidRequestError`` (nothing queued) for bad input.
    """
    from app.jobs import submit

    _check_options(options)
    request = build_codebase_request(prompt, target, context, model)
    return submit(**_submit_kwargs(codebase, request, target, context, dict(options)))


def submit_many(
    codebase: Any,
    prompt: str,
    targets: Iterable[Any],
    *,
    context: Any = None,
    model: str | None = None,
    idempotency_keys: Sequence[str] | None = None,
    **options: Any,
) -> list[JobHandle]:
    """One job per target, the same prompt for each; handles in the targets' order.

    Every request is built and checked before the first is queued, so bad input
    (a target that is not a graph-sitter symbol, an empty or oversized prompt) queues
    nothing. ``idempotency_keys``, one per target, make a second call return the
    first call's jobs. Other ``options`` as for ``submit_codebase_ai``.
    """
    from app.jobs import submit

    _check_options(options)
    if "idempotency_key" in options:
        raise InvalidRequestError("submit_many takes idempotency_keys (one per target)")
    items = list(targets)
    if not items:
        raise InvalidRequestError("submit_many needs at least one target")
    if idempotency_keys is not None and len(idempotency_keys) != len(items):
        raise InvalidRequestError(
            f"idempotency_keys has {len(idempotency_keys)} keys for {len(items)} targets"
        )
    prepared = []
    for i, target in enumerate(items):
        request = build_codebase_request(prompt, target, context, model)
        # Refuse an empty or oversized prompt now, not after half the jobs are queued.
        AIRequest.build(request.prompt, system_prompt=request.system_prompt, model=model)
        kwargs = _submit_kwargs(codebase, request, target, context, dict(options))
        if idempotency_keys is not None:
            kwargs["idempotency_key"] = idempotency_keys[i]
        prepared.append(kwargs)
    return [submit(**kwargs) for kwargs in prepared]


def request_digest(*parts: object) -> str:
    """A stable hex digest of JSON-able parts (for idempotency keys)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
