"""Errors of tracked agent runs (following a run, not calling Codegen).

Codegen's own answers stay ``app.ai.errors`` errors (``ProviderNotFoundError``, ...);
bad input is ``InvalidRequestError``, refused before anything is written.
"""

from __future__ import annotations

from app.jobs.errors import JobError, JobNotFoundError, JobTimeoutError


class AgentRunNotFoundError(JobNotFoundError):
    """No tracked agent run has this id."""


class UnknownRemoteRunError(AgentRunNotFoundError):
    """Codegen has no agent run with this id in the organization: nothing was tracked."""

    def __init__(self, message: str, *, remote_id: int) -> None:
        super().__init__(message)
        self.remote_id = remote_id


class AgentRunTimeoutError(JobTimeoutError):
    """``AgentRunHandle.wait(timeout)`` ran out before the run ended. The run goes on."""


class AgentRunStateError(JobError):
    """The run is not in a state that allows this (e.g. resuming a run still being created)."""


class CodegenBudgetExhaustedError(JobError):
    """No Codegen request could be made within the wait allowed: the shared budget (60
    requests per 30 s) is spent by other work. Try again in ``wait`` seconds."""

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait
