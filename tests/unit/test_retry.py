from __future__ import annotations

import email.utils
import time

import pytest

from app.core.errors import (
    AIProviderError,
    ProviderAuthenticationError,
    ProviderBadRequestError,
    ProviderConflictError,
    ProviderConnectionError,
    ProviderNotFoundError,
    ProviderRateLimitError,
    ProviderServerError,
    ProviderTimeoutError,
    error_for_status,
)
from app.core.retry import RetryPolicy, parse_retry_after


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, ProviderBadRequestError, False),
        (401, ProviderAuthenticationError, False),
        (403, ProviderAuthenticationError, False),
        (404, ProviderNotFoundError, False),
        (408, ProviderTimeoutError, True),
        (409, ProviderConflictError, True),
        (422, ProviderBadRequestError, False),
        (429, ProviderRateLimitError, True),
        (500, ProviderServerError, True),
        (502, ProviderServerError, True),
        (503, ProviderServerError, True),
        (418, ProviderBadRequestError, False),
    ],
)
def test_status_classification(status: int, cls: type[AIProviderError], retryable: bool) -> None:
    error = error_for_status(status, "boom", provider_name="x")
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.status_code == status


def test_classification_ignores_message_words() -> None:
    # A 400 whose text talks about rate limits is still a bad request.
    error = error_for_status(400, "rate limit exceeded, timeout, try again")
    assert isinstance(error, ProviderBadRequestError) and not error.retryable


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    # retry-after-ms wins over Retry-After (finer grained), as the OpenAI SDK does.
    assert parse_retry_after({"retry-after-ms": "100", "Retry-After": "9"}) == 0.1
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None


def test_delay_honours_retry_after_up_to_cap() -> None:
    policy = RetryPolicy(max_retries=3, base_delay=1, max_delay=8, retry_after_max=20)
    assert policy.delay_for(ProviderRateLimitError("x", retry_after=7), 0) == 7
    assert policy.delay_for(ProviderRateLimitError("x", retry_after=500), 0) == 20
    assert policy.delay_for(ProviderRateLimitError("x", retry_after=0), 0) == 0


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(max_retries=10, base_delay=1, max_delay=8, jitter=0.25)
    for n, full in [(0, 1), (1, 2), (2, 4), (3, 8), (6, 8)]:
        delays = {policy.backoff(n) for _ in range(50)}
        assert all(0.75 * full <= d <= full for d in delays)
        assert len(delays) > 1  # jitter spreads workers apart


def test_should_retry_counts_and_kinds() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.should_retry(ProviderServerError("x"), 0)
    assert policy.should_retry(ProviderConnectionError("x"), 1)
    assert not policy.should_retry(ProviderServerError("x"), 2)
    assert not policy.should_retry(ProviderAuthenticationError("x"), 0)
    assert not policy.should_retry(ValueError("not ours"), 0)


def test_call_retries_then_succeeds_and_reports_waits() -> None:
    policy = RetryPolicy(max_retries=3, base_delay=0.5, max_delay=4)
    slept: list[float] = []
    calls = iter([ProviderRateLimitError("x", retry_after=2), ProviderServerError("y"), "ok"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert policy.call(fn, sleep=slept.append) == "ok"
    assert slept[0] == 2
    assert 0.75 <= slept[1] <= 1.0  # second retry: base * 2


def test_call_gives_up_with_last_error() -> None:
    policy = RetryPolicy(max_retries=2, base_delay=0.01)
    count = 0

    def fn() -> None:
        nonlocal count
        count += 1
        raise ProviderServerError(f"try {count}", status_code=503)

    with pytest.raises(ProviderServerError, match="try 3"):
        policy.call(fn, sleep=lambda s: None)
    assert count == 3


def test_call_does_not_retry_non_retryable() -> None:
    policy = RetryPolicy(max_retries=5)
    count = 0

    def fn() -> None:
        nonlocal count
        count += 1
        raise ProviderAuthenticationError("no", status_code=401)

    with pytest.raises(ProviderAuthenticationError):
        policy.call(fn, sleep=lambda s: None)
    assert count == 1


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=0)
