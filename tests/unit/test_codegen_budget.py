"""The in-process Codegen paths pay from the shared budget: no 429 of their own making.

Against the fake Codegen with tight limits (30 requests/s, 8 creations/s) and the
same limits in the settings: many ``generate_response`` calls and many fast polls
from several threads meet no 429 at all; without the limiter the same load does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.ai.codegen_provider import CodegenProvider
from app.codegen import Agent, CodegenClient, Task
from app.config import get_settings
from app.core.budget import (
    BlockingCodegenLimiter,
    BucketSpec,
    CodegenBudget,
    MemoryTokenBucket,
    get_codegen_budget,
)
from app.core.cooldown import MemoryCooldowns, credential_digest
from app.core.errors import AIProviderError, CodegenBudgetExhaustedError, CodegenBudgetTimeoutError
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer

STANDARD = (30, 1.0)  # requests per second, at the fake and in the settings
CREATE = (8, 1.0)


@pytest.fixture
def tight(env: Callable[..., None]) -> Iterator[FakeCodegenServer]:
    """A fake with tight limits, and the environment pointing at it with the same ones."""
    srv = FakeCodegenServer(
        pending_seconds=0.05, active_seconds=0.15, standard_limit=STANDARD, create_limit=CREATE
    ).start()
    env(
        CODEGEN_TOKEN=srv.token,
        CODEGEN_ORG_ID=srv.org_id,
        CODEGEN_BASE_URL=srv.url,
        CODEGEN_TIMEOUT=2,
        CODEGEN_POLL_INTERVAL=0.02,
        CODEGEN_RUN_TIMEOUT=60,
        RETRY_BASE_DELAY=0.01,
        RETRY_MAX_DELAY=0.05,
        CODEGEN_RATE_LIMIT=STANDARD[0],
        CODEGEN_RATE_WINDOW=STANDARD[1],
        CODEGEN_RATE_BURST=5,
        CODEGEN_CREATE_LIMIT=CREATE[0],
        CODEGEN_CREATE_WINDOW=CREATE[1],
        CODEGEN_CREATE_BURST=3,
        CODEGEN_RATE_MARGIN=0.2,
    )
    try:
        yield srv
    finally:
        srv.stop()


def in_threads(n: int, work: Callable[[int], Any]) -> list[BaseException]:
    """Run ``work(i)`` for i < n on ``n`` threads; the errors raised."""
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def fifteen_answers(provider: CodegenProvider) -> list[BaseException]:
    """15 ``generate_response`` calls, 5 threads of 3."""

    def three(i: int) -> None:
        for n in range(3):
            answer = provider.generate_response(f"task {i}.{n}", tags=["load"])
            assert answer.metadata["status"] == "COMPLETE"

    return in_threads(5, three)


def test_fifteen_generate_responses_from_threads_meet_no_429(tight: FakeCodegenServer) -> None:
    provider = CodegenProvider()
    assert fifteen_answers(provider) == []
    assert tight.run_count == 15
    assert tight.rate_limited_count == 0
    assert tight.request_count("/agent/run", method="POST") == 15  # no creation retried
    assert provider.get_stats()["success_count"] == 15
    provider.close()


def test_without_the_limiter_the_same_load_meets_429s(tight: FakeCodegenServer) -> None:
    provider = CodegenProvider(limiter=None)
    errors = fifteen_answers(provider)
    assert tight.rate_limited_count > 0  # 15 creations at once, 8 a second allowed
    assert all(isinstance(error, AIProviderError) for error in errors)
    provider.close()


def polls(agent: Agent, srv: FakeCodegenServer, threads: int = 6) -> list[BaseException]:
    """``threads`` waits, each polling its own 1 s run every 5 ms (200 requests/s each)."""
    ids = [srv.add_run(f"run {i}", pending_seconds=0.3, active_seconds=0.7) for i in range(threads)]

    def wait(i: int) -> None:
        task = agent.get(ids[i])
        assert isinstance(task, Task)
        task.wait_for_completion(timeout=30, poll_interval=0.005)
        assert task.status == "COMPLETE"

    return in_threads(threads, wait)


def test_many_fast_polls_from_threads_meet_no_429(tight: FakeCodegenServer) -> None:
    agent = Agent.from_settings()
    assert isinstance(agent.limiter, BlockingCodegenLimiter)
    assert polls(agent, tight) == []
    assert tight.rate_limited_count == 0
    # the polls were slowed to the budget: about 30 in any second, not 1200
    assert tight.request_count("/agent/run/", method="GET") < 6 + 60
    agent.close()


def test_without_the_limiter_fast_polls_meet_429s(tight: FakeCodegenServer) -> None:
    agent = Agent.from_settings(limiter=None)
    assert polls(agent, tight) == []  # the wait loop backs off and still ends
    assert tight.rate_limited_count > 0
    agent.close()


def test_agent_pays_from_the_budget_of_its_own_credentials(tight: FakeCodegenServer) -> None:
    settings = get_settings()
    agent = Agent(tight.org_id, tight.token, tight.url)  # no settings given: get_settings()
    limiter = agent.limiter
    assert isinstance(limiter, BlockingCodegenLimiter)
    # the same credentials as the settings: the workers' budget (and Redis keys)
    assert agent.client.budget_digest == credential_digest(settings, "codegen")
    assert limiter.budget is get_codegen_budget(settings)
    before = limiter.budget.standard.peek()
    agent.client.list_runs(limit=1)
    assert limiter.budget.standard.peek() == pytest.approx(before - 1, abs=0.2)
    # another organization: another budget
    other = Agent(tight.org_id + 1, tight.token, tight.url)
    assert isinstance(other.limiter, BlockingCodegenLimiter)
    assert other.limiter.budget is not limiter.budget
    assert tight.token not in repr(agent.limiter) and tight.token not in repr(agent)
    agent.close()
    other.close()


def test_a_client_without_limiter_is_charged_nothing(tight: FakeCodegenServer) -> None:
    """The workers' gateway pays itself: its plain client must not pay twice."""
    budget = get_codegen_budget(get_settings())
    with CodegenClient(tight.org_id, tight.token, tight.url) as client:
        assert client.limiter is None
        for _ in range(8):
            client.list_runs(limit=1)
    assert budget.standard.peek() == pytest.approx(5, abs=0.01)  # still full


