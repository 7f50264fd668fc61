"""``Agent`` and ``Task``: the friendly face of the Codegen client.

    agent = Agent(org_id=42, token="...")            # or Agent.from_settings()
    task = agent.run("Add type hints to utils.py", repo_id=7)
    task.add_status_callback(lambda old, new: print(old, "->", new))
    task.wait_for_completion(timeout=1800, poll_interval=10)
    if task.status == "COMPLETE":
        print(task.result, task.web_url, [pr.url for pr in task.pull_requests])

Names follow Codegen's own SDK (``Agent.run -> AgentTask``, ``task.refresh()``,
``task.status``, ``task.result``, ``task.web_url``); what that SDK lacks is added:
a wait loop that sleeps between polls, backs off on 429/5xx/timeouts/garbled
bodies with the shared ``RetryPolicy`` and gives up at a deadline; status callbacks;
logs; resume.

Codegen sends no webhooks: polling is the only way to see a change. Codegen allows
60 requests per 30 seconds and 10 creations a minute per token; one waiting task with
the default 5 s interval spends 6 of them a 30 s window. So every request of an
``Agent`` (creating, polling, logs, resume, listing) first takes a token from the
budget shared with the workers and every other ``Agent`` of the same token and
organization (``app.core.budget``: in Redis when ``REDIS_URL`` or a ``redis://``
broker is set, else in this process), waiting for it if need be, and a 429 makes
all of them wait out a shared cooldown. ``Agent(..., limiter=None)`` switches that
off; ``limiter=`` any ``CodegenLimiter`` replaces it. A request that cannot get a
token within ``DEFAULT_MAX_WAIT`` seconds raises ``CodegenBudgetTimeoutError``
(a ``CodegenBudgetExhaustedError``); a ``wait_for_completion`` just polls later.

A ``Task`` is meant for one thread at a time; an ``Agent`` (and its client) may be
shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import SecretStr

from app.codegen import status as st
from app.codegen.client import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    MAX_PAGE_SIZE,
    PROVIDER_NAME,
    CodegenClient,
)
from app.codegen.models import AgentRun, AgentRunLog, PullRequest
from app.config import get_settings
from app.core.budget import CodegenLimiter, blocking_limiter, wait_at_most
from app.core.errors import (
    AgentRunTimeoutError,
    AIProviderError,
    CodegenBudgetExhaustedError,
    InvalidRequestError,
    ProviderNotConfiguredError,
)
from app.core.retry import RetryPolicy
from app.core.transfer import DEFAULT_MAX_ANSWER_BYTES

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 5.0

#: ``callback(old_status, new_status)``, called once per observed change.
StatusCallback = Callable[[str | None, str | None], None]
#: ``callback(task)``, called after every successful poll of a wait.
ProgressCallback = Callable[["Task"], None]
#: ``limiter="shared"``: the blocking limiter on the shared budget of the agent's token.
SHARED: Final = "shared"


def _positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequestError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class Agent:
    """Start and follow agent runs of one organization.

    ``timeout`` bounds each HTTP request in all (default 30 s); ``max_answer_bytes`` caps
    what one answer may hold (default ``settings.aiw_max_answer_bytes`` when ``settings``
    is given, else 8 MiB). ``poll_interval`` is the default
    pause between polls of ``Task.wait_for_completion``; ``retry_policy`` gives the
    backoff after a failed poll. ``sleep`` and ``clock`` are injectable for tests
    (they drive the wait loop, not the budget's waits, which are real time).

    ``limiter`` (default ``"shared"``): every request waits for a token of the shared
    Codegen budget of this token and organization (``app.core.budget.blocking_limiter``,
    with the Redis and the limits of ``settings``, default ``get_settings()``);
    ``None``: no budget; or any ``CodegenLimiter``.
    """

    def __init__(
        self,
        org_id: int,
        token: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float | None = None,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        limiter: CodegenLimiter | Literal["shared"] | None = SHARED,
        settings: Settings | None = None,
        max_answer_bytes: int | None = None,
    ) -> None:
        shared = isinstance(limiter, str) and limiter == SHARED
        hooks = ("before_request", "rate_limited")
        if not shared and limiter is not None and (
            isinstance(limiter, str) or not all(callable(getattr(limiter, n, None)) for n in hooks)
        ):
            raise InvalidRequestError(
                f"limiter must be 'shared', None or a CodegenLimiter, got {limiter!r}"
            )
        if max_answer_bytes is None:
            max_answer_bytes = (
                settings.aiw_max_answer_bytes if settings is not None else DEFAULT_MAX_ANSWER_BYTES
            )
        self.client = CodegenClient(
            org_id,
            token,
            base_url,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
            max_answer_bytes=max_answer_bytes,
        )
        if shared:
            self.client.limiter = blocking_limiter(
                settings or get_settings(), self.client.budget_digest
            )
        elif limiter is not None and not isinstance(limiter, str):
            self.client.limiter = limiter
        self.poll_interval = _positive("poll_interval", poll_interval) or DEFAULT_POLL_INTERVAL
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> Agent:
        """An agent from ``CODEGEN_*`` settings; ``ProviderNotConfiguredError`` if absent."""
        settings = settings or get_settings()
        if settings.codegen_token is None or settings.codegen_org_id is None:
            raise ProviderNotConfiguredError(
                "Codegen needs CODEGEN_TOKEN and CODEGEN_ORG_ID", provider_name=PROVIDER_NAME
            )
        kwargs.setdefault("poll_interval", settings.codegen_poll_interval)
        kwargs.setdefault(
            "retry_policy",
            RetryPolicy.from_settings(settings, max_retries=settings.codegen_max_retries),
        )
        kwargs.setdefault("settings", settings)
        return cls(
            settings.codegen_org_id,
            settings.codegen_token,
            settings.codegen_base_url,
            settings.codegen_timeout,
            **kwargs,
        )

    @property
    def org_id(self) -> int:
        return self.client.org_id

    @property
    def limiter(self) -> CodegenLimiter | None:
        """What every request of this agent asks first (``None``: nothing)."""
        return self.client.limiter

    def run(
        self,
        prompt: str,
        *,
        images: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        repo_id: int | None = None,
        model: str | None = None,
        agent_type: str | None = None,
    ) -> Task:
        """Start an agent run (one request, never repeated: creating is not idempotent)."""
        run = self.client.create_run(
            prompt,
            images=images,
            metadata=metadata,
            repo_id=repo_id,
            model=model,
            agent_type=agent_type,
        )
        log.debug("codegen run %d created, status %s", run.id, run.status)
        return Task(self, run)

    def get(self, run_id: int) -> Task:
        """A task for an existing run, with its current state."""
        return Task(self, self.client.get_run(run_id))

    def tasks(self, skip: int = 0, limit: int = MAX_PAGE_SIZE) -> list[Task]:
        """One page of the organization's runs as tasks, newest first."""
        return [Task(self, run) for run in self.client.list_runs(skip=skip, limit=limit).items]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Agent org_id={self.org_id} base_url={self.client.base_url!r}>"


class Task:
    """One agent run, as last seen. ``refresh()`` asks again; callbacks hear of changes."""

    def __init__(self, agent: Agent, run: AgentRun) -> None:
        self._agent = agent
        self._run = run
        self._callbacks: list[StatusCallback] = []

    # --- what the run looks like --------------------------------------------------------
    @property
    def run(self) -> AgentRun:
        """The latest ``AgentRun`` received."""
        return self._run

    @property
    def id(self) -> int:
        return self._run.id

    @property
    def status(self) -> str | None:
        """Verbatim from the API (``"PENDING"``, ``"ACTIVE"``, ``"COMPLETE"``, ...)."""
        return self._run.status

    @property
    def is_terminal(self) -> bool:
        return st.is_terminal(self._run.status)

    @property
    def is_success(self) -> bool:
        return st.is_success(self._run.status)

    @property
    def needs_input(self) -> bool:
        """The agent waits for a human (``PAUSED``): ``resume`` it."""
        return self._run.status in st.NEEDS_INPUT

    @property
    def result(self) -> str | None:
        return self._run.result

    @property
    def summary(self) -> str | None:
        return self._run.summary

    @property
    def web_url(self) -> str | None:
        return self._run.web_url

    @property
    def pull_requests(self) -> list[PullRequest]:
        return list(self._run.github_pull_requests)

    @property
    def metadata(self) -> dict[str, Any] | None:
        return self._run.metadata

    # --- talking to the API -------------------------------------------------------------
    def refresh(self) -> Task:
        """Fetch the run again; status callbacks run if the status changed."""
        self._update(self._agent.client.get_run(self.id))
        return self

    def logs(self) -> list[AgentRunLog]:
        """Every log entry of the run, oldest first (all pages)."""
        return list(self._agent.client.iter_logs(self.id))

    def resume(self, prompt: str, images: Sequence[str] | None = None) -> Task:
        """Give the run a new prompt (a ``PAUSED`` run, or a finished one to go on)."""
        self._update(self._agent.client.resume_run(self.id, prompt, images))
        return self

    def add_status_callback(self, callback: StatusCallback) -> None:
        """Call ``callback(old_status, new_status)`` on every status change seen from now.

        A callback that raises is logged and does not stop the others.
        """
        if not callable(callback):
            raise InvalidRequestError("a status callback must be callable")
        self._callbacks.append(callback)

    def wait_for_completion(
        self,
        timeout: float | None = None,
        poll_interval: float | None = None,
        progress_callback: ProgressCallback | None = None,
    ) -> Task:
        """Poll until the run ends (a status in ``TERMINAL``); return this task.

        Sleeps ``poll_interval`` (default: the agent's) between polls, never less.
        A poll that fails with a retryable error (429, 5xx, timeout, connection,
        garbled body) is followed by the retry policy's backoff (the server's
        ``Retry-After`` if any; at least ``poll_interval``) and polling goes on; a poll
        that found no token of the shared budget in time (``CodegenBudgetExhaustedError``,
        nothing sent) is tried again once the budget says; any other error is raised.
        ``progress_callback(task)`` runs after every successful poll (an exception from
        it ends the wait). When ``timeout`` seconds have passed, raises
        ``AgentRunTimeoutError`` (a ``ProviderTimeoutError`` with
        ``timeout_duration=timeout``); the run itself goes on. A run that does not
        finish by itself (``PAUSED``, an unknown status) is waited for until then.
        """
        timeout = _positive("timeout", timeout)
        interval = _positive("poll_interval", poll_interval) or self._agent.poll_interval
        agent = self._agent
        deadline = None if timeout is None else agent.clock() + timeout
        delay = interval
        failed_polls = 0
        remaining: float | None = None
        while not self.is_terminal:
            if deadline is not None:
                remaining = deadline - agent.clock()
                if remaining <= 0:
                    raise AgentRunTimeoutError(
                        f"Codegen agent run {self.id} still {self.status} after {timeout:g}s",
                        timeout_duration=timeout,
                        run_id=self.id,
                        last_status=self.status,
                        provider_name=PROVIDER_NAME,
                        request_id=str(self.id),
                    )
                delay = min(delay, remaining)
            agent.sleep(delay)
            try:
                if remaining is None:
                    self.refresh()
                else:  # a poll waits for the budget no longer than the wait's deadline
                    with wait_at_most(max(0.0, remaining - delay)):
                        self.refresh()
            except CodegenBudgetExhaustedError as spent:
                delay = max(interval, spent.wait)
                log.info("codegen run %d: no budget for a poll; next in %.2fs", self.id, delay)
                continue
            except AIProviderError as error:
                if not error.retryable:
                    raise
                delay = max(interval, agent.retry_policy.delay_for(error, failed_polls))
                failed_polls += 1
                log.info(
                    "codegen run %d: poll failed (%s); next poll in %.2fs",
                    self.id, error.error_type, delay,
                )
                continue
            failed_polls = 0
            delay = interval
            if progress_callback is not None:
                progress_callback(self)
        return self

    # --- internals ----------------------------------------------------------------------
    def _update(self, run: AgentRun) -> None:
        old = self._run.status
        self._run = run
        if run.status != old:
            log.debug("codegen run %d: %s -> %s", run.id, old, run.status)
            for callback in list(self._callbacks):
                try:
                    callback(old, run.status)
                except Exception:  # a user's callback must not break the others
                    log.exception("codegen run %d: status callback %r failed", run.id, callback)

    def __repr__(self) -> str:
        return f"<Task id={self.id} status={self.status!r}>"
