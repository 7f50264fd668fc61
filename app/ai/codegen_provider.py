"""``CodegenProvider``: a Codegen agent run behind the provider interface.

    provider = CodegenProvider()                       # CODEGEN_TOKEN, CODEGEN_ORG_ID
    answer = provider.generate_response(
        "Add a CHANGELOG entry for 1.2", system_prompt="Be brief.",
        repository="octo/shop", branch="main", priority="normal", tags=["release"],
    )
    answer.content                  # the run's result (or its summary)
    answer.metadata["web_url"], answer.metadata["pull_requests"]
    provider.get_enhanced_stats()   # calls, and runs by Codegen status (here and tracked)

One ``generate_response`` is one agent run: the prompt (with the system prompt put
in front under a heading, since Codegen takes a single ``prompt``) starts a run,
and the call blocks in ``Task.wait_for_completion`` for up to
``CODEGEN_RUN_TIMEOUT`` seconds, polling every ``CODEGEN_POLL_INTERVAL`` seconds.
``CODEGEN_TIMEOUT`` is the limit of each HTTP request. For work that should not
block a thread for minutes, ``start_run`` returns the ``Task`` at once and
``response_from_task`` turns a finished one into an ``AIResponse`` later.

Every request (creation, polls, the repository list) takes a token from the Codegen
budget shared with the workers (``app.core.budget``; ``limiter=None`` switches it
off), so blocking calls from many threads or processes do not cause 429s.

Provider-specific options (``request.extra``), checked before any call by
``app.codegen.options.build_run_input`` (the same function the job path uses):
``repo_id`` (int), ``repository`` (``owner/repo``, resolved to its ``repo_id``
through the organization's repository list, cached a few minutes; an unknown name is
refused before any run is created), ``branch`` (told in the prompt and kept in
``metadata["branch"]``), ``priority`` (``high`` | ``normal`` | ``low``, in
``metadata["priority"]``), ``metadata`` (dict, stored with the run), ``tags`` (list
of str, merged into ``metadata["tags"]``), ``images`` (base64 data URIs) and
``agent_type`` (``codegen`` | ``claude_code``). Any other option is refused before
any call. ``temperature`` and ``max_tokens`` mean nothing to an agent and are
ignored, and so are the chat function-calling options ``tools``, ``tool_choice``
and ``parallel_tool_calls``: an agent answers in text, so a request that asks for a
tool answer (graph-sitter's ``set_answer``) falling back to Codegen gets the run's
result as its content.

Models: Codegen lists none; a run uses the organization's default model unless
``model`` names another, which is passed through as is. ``get_available_models``
therefore returns only the pseudo-model ``"codegen-agent"`` (= the organization's
default; it is not sent). Codegen reports no token usage and no price: ``usage``
is zero and ``cost_usd`` is ``None``.

Errors: a run ending in any terminal status but ``COMPLETE`` is
``AgentRunFailedError``; a run still going at the deadline is
``AgentRunTimeoutError`` (not retried: retrying would start a second run); no
budget token within the limiter's wait is ``CodegenBudgetTimeoutError`` (nothing
sent; a chain falls back). Creating a run is retried by ``generate_response`` on
429/5xx like any request; a creation that times out *may* have started a run on
Codegen's side (the API has no idempotency key), so a retry after a timeout can
leave a stray run behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from app.ai.base import AIProvider, AIRequest, AIResponse, Usage
from app.ai.codegen_stats import RunRecord, combine, tracked_runs
from app.codegen.options import DEFAULT_MODEL as DEFAULT_MODEL
from app.codegen.options import (
    IGNORED_OPTIONS,
    OPTIONS,
    RunInput,
    build_run_input,
    resolve_run_input,
)
from app.codegen.options import compose_prompt as compose_prompt
from app.core.errors import (
    AgentRunFailedError,
    InvalidRequestError,
    ProviderAuthenticationError,
    ProviderNotConfiguredError,
)

if TYPE_CHECKING:
    from app.ai.pricing import PriceTable
    from app.codegen import Agent, Task
    from app.config import Settings
    from app.core.budget import CodegenLimiter


class CodegenProvider(AIProvider):
    """Codegen agent runs as a provider. See the module docstring."""

    name: ClassVar[str] = "codegen"
    #: The provider-specific options ``generate_response`` accepts.
    EXTRA_OPTIONS: ClassVar[frozenset[str]] = OPTIONS
    #: Chat options accepted and ignored (an agent has no function calling).
    IGNORED_OPTIONS: ClassVar[frozenset[str]] = IGNORED_OPTIONS

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        limiter: CodegenLimiter | Literal["shared"] | None = "shared",
    ) -> None:
        """``limiter``: see ``Agent`` (default: the shared budget of the configured token)."""
        super().__init__(settings=settings, timeout=timeout, max_retries=max_retries, prices=prices)
        self._sleep = sleep
        self._clock = clock
        self._limiter = limiter
        self._agent: Agent | None = None
        self._agent_lock = threading.Lock()
        self._runs = RunRecord()

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
        from app.codegen import Agent  # the HTTP client, on first use (not on a check)

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
            limiter=self._limiter,
            settings=s,
        )

    def run_input(self, request: AIRequest) -> RunInput:
        """The run's creation input for ``request``, checked (no network call).

        ``app.codegen.options.build_run_input`` over the request's prompt, system prompt,
        options and model: ``InvalidRequestError`` for an unknown or bad option.
        ``repository`` is still to resolve (``start_run`` does it).
        """
        return build_run_input(
            request.prompt, request.system_prompt, request.extra, model=request.model
        )

    def check_request(self, request: AIRequest) -> None:
        self.run_input(request)

    def run_options(self, request: AIRequest) -> dict[str, Any]:
        """``Agent.run`` keyword arguments from a request; unknown options are refused.

        ``repo_id`` is ``None`` while a ``repository`` is not resolved (``start_run``).
        """
        run_input = self.run_input(request)
        options: dict[str, Any] = {
            "metadata": run_input.metadata,
            "repo_id": run_input.repo_id,
            "images": run_input.images,
            "agent_type": run_input.agent_type,
        }
        if run_input.model is not None:
            options["model"] = run_input.model
        return options

    def start_run(self, request: AIRequest) -> Task:
        """Start the agent run for ``request`` and return its ``Task`` without waiting.

        Checks the options first, then resolves ``repository`` (one listing of the
        organization's repositories, cached), then creates the run.
        """
        self.require_configured()
        run_input = self.run_input(request)
        run_input = resolve_run_input(run_input, self.agent.client)
        task = self.agent.run(run_input.prompt, **run_input.create_kwargs())
        self._runs.started(task.id, task.status)
        task.add_status_callback(lambda old, new: self._runs.seen(task.id, new))
        return task

    def response_from_task(
        self,
        task: Task,
        *,
        model: str | None = None,
        response_time: timedelta = timedelta(0),
    ) -> AIResponse:
        """The ``AIResponse`` of a finished run; ``AgentRunFailedError`` unless COMPLETE."""
        self._runs.seen(task.id, task.status)
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

    def get_enhanced_stats(self, *, include_tracked: bool = True) -> dict[str, Any]:
        """``get_stats()`` plus the agent runs, by Codegen status. A JSON-able dict.

        Every key of ``get_stats()`` (``success_rate`` there is the share of calls that
        answered, 0.0 before the first call), and:

        - ``task_count``: agent runs counted, each once: those this provider started in
          this process and those tracked in the database (``agent_runs``, the workers'
          runs, queued work included);
        - ``runs_by_state``: those runs by Codegen's status, verbatim
          (``{"COMPLETE": 3, "FAILED": 1, "ACTIVE": 2}``; ``NO_STATUS`` for a run not
          created yet); a run in both places counts with the database's status;
        - ``task_success_rate``: ``COMPLETE`` runs / runs that ended (``None``: none);
        - ``local``: ``task_count``, ``runs_by_state``, ``task_success_rate`` of the
          runs this provider started here (last status seen by this process);
        - ``tracked``: the same of the database's runs, plus ``by_tracking_state``
          (ai-worker's ``active``, ``finished``, ``stuck``, ...); ``None`` when there is
          no database, it cannot be read, or ``include_tracked=False``;
        - ``tracked_error``: why ``tracked`` is ``None`` (``None`` otherwise).

        Reads the database once (a database that cannot be reached is reported, not
        raised); no Codegen request.
        """
        local = self._runs.snapshot()
        tracked, error = None, None
        if include_tracked:
            tracked, error = tracked_runs(self.settings, local.keys())
        else:
            error = "not asked (include_tracked=False)"
        return {**self.get_stats(), **combine(local, tracked, error)}

    def close(self) -> None:
        """Close the HTTP connection pool, if one was made."""
        with self._agent_lock:
            if self._agent is not None:
                self._agent.close()
                self._agent = None
