"""One error tree for every provider, the Codegen client, the job layer and the queue.

Errors are classified by HTTP status code and exception type, never by words in
a message. A provider error's message (and request id) is redacted when the error is
made (``app.core.redact``): a key echoed by a provider never reaches a log, a row or
a webhook through it. Each class says whether it is worth retrying (``retryable``) and
whether a provider chain may move on to its next provider (``fallback``).

    AIWorkerError                          the root: ``except AIWorkerError`` catches all of ours
    ├── AIProviderError                    a provider (OpenAI, Codegen) or a request to one
    │   ├── InvalidRequestError            bad input caught before any network call
    │   │   └── UnknownProviderError
    │   ├── ProviderUnavailableError       cannot be used now (not configured, down)
    │   │   ├── ProviderNotConfiguredError missing credentials
    │   │   └── ProviderConnectionError    connection refused/reset/DNS (retryable)
    │   ├── ProviderAuthenticationError    401 / 403
    │   ├── ProviderQuotaError             402, or OpenAI's insufficient_quota
    │   ├── ProviderBadRequestError        400 / 404 / 422
    │   │   ├── ProviderNotFoundError      404
    │   │   └── ContextTooLongError        the prompt does not fit the model
    │   ├── ProviderRateLimitError         429 (``retry_after``)
    │   ├── ProviderTimeoutError           timed out (``timeout_duration``), or 408
    │   │   └── AgentRunTimeoutError       a wait for a Codegen run ran out (a JobTimeoutError too)
    │   ├── ProviderConflictError          409
    │   ├── ProviderServerError            5xx
    │   ├── ProviderResponseError          a 2xx whose body is not what the API documents
    │   │   └── AnswerTooLargeError        ... or is larger than AIW_MAX_ANSWER_BYTES (not retried)
    │   ├── AgentRunFailedError            a Codegen run ended FAILED/ERROR/CANCELLED/...
    │   └── BudgetExceededError            not called: a spend budget (``fail`` policy) is spent
    ├── JobError                           following a job or a tracked run (not calling)
    │   ├── JobNotFoundError               no such job
    │   │   └── AgentRunNotFoundError      no such tracked run
    │   │       └── UnknownRemoteRunError  Codegen has no such run: nothing tracked
    │   ├── JobTimeoutError                ``wait(timeout)`` ran out; the job goes on
    │   ├── JobNotFinishedError            ``result()`` of a job still going
    │   ├── JobFailedError                 the job ended without an answer
    │   ├── AgentRunStateError             not allowed in the run's state
    │   ├── CodegenBudgetExhaustedError    no Codegen request possible within the wait
    │   │   └── CodegenBudgetTimeoutError  ... in a blocking call (a provider error too)
    │   └── InvalidBudgetError             a spend budget's cap, period, policy or tag is refused
    └── PublishError                       the queue did not take a message (the sweep will)
"""

from __future__ import annotations

from typing import Any, ClassVar

from app.core.redact import redact


class AIWorkerError(Exception):
    """The root of every error ai-worker raises on purpose."""


class AIProviderError(AIWorkerError):
    """Base of every error raised by the provider layer."""

    retryable: ClassVar[bool] = False
    fallback: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        provider_name: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        # A provider's error may echo the key it was sent: nothing that prints, stores or
        # sends this error ever sees a secret (app.core.redact).
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.provider_name = provider_name
        self.status_code = status_code
        self.request_id = redact(request_id)
        self.retry_after = retry_after

    @property
    def error_type(self) -> str:
        """Stable name recorded in the database (the class name)."""
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_type": self.error_type,
            "message": self.message,
            "provider_name": self.provider_name,
            "status_code": self.status_code,
            "request_id": self.request_id,
            "retry_after": self.retry_after,
            "retryable": self.retryable,
        }

    def __str__(self) -> str:
        where = f"[{self.provider_name}] " if self.provider_name else ""
        code = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{where}{self.message}{code}"


class InvalidRequestError(AIProviderError, ValueError):
    """The request is malformed (empty prompt, bad parameter); refused before any call.

    Another provider would refuse it too, so a chain does not fall back.
    """

    fallback = False


class UnknownProviderError(InvalidRequestError):
    """No provider is registered under the name asked for."""


class ProviderUnavailableError(AIProviderError):
    """The provider cannot be used right now; a chain moves on to the next one."""


class ProviderNotConfiguredError(ProviderUnavailableError):
    """The provider's credentials are missing from the settings."""


class ProviderConnectionError(ProviderUnavailableError):
    """The connection failed (refused, reset, DNS, TLS). Worth another try."""

    retryable = True


class ProviderAuthenticationError(AIProviderError):
    """The credentials were refused (401) or lack access (403)."""


class ProviderQuotaError(AIProviderError):
    """The account has no quota left (Codegen 402, OpenAI ``insufficient_quota``)."""


class ProviderBadRequestError(AIProviderError):
    """The provider refused the request as invalid (400, 422)."""


class ProviderNotFoundError(ProviderBadRequestError):
    """The resource (model, agent run) does not exist (404)."""


class ContextTooLongError(ProviderBadRequestError):
    """The prompt does not fit the model's context window."""


class ProviderRateLimitError(AIProviderError):
    """429. ``retry_after`` is the server's wait in seconds, when it said one;
    ``limits`` what the answer's rate-limit headers said of the key's limits (for
    OpenAI ``x-ratelimit-*``: ``{"remaining_requests": 0, "remaining_tokens": 812,
    ...}``), None when it sent none."""

    retryable = True
    limits: dict[str, Any] | None = None