def test_a_429_makes_every_agent_of_the_token_wait(tight: FakeCodegenServer) -> None:
    first = Agent.from_settings()
    second = Agent.from_settings()
    tight.faults.push(Fault.rate_limit(retry_after=0.4))
    with pytest.raises(AIProviderError):
        first.client.list_runs(limit=1)
    started = tight.clock()
    second.client.list_runs(limit=1)  # waits out the cooldown the 429 started
    assert tight.clock() - started >= 0.35
    first.close()
    second.close()


def test_a_wait_never_fails_for_want_of_budget(tight: FakeCodegenServer) -> None:
    """A poll with no token in time is tried later; the wait ends at its own deadline."""
    agent = Agent.from_settings()
    assert isinstance(agent.limiter, BlockingCodegenLimiter)
    agent.limiter.max_wait = 0.0  # every poll that finds the bucket empty gives up at once
    assert polls(agent, tight, threads=4) == []
    assert tight.rate_limited_count == 0
    agent.close()


def test_no_token_in_time_is_one_clear_provider_error(tight: FakeCodegenServer) -> None:
    """The creation bucket stays empty: the call fails at once (no retry, nothing sent),
    as a provider error a chain can fall back from, counted in the stats."""
    budget = CodegenBudget(
        MemoryTokenBucket(BucketSpec(capacity=5, rate=10.0)),
        MemoryTokenBucket(BucketSpec(capacity=1, rate=0.001)),
    )
    budget.create.take()
    limiter = BlockingCodegenLimiter(budget, MemoryCooldowns(), "x", max_wait=1.0)
    provider = CodegenProvider(limiter=limiter)
    with pytest.raises(CodegenBudgetExhaustedError) as info:
        provider.generate_response("x")
    error = info.value
    assert isinstance(error, CodegenBudgetTimeoutError) and isinstance(error, AIProviderError)
    assert error.fallback and not error.retryable and error.wait > 100
    assert "no Codegen create request could be made within 1s" in str(error)
    assert tight.requests == []
    assert provider.get_stats()["errors_by_type"] == {"CodegenBudgetTimeoutError": 1}
