"""``CodegenProvider``: a Codegen agent run behind the provider interface.

    provider = CodegenProvider()                       # CODEGEN_TOKEN, CODEGEN_ORG_ID
    answer = provider.generate_response(
        "Add a CHANGELOG entry for 1.2", system_prompt="Be brief.",
        repo_id=7, tags=["release"],
    )
    answer.content                  # the run's result (or its summary)
    answer.metadata["web_url"], answer.metadata["pull_requests"]

One ``generate_response`` is one agent run: the prompt (with the system prompt put
in front under a heading, since Codegen takes a single ``prompt``) starts a run,
and the call blocks in ``Task.wait_for_completion`` for up to
``CODEGEN_RUN_TIMEOUT`` seconds, polling every ``CODEGEN_POLL_INTERVAL`` seconds.
``CODEGEN_TIMEOUT`` is the limit of each HTTP request. For work that should not
block a thread for minutes, ``start_run`` returns the ``Task`` at once and
``response_from_task`` turns a finished one into an ``AIResponse`` later.

Provider-specific options (``request.extra``): ``repo_id`` (int), ``metadata``
(dict, stored with the run), ``tags`` (list of str, merged into
``metadata["tags"]``), ``images`` (base64 data URIs) and ``agent_type``
(``codegen`` | ``claude_code``). Any other option is refused before any call.
``temperature`` and ``max_tokens`` mean nothing to an agent and are ignored, and so
are the chat function-calling options ``tools``, ``tool_choice`` and
``parallel_tool_calls``: an agent answers in text, so a request that asks for a tool
answer (graph-sitter's ``set_answer``) falling back to Codegen gets the run's result
as its content.

Models: Codegen lists none; a run uses the organization's default model unless
``model`` names another, which is passed through as is. ``get_available_models``
therefore returns only the pseudo-model ``"codegen-agent"`` (= the organization's
default; it is not sent). Codegen reports no token usage and no price: ``usage``
is zero and ``cost_usd`` is ``None``.

Errors: a run ending in any terminal status but ``COMPLETE`` is
``AgentRunFailedError``; a run still going at the deadline is
``AgentRunTimeoutError`` (not retried: retrying would start a second run).
Creating a run is retried by ``generate_response`` on 429/5xx like any request;
a creation that times out *may* have started a run on Codegen's side (the API has
no idempotency key), so a retry after a timeout can leave a stray run behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from app.ai.base import AIProvider, AIRequest, AIResponse, Usage
from app.codegen import Agent, Task
from app.core.errors import (
    AgentRunFailedError,
    InvalidRequestError,
    ProviderAuthenticationError,
    ProviderNotConfiguredError,
)

if TYPE_CHECKING:
    from app.ai.pricing import PriceTable
    from app.config import Settings

#: The model name of an answer when no model was asked for (the organization's default).
DEFAULT_MODEL = "codegen-agent"


def compose_prompt(prompt: str, system_prompt: str | None) -> str:
    """One prompt for Codegen: the system prompt first, under its own heading."""
    if not system_prompt or not system_prompt.strip():
        return prompt
    return f"## Instructions\n\n{system_prompt.strip()}\n\n## Task\n\n{prompt}"


class CodegenProvider(AIProvider):
    """Codegen agent runs as a provider. See the module docstring."""

    name: ClassVar[str] = "codegen"
    #: The provider-specific options ``generate_response`` accepts.
    EXTRA_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"repo_id", "metadata", "tags", "images", "agent_type"}
    )
    #: Chat options accepted and ignored (an agent has no function calling).
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"tools", "tool_choice", "parallel_tool_calls"}
    )

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings=settings, timeout=timeout, max_retries=max_retries, prices=prices)
        self._sleep = sleep
        self._clock = clock
        self._agent: Agent | None = None
        self._agent_lock = threading.Lock()

    # --- AIProvider -------------------------------------------------------------------
    def default_timeout(self) -> float:
        return self.settings.codegen_timeout

    def default_max_retries(self) -> int:
        return self.settings.codegen_max_retries

    def is_configured(self) -> bool:
        return self.settings.has_codegen

    def validate_credentials(self) -> bool:
        """One cheap call (list one run). False when Codegen refuses the token or org.

        An outage (connection error, 5xx, 429) raises: it says nothing of the credentials.
        """
        if not self.is_configured():
            return False
        try:
            self.agent.client.list_runs(limit=1)
        except ProviderAuthenticationError:
            return False
        return True

    @property
    def default_model(self) -> str:
        return DEFAULT_MODEL

    def get_available_models(self) -> list[str]:
        return [DEFAULT_MODEL]

    def _generate(self, request: AIRequest) -> AIResponse:
        started = time.perf_counter()
        task = self.start_run(request)
        task.wait_for_completion(
            timeout=self.settings.codegen_run_timeout,
            poll_interval=self.settings.codegen_poll_interval,
        )
        return self.response_from_task(
            task,
            model=request.model,
            response_time=timedelta(seconds=time.perf_counter() - started),
        )

    # --- Codegen specifics --------------------------------------------------------------
    @property
    def agent(self) -> Agent:
        """The Codegen ``Agent``, made on first use (no client exists before)."""
        if self._agent is None:
            with self._agent_lock:
                if self._agent is None:
                    self._agent = self._make_agent()
        return self._agent

    def _make_agent(self) -> Agent:
        s = self.settings
        if s.codegen_token is None or s.codegen_org_id is None:
            raise ProviderNotConfiguredError(
                "codegen needs CODEGEN_TOKEN and CODEGEN_ORG_ID", provider_name=self.name
            )
        return Agent(
            s.codegen_org_id,
            s.codegen_token,
            s.codegen_base_url,
            timeout=self.timeout,
            poll_interval=s.codegen_poll_interval,
            retry_policy=self.retry_policy,
            sleep=self._sleep,
            clock=self._clock,
        )

    def run_options(self, request: AIRequest) -> dict[str, Any]:
        """``Agent.run`` keyword arguments from a request; unknown options are refused."""
        extra = {k: v for k, v in request.extra.items() if k not in self.IGNORED_OPTIONS}
        unknown = sorted(set(extra) - self.EXTRA_OPTIONS)
        if unknown:
            raise InvalidRequestError(
                f"codegen does not take option(s) {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(self.EXTRA_OPTIONS))}",
                provider_name=self.name,
            )
        metadata = extra.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidRequestError("metadata must be a dict", provider_name=self.name)
        tags = extra.get("tags")
        if tags is not None:
            if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
                raise InvalidRequestError("tags must be a list of strings", provider_name=self.name)
            metadata = dict(metadata or {})
            earlier = metadata.get("tags")
            merged = list(earlier) if isinstance(earlier, list) else []
            metadata["tags"] = list(dict.fromkeys([*merged, *tags]))
        options: dict[str, Any] = {
            "metadata": metadata,
            "repo_id": extra.get("repo_id"),
            "images": extra.get("images"),
            "agent_type": extra.get("agent_type"),
        }
        if request.model is not None and request.model != DEFAULT_MODEL:
            options["model"] = request.model
        return options

    def start_run(self, request: AIRequest) -> Task:
        """Start the agent run for ``request`` and return its ``Task`` without waiting."""
        self.require_configured()
        options = self.run_options(request)
        return self.agent.run(compose_prompt(request.prompt, request.system_prompt), **options)

    def response_from_task(
        self,
        task: Task,
        *,
        model: str | None = None,
        response_time: timedelta = timedelta(0),
    ) -> AIResponse:
        """The ``AIResponse`` of a finished run; ``AgentRunFailedError`` unless COMPLETE."""
        if not task.is_terminal:
            raise InvalidRequestError(
                f"agent run {task.id} has not ended (status {task.status!r})",
                provider_name=self.name,
            )
        if not task.is_success:
            detail = f": {task.summary}" if task.summary else ""
            raise AgentRunFailedError(
                f"Codegen agent run {task.id} ended {task.status}{detail}",
                run_id=task.id,
                run_status=task.status,
                provider_name=self.name,
                request_id=str(task.id),
            )
        return AIResponse(
            content=task.result or task.summary or "",
            provider_name=self.name,
            model=model or DEFAULT_MODEL,
            usage=Usage(),
            cost_usd=None,
            response_time=response_time,
            request_id=str(task.id),
            metadata={
                "agent_run_id": task.id,
                "status": task.status,
                "web_url": task.web_url,
                "pull_requests": [pr.model_dump() for pr in task.pull_requests],
                "summary": task.summary,
            },
        )

    def close(self) -> None:
        """Close the HTTP connection pool, if one was made."""
        with self._agent_lock:
            if self._agent is not None:
                self._agent.close()
                self._agent = None
