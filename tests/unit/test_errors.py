"""The one error tree (app.core.errors): one root, one AgentRunTimeoutError."""

from __future__ import annotations

import app.codegen
import app.jobs
from app.core import errors


def test_every_error_of_ours_has_one_root() -> None:
    for cls in (
        errors.AIProviderError,
        errors.ProviderRateLimitError,
        errors.JobError,
        errors.JobNotFoundError,
        errors.UnknownRemoteRunError,
        errors.PublishError,
    ):
        assert issubclass(cls, errors.AIWorkerError), cls


def test_one_agent_run_timeout_for_the_sdk_wait_and_the_tracked_wait() -> None:
    assert app.codegen.AgentRunTimeoutError is app.jobs.AgentRunTimeoutError
    error = errors.AgentRunTimeoutError(
        "still ACTIVE", run_id=7, last_status="ACTIVE", timeout_duration=30.0
    )
    # Caught as either: a provider timeout (not retryable: it would start a second run)
    # and a job wait that ran out.
    assert isinstance(error, errors.ProviderTimeoutError)
    assert isinstance(error, errors.JobTimeoutError)
    assert isinstance(error, TimeoutError)
    assert not error.retryable
    assert error.timeout_duration == 30.0
    assert error.to_dict()["run_id"] == 7


def test_statuses_map_through_the_one_table() -> None:
    assert isinstance(errors.error_for_status(429, "slow down"), errors.ProviderRateLimitError)
    assert isinstance(errors.error_for_status(503, "down"), errors.ProviderServerError)
    assert isinstance(errors.error_for_status(418, "teapot"), errors.ProviderBadRequestError)