class ProviderTimeoutError(AIProviderError):
    """No answer within ``timeout_duration`` seconds (or the server answered 408)."""

    retryable = True

    def __init__(
        self, message: str, *, timeout_duration: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.timeout_duration = timeout_duration

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "timeout_duration": self.timeout_duration}


class ProviderConflictError(AIProviderError):
    """409: a concurrent change on the provider's side. Worth another try."""

    retryable = True


class ProviderServerError(AIProviderError):
    """5xx: the provider failed. Worth another try."""

    retryable = True


class ProviderResponseError(AIProviderError):
    """A success status with a body that is not what the API documents (bad JSON)."""

    retryable = True


class AnswerTooLargeError(ProviderResponseError):
    """The answer's body is larger than ``AIW_MAX_ANSWER_BYTES`` (``limit_bytes``).

    Reading stopped at the cap: nothing of the answer is kept, stored or sent on
    (``app.core.transfer``). Not retryable: the size comes from the request (the prompt,
    ``max_tokens``, logprobs, a run's logs) or from a provider that misbehaves, so the
    same provider will most likely send as much again, and every try costs the cap in
    memory and bandwidth. A chain still falls back to its next provider, which may
    answer the same request in less. Raise the setting if such answers are expected.
    """

    retryable = False

    def __init__(self, message: str, *, limit_bytes: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit_bytes = limit_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "limit_bytes": self.limit_bytes}


class AgentRunFailedError(AIProviderError):
    """A Codegen agent run ended without success (FAILED, ERROR, CANCELLED, ...)."""

    def __init__(
        self,
        message: str,
        *,
        run_id: int | None = None,
        run_status: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.run_id = run_id
        self.run_status = run_status


class BudgetExceededError(AIProviderError):
    """A spend budget keeps the call out: its cap is spent (``fail`` policy), or the
    call could never fit it (``app.jobs.spend``).

    Not retried, and no fallback: every provider would spend the same budget.
    """

    fallback = False


# --- following jobs and runs ----------------------------------------------------------


class JobError(AIWorkerError):
    """Base of the job layer's errors (following a job, not calling a provider)."""


class JobNotFoundError(JobError, LookupError):
    """No job has this id."""


class JobTimeoutError(JobError, TimeoutError):
    """``wait(timeout)`` ran out before the job ended. The job goes on."""


class JobNotFinishedError(JobError):
    """``result()`` was asked of a job that has not ended yet."""


class JobFailedError(JobError):
    """The job ended without an answer; ``error_type`` and ``message`` say why."""

    def __init__(self, error_type: str | None, message: str | None, *, job_id: str) -> None:
        message = redact(message)
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.job_id = job_id


class AgentRunTimeoutError(ProviderTimeoutError, JobTimeoutError):
    """A wait for a Codegen agent run reached its deadline before the run ended.

    Raised by ``Task.wait_for_completion`` and ``AgentRunHandle.wait``; the run goes on
    on Codegen's side. A ``ProviderTimeoutError`` (``timeout_duration`` is the wait's
    timeout) but *not* retryable: trying the request again would start a second run;
    follow the same run instead (``agent.get(run_id)``, ``get_agent_run(id)``).
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        run_id: int | None = None,
        last_status: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.run_id = run_id
        self.last_status = last_status

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "run_id": self.run_id, "last_status": self.last_status}


class AgentRunNotFoundError(JobNotFoundError):
    """No tracked agent run has this id."""


class UnknownRemoteRunError(AgentRunNotFoundError):
    """Codegen has no agent run with this id in the organization: nothing was tracked."""

    def __init__(self, message: str, *, remote_id: int) -> None:
        super().__init__(message)
        self.remote_id = remote_id


class AgentRunStateError(JobError):
    """The run is not in a state that allows this (e.g. resuming a run still being created)."""


class CodegenBudgetExhaustedError(JobError):
    """No Codegen request could be made within the wait allowed: the shared budget (60
    requests per 30 s) is spent by other work. Try again in ``wait`` seconds."""

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


class CodegenBudgetTimeoutError(CodegenBudgetExhaustedError, ProviderUnavailableError):
    """A blocking Codegen request found no token within ``max_wait`` seconds.

    A ``CodegenBudgetExhaustedError`` (``wait``: the seconds still missing) and a
    provider error (``provider_name="codegen"``, ``retry_after=wait``): not retryable
    (the wait already happened), but a provider chain falls back to its next provider.
    Nothing was sent to Codegen.
    """

    retryable = False

    def __init__(self, message: str, *, wait: float) -> None:
        CodegenBudgetExhaustedError.__init__(self, message, wait=wait)
        self.provider_name = "codegen"
        self.retry_after = wait


class InvalidBudgetError(JobError, ValueError):
    """A spend budget asked for with a bad cap, period, policy or tag; nothing written."""


class PublishError(AIWorkerError, RuntimeError):
    """The queue could not take the message. The row stays in the database for the sweep."""


# --- HTTP statuses ------------------------------------------------------------------------

_BY_STATUS: dict[int, type[AIProviderError]] = {
    400: ProviderBadRequestError,
    401: ProviderAuthenticationError,
    402: ProviderQuotaError,
    403: ProviderAuthenticationError,
    404: ProviderNotFoundError,
    408: ProviderTimeoutError,
    409: ProviderConflictError,
    413: ContextTooLongError,
    422: ProviderBadRequestError,
    429: ProviderRateLimitError,
}


def error_for_status(
    status_code: int,
    message: str,
    *,
    provider_name: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> AIProviderError:
    """The error class for an HTTP status: the one mapping every client uses."""
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = ProviderServerError if status_code >= 500 else ProviderBadRequestError
    return cls(
        message,
        provider_name=provider_name,
        status_code=status_code,
        request_id=request_id,
        retry_after=retry_after,
    )


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, AIProviderError) and error.retryable
