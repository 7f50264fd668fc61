"""Errors of the job layer (following a job, not calling a provider)."""

from __future__ import annotations


class JobError(Exception):
    """Base of the job layer's errors."""


class JobNotFoundError(JobError, LookupError):
    """No job has this id."""


class JobTimeoutError(JobError, TimeoutError):
    """``wait(timeout)`` ran out before the job ended. The job goes on."""


class JobNotFinishedError(JobError):
    """``result()`` was asked of a job that has not ended yet."""


class JobFailedError(JobError):
    """The job ended without an answer; ``error_type`` and ``message`` say why."""

    def __init__(self, error_type: str | None, message: str | None, *, job_id: str) -> None:
        super().__init__(f"job {job_id} failed: {error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.job_id = job_id
