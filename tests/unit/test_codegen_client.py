"""The Codegen client, Agent and Task against the fake Codegen server (real HTTP)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.codegen import (
    TERMINAL,
    Agent,
    AgentRun,
    AgentRunTimeoutError,
    CodegenClient,
    Task,
    is_terminal,
)
from app.codegen import status as st
from app.core.errors import (
    CodegenBudgetExhaustedError,
    CodegenBudgetTimeoutError,
    InvalidRequestError,
    ProviderAuthenticationError,
    ProviderBadRequestError,
    ProviderConnectionError,
    ProviderNotConfiguredError,
    ProviderNotFoundError,
    ProviderQuotaError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderServerError,
    ProviderTimeoutError,
)
from app.core.retry import RetryPolicy
from app.sandbox.base import Fault
from app.sandbox.codegen_server import FakeCodegenServer
from tests.plugins.codegen_fake import ManualClock

FAST_RETRY = RetryPolicy(max_retries=0, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def client(fake_codegen: FakeCodegenServer) -> Iterator[CodegenClient]:
    with CodegenClient(fake_codegen.org_id, fake_codegen.token, fake_codegen.url, timeout=2) as c:
        yield c


@pytest.fixture
def clocked(manual_clock: ManualClock) -> Iterator[FakeCodegenServer]:
    """A fake whose time is ``manual_clock``: PENDING 10 s, ACTIVE 20 s, no rate limits."""
    srv = FakeCodegenServer(
        clock=manual_clock, pending_seconds=10, active_seconds=20, rate_limits=False
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def clocked_agent(clocked: FakeCodegenServer, manual_clock: ManualClock) -> Iterator[Agent]:
    """An agent that sleeps on ``manual_clock``: a 30 s lifecycle takes no real time.

    Without the shared budget (``limiter=None``): its buckets fill in real time, and
    these tests are about the wait loop (the budget has its own tests).
    """
    with Agent(
        clocked.org_id, clocked.token, clocked.url, timeout=0.3, poll_interval=1.0,
        retry_policy=RetryPolicy(max_retries=0, base_delay=2.0, max_delay=8.0, jitter=0.0),
        sleep=manual_clock.sleep, clock=manual_clock, limiter=None,
    ) as agent:
        yield agent


def gets(srv: FakeCodegenServer) -> int:
    return srv.request_count("/agent/run/", method="GET")


# --- status sets ----------------------------------------------------------------------------


def test_status_sets() -> None:
    assert {
        "COMPLETE", "FAILED", "ERROR", "CANCELLED", "TIMEOUT", "MAX_ITERATIONS_REACHED",
        "OUT_OF_TOKENS", "STOPPED",
    } == TERMINAL
    assert {"COMPLETE"} == st.SUCCESS
    for status in ("PENDING", "ACTIVE", "RUNNING", "EVALUATION", "PAUSED", "SOMETHING_NEW"):
        assert not is_terminal(status)
    assert not is_terminal(None)
    assert not is_terminal("complete")  # the prose docs' lowercase is not the API's
    assert st.is_failure("FAILED") and not st.is_failure("COMPLETE")
    assert st.is_known("PAUSED") and not st.is_known("SOMETHING_NEW")


# --- the calls ------------------------------------------------------------------------------


def test_create_get_list_resume_logs(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    run = client.create_run(
        "Fix the flaky test", metadata={"job": "j-1"}, repo_id=3, model="claude-sonnet",
        agent_type="codegen", images=["data:image/png;base64,AAAA"],
    )
    assert isinstance(run, AgentRun)
    assert run.status == "PENDING" and run.organization_id == fake_codegen.org_id
    assert run.metadata == {"job": "j-1"}
    assert run.web_url == f"https://codegen.com/agent/trace/{run.id}"
    sent = fake_codegen.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {fake_codegen.token}"
    assert sent.body == {
        "prompt": "Fix the flaky test", "metadata": {"job": "j-1"}, "repo_id": 3,
        "model": "claude-sonnet", "agent_type": "codegen",
        "images": ["data:image/png;base64,AAAA"],
    }
    plain = client.create_run("Only a prompt")
    assert fake_codegen.requests[-1].body == {"prompt": "Only a prompt"}

    assert client.get_run(run.id).id == run.id
    page = client.list_runs(limit=1)
    assert [r.id for r in page.items] == [plain.id]
    assert (page.total, page.page, page.size, page.pages) == (2, 1, 1, 2)

    time.sleep(0.25)
    done = client.get_run(run.id)
    assert done.status == "COMPLETE" and done.is_terminal and done.is_success
    assert done.result == "Done: Fix the flaky test"
    assert done.github_pull_requests[0].head_branch_name

    resumed = client.resume_run(run.id, "Now update the changelog")
    assert resumed.status == "ACTIVE"
    logs = client.get_logs(run.id)
    assert logs.id == run.id and logs.total_logs == len(logs.logs) > 0
    assert {log.agent_run_id for log in logs.logs} == {run.id}
    user = [log.observation for log in logs.logs if log.message_type == "USER_MESSAGE"]
    assert user == ["Fix the flaky test", "Now update the changelog"]
    assert client.get_logs(run.id, reverse=True).logs == logs.logs[::-1]


def test_iterators_walk_every_page(client: CodegenClient, fake_codegen: FakeCodegenServer) -> None:
    ids = [fake_codegen.add_run(f"t{n}", pending_seconds=0, active_seconds=0) for n in range(5)]
    assert [r.id for r in client.iter_runs(page_size=2)] == ids[::-1]
    assert fake_codegen.request_count("/agent/runs") == 3

    all_logs = client.get_logs(ids[0]).logs
    assert len(all_logs) == 5
    assert list(client.iter_logs(ids[0], page_size=2)) == all_logs


def test_iter_runs_skips_runs_pushed_down_by_new_ones(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    for n in range(4):
        fake_codegen.add_run(f"t{n}")
    seen = []
    for run in client.iter_runs(page_size=2):
        seen.append(run.id)
        if len(seen) == 2:
            fake_codegen.add_run("new one")  # the next page starts one later
    assert len(seen) == len(set(seen)) == 4


def test_extra_fields_and_unknown_status_are_kept(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    run_id = fake_codegen.add_run()
    fake_codegen.set_status(run_id, "RUNNING")
    run = client.get_run(run_id)
    assert run.status == "RUNNING" and not run.is_terminal
    fake_codegen.faults.push(Fault.status_code(200, {
        "id": 5, "organization_id": 42, "status": "WEIRD", "github_pull_requests": None,
        "brand_new_field": {"x": 1},
    }))
    odd = client.get_run(5)
    assert odd.status == "WEIRD" and odd.github_pull_requests == []
    assert odd.model_extra == {"brand_new_field": {"x": 1}}


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda c: c.create_run(""), "prompt"),
        (lambda c: c.create_run("   "), "prompt"),
        (lambda c: c.create_run(None), "prompt"),
        (lambda c: c.create_run("x", agent_type="gpt"), "agent_type"),
        (lambda c: c.create_run("x", repo_id="7"), "repo_id"),
        (lambda c: c.create_run("x", repo_id=True), "repo_id"),
        (lambda c: c.create_run("x", repo_id=1.5), "repo_id"),
        (lambda c: c.create_run("x", metadata=[1]), "metadata"),
        (lambda c: c.create_run("x", metadata={"t": object()}), "metadata"),
        (lambda c: c.create_run("x", images="data:x"), "images"),
        (lambda c: c.create_run("x", model=""), "model"),
        (lambda c: c.list_runs(limit=0), "limit"),
        (lambda c: c.list_runs(limit=101), "limit"),
        (lambda c: c.list_runs(skip=-1), "skip"),
        (lambda c: c.iter_runs(page_size=500), "limit"),
        (lambda c: c.get_logs(1, limit=101), "limit"),
        (lambda c: c.get_run("12"), "run_id"),
        (lambda c: c.get_run(0), "run_id"),
        (lambda c: c.resume_run(1, ""), "prompt"),
    ],
)
def test_bad_input_is_refused_before_any_call(
    client: CodegenClient,
    fake_codegen: FakeCodegenServer,
    call: Callable[[CodegenClient], Any],
    what: str,
) -> None:
    with pytest.raises(InvalidRequestError, match=what):
        call(client)
    assert fake_codegen.requests == []


def test_client_needs_credentials() -> None:
    with pytest.raises(ProviderNotConfiguredError):
        CodegenClient(42, "")
    with pytest.raises(ProviderNotConfiguredError):
        CodegenClient(None, "tok")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        CodegenClient(42, "tok", base_url="api.codegen.com")


# --- errors ---------------------------------------------------------------------------------


def test_unknown_run_is_not_found(client: CodegenClient) -> None:
    with pytest.raises(ProviderNotFoundError) as info:
        client.get_run(987654)
    assert info.value.status_code == 404
    assert info.value.provider_name == "codegen"
    assert "Agent run not found." in str(info.value)


def test_run_limit_is_quota_error(client: CodegenClient, fake_codegen: FakeCodegenServer) -> None:
    fake_codegen.max_runs = 0
    with pytest.raises(ProviderQuotaError) as info:
        client.create_run("x")
    assert info.value.status_code == 402 and not info.value.retryable


def test_other_org_and_wrong_token_are_authentication_errors(
    fake_codegen: FakeCodegenServer,
) -> None:
    other = CodegenClient(fake_codegen.org_id + 1, fake_codegen.token, fake_codegen.url)
    with other, pytest.raises(ProviderAuthenticationError) as info:
        other.list_runs()
    assert info.value.status_code == 403
    assert "do not have access" in str(info.value)
    wrong = CodegenClient(fake_codegen.org_id, "wrong", fake_codegen.url)
    with wrong, pytest.raises(ProviderAuthenticationError) as info:
        wrong.list_runs()
    assert info.value.status_code == 401


def test_validation_error_is_bad_request(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    fake_codegen.faults.push(Fault.status_code(422, {"detail": [
        {"type": "missing", "loc": ["body", "prompt"], "msg": "Field required", "input": {}},
    ]}))
    with pytest.raises(ProviderBadRequestError) as info:
        client.create_run("x")
    assert info.value.status_code == 422 and not info.value.retryable
    assert "body.prompt: Field required" in str(info.value)


def test_rate_limit_has_no_retry_after(fake_codegen: FakeCodegenServer) -> None:
    srv = FakeCodegenServer(standard_limit=(2, 30.0)).start()
    try:
        with CodegenClient(srv.org_id, srv.token, srv.url) as c:
            c.list_runs()
            c.list_runs()
            with pytest.raises(ProviderRateLimitError) as info:
                c.list_runs()
        assert info.value.status_code == 429
        assert info.value.retry_after is None
        assert info.value.retryable
        assert "Rate limit exceeded" in str(info.value)
        assert srv.rate_limited_count == 1
    finally:
        srv.stop()


def test_retry_after_is_honoured_when_sent(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    fake_codegen.faults.push(Fault.rate_limit(retry_after=3))
    with pytest.raises(ProviderRateLimitError) as info:
        client.list_runs()
    assert info.value.retry_after == 3.0


def test_server_error_with_a_plain_text_body(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    fake_codegen.faults.push(Fault.status_code(503))
    with pytest.raises(ProviderServerError) as info:
        client.list_runs()
    assert info.value.status_code == 503 and info.value.retryable
    assert "Service Unavailable" in str(info.value)


def test_garbled_bodies_are_response_errors(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    fake_codegen.faults.push(Fault.bad_json())
    with pytest.raises(ProviderResponseError):
        client.list_runs()
    fake_codegen.faults.push(Fault.status_code(200, {"items": "not a list"}))
    with pytest.raises(ProviderResponseError):
        client.list_runs()
    fake_codegen.faults.push(Fault.status_code(200, ["a", "list"]))
    with pytest.raises(ProviderResponseError) as info:
        client.get_run(1)
    assert info.value.retryable


def test_timeout_and_connection_errors(fake_codegen: FakeCodegenServer) -> None:
    with CodegenClient(fake_codegen.org_id, fake_codegen.token, fake_codegen.url, timeout=0.1) as c:
        fake_codegen.faults.push(Fault.slow(0.5))
        with pytest.raises(ProviderTimeoutError) as info:
            c.list_runs()
        assert info.value.timeout_duration == 0.1
        fake_codegen.faults.push(Fault.drop())
        with pytest.raises(ProviderConnectionError):
            c.list_runs()
    srv = FakeCodegenServer().start()
    url = srv.url
    srv.stop()
    with CodegenClient(42, "tok", url) as gone, pytest.raises(ProviderConnectionError):
        gone.list_runs()


def test_one_pooled_session_serves_many_threads(
    client: CodegenClient, fake_codegen: FakeCodegenServer
) -> None:
    fake_codegen.rate_limits = False
    run_id = fake_codegen.add_run()
    adapter = client.session.get_adapter(fake_codegen.url)
    assert adapter._pool_maxsize >= 16  # type: ignore[attr-defined]
    failures: list[BaseException] = []

    def poll() -> None:
        try:
            for _ in range(5):
                assert client.get_run(run_id).id == run_id
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert gets(fake_codegen) == 80


def test_token_never_shows(
    fake_codegen: FakeCodegenServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = Agent(fake_codegen.org_id, fake_codegen.token, fake_codegen.url, poll_interval=0.02)
    task = agent.run("secret-free prompt")
    task.wait_for_completion(timeout=5)
    fake_codegen.faults.push(Fault.unauthorized())
    with pytest.raises(ProviderAuthenticationError) as info:
        task.refresh()
    agent.close()
    token = fake_codegen.token
    assert token not in repr(agent) and token not in repr(agent.client) and token not in repr(task)
    assert token not in str(info.value) and token not in repr(info.value.to_dict())
    assert caplog.records, "expected DEBUG records"
    assert all(token not in record.getMessage() for record in caplog.records)


# --- Agent and Task -------------------------------------------------------------------------


def test_wait_goes_pending_active_complete_and_calls_back_once_per_change(
    fake_codegen: FakeCodegenServer,
) -> None:
    agent = Agent(fake_codegen.org_id, fake_codegen.token, fake_codegen.url)
    task = agent.run("Write the docs")
    changes: list[tuple[str | None, str | None]] = []
    progress: list[str | None] = []
    task.add_status_callback(lambda old, new: changes.append((old, new)))
    result = task.wait_for_completion(
        timeout=5, poll_interval=0.02, progress_callback=lambda t: progress.append(t.status)
    )
    assert result is task
    assert changes == [("PENDING", "ACTIVE"), ("ACTIVE", "COMPLETE")]
    assert task.status == "COMPLETE" and task.is_terminal and task.is_success
    assert task.result == "Done: Write the docs"
    assert task.summary and task.web_url and len(task.pull_requests) == 1
    assert task.run.status == "COMPLETE"
    assert len(progress) == gets(fake_codegen) and progress[-1] == "COMPLETE"
    agent.close()


def test_wait_does_not_busy_loop(fake_codegen: FakeCodegenServer) -> None:
    agent = Agent(fake_codegen.org_id, fake_codegen.token, fake_codegen.url)
    task = agent.run("x")
    started = time.monotonic()
    task.wait_for_completion(timeout=5, poll_interval=0.05)
    elapsed = time.monotonic() - started
    assert gets(fake_codegen) <= elapsed / 0.05 + 2
    agent.close()


def test_wait_with_a_shared_manual_clock_is_exact(
    clocked: FakeCodegenServer, clocked_agent: Agent, manual_clock: ManualClock
) -> None:
    task = clocked_agent.run("x")
    changes: list[tuple[str | None, str | None]] = []
    task.add_status_callback(lambda old, new: changes.append((old, new)))
    task.wait_for_completion(timeout=100)
    assert changes == [("PENDING", "ACTIVE"), ("ACTIVE", "COMPLETE")]
    assert manual_clock.sleeps == [1.0] * 30
    assert gets(clocked) == 30


@pytest.mark.parametrize(
    "fault",
    [Fault.rate_limit(), Fault.status_code(503), Fault.bad_json(), Fault.drop(),
     Fault.status_code(500), Fault.slow(0.6)],
    ids=["429", "503", "bad-json", "drop", "500", "read-timeout"],
)
def test_wait_survives_transient_errors_with_backoff(
    clocked: FakeCodegenServer, clocked_agent: Agent, manual_clock: ManualClock, fault: Fault
) -> None:
    task = clocked_agent.run("x")
    clocked.faults.push(fault, times=3)
    task.wait_for_completion(timeout=100)
    assert task.status == "COMPLETE"
    # three failed polls: backoff 2, 4, 8 s (never below the 1 s interval), then 1 s steps
    assert manual_clock.sleeps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert set(manual_clock.sleeps[4:]) == {1.0}


def test_wait_uses_the_real_rate_limit_and_recovers(manual_clock: ManualClock) -> None:
    """Without the budget (``limiter=None``) polling too fast meets real 429s: the wait
    backs off and still ends. (With the budget there are none: test_codegen_budget.)"""
    srv = FakeCodegenServer(
        clock=manual_clock, pending_seconds=10, active_seconds=50, standard_limit=(60, 30.0)
    ).start()
    try:
        agent = Agent(
            srv.org_id, srv.token, srv.url, poll_interval=0.25,
            retry_policy=RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.0),
            sleep=manual_clock.sleep, clock=manual_clock, limiter=None,
        )
        task = agent.run("x").wait_for_completion(timeout=600)
        assert task.status == "COMPLETE"
        assert srv.rate_limited_count > 0  # 4 polls a second is over 60 per 30 s
        agent.close()
    finally:
        srv.stop()


def test_wait_raises_on_errors_that_are_not_transient(
    clocked: FakeCodegenServer, clocked_agent: Agent
) -> None:
    task = clocked_agent.run("x")
    clocked.faults.push(Fault.status_code(404))
    with pytest.raises(ProviderNotFoundError):
        task.wait_for_completion(timeout=100)
    clocked.faults.push(Fault.unauthorized())
    with pytest.raises(ProviderAuthenticationError):
        task.wait_for_completion(timeout=100)


def test_wait_times_out_and_keeps_an_unknown_status(
    clocked: FakeCodegenServer, clocked_agent: Agent, manual_clock: ManualClock
) -> None:
    task = clocked_agent.run("x")
    clocked.set_status(task.id, "RUNNING")
    with pytest.raises(ProviderTimeoutError) as info:
        task.wait_for_completion(timeout=7.5, poll_interval=2)
    error = info.value
    assert isinstance(error, AgentRunTimeoutError) and not error.retryable
    assert error.timeout_duration == 7.5
    assert error.run_id == task.id and error.last_status == "RUNNING"
    assert task.status == "RUNNING" and not task.is_terminal
    assert manual_clock.sleeps == [2, 2, 2, 1.5]


def test_wait_times_out_in_real_time(fake_codegen: FakeCodegenServer) -> None:
    fake_codegen.pending_seconds = 60
    agent = Agent(fake_codegen.org_id, fake_codegen.token, fake_codegen.url)
    task = agent.run("x")
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        task.wait_for_completion(timeout=0.3, poll_interval=0.05)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert info.value.timeout_duration == 0.3
    agent.close()


def test_server_retry_after_is_cut_at_the_deadline(
    clocked: FakeCodegenServer, clocked_agent: Agent, manual_clock: ManualClock
) -> None:
    task = clocked_agent.run("x")
    clocked.faults.push(Fault.rate_limit(retry_after=100))
    with pytest.raises(AgentRunTimeoutError):
        task.wait_for_completion(timeout=5)
    assert sum(manual_clock.sleeps) == pytest.approx(5)


def test_paused_run_waits_for_resume(
    clocked: FakeCodegenServer, clocked_agent: Agent, manual_clock: ManualClock
) -> None:
    task = clocked_agent.run("x")
    clocked.set_status(task.id, "PAUSED")
    changes: list[tuple[str | None, str | None]] = []
    task.add_status_callback(lambda old, new: changes.append((old, new)))
    with pytest.raises(AgentRunTimeoutError):
        task.wait_for_completion(timeout=3)
    assert task.needs_input and not task.is_terminal
    task.resume("Use the second approach")
    assert task.status == "ACTIVE"
    task.wait_for_completion(timeout=100)
    assert changes == [("PENDING", "PAUSED"), ("PAUSED", "ACTIVE"), ("ACTIVE", "COMPLETE")]
    assert task.result == "Done: Use the second approach"
    messages = [log.observation for log in task.logs() if log.message_type == "USER_MESSAGE"]
    assert messages == ["x", "Use the second approach"]


def test_a_failing_callback_is_logged_and_others_still_run(
    clocked_agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    task = clocked_agent.run("x")
    seen: list[str | None] = []

    def broken(old: str | None, new: str | None) -> None:
        raise RuntimeError("boom")

    task.add_status_callback(broken)
    task.add_status_callback(lambda old, new: seen.append(new))
    task.wait_for_completion(timeout=100)
    assert seen == ["ACTIVE", "COMPLETE"]
    assert sum("status callback" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(InvalidRequestError):
        task.add_status_callback("not callable")  # type: ignore[arg-type]


def test_failed_run_ends_the_wait(clocked: FakeCodegenServer, clocked_agent: Agent) -> None:
    task = clocked_agent.run("x")
    clocked.set_outcome(task.id, "FAILED")
    task.wait_for_completion(timeout=100)
    assert task.status == "FAILED" and task.is_terminal and not task.is_success
    assert task.result is None and task.pull_requests == []


def test_agent_get_and_tasks(clocked: FakeCodegenServer, clocked_agent: Agent) -> None:
    first = clocked_agent.run("one")
    second = clocked_agent.run("two")
    assert clocked_agent.get(first.id).id == first.id
    assert [t.id for t in clocked_agent.tasks(limit=2)] == [second.id, first.id]
    assert all(isinstance(t, Task) for t in clocked_agent.tasks())
    with pytest.raises(InvalidRequestError):
        first.wait_for_completion(timeout=-1)
    with pytest.raises(InvalidRequestError):
        first.wait_for_completion(poll_interval=0)


def test_agent_from_settings(codegen_env: FakeCodegenServer) -> None:
    with Agent.from_settings() as agent:
        assert agent.org_id == codegen_env.org_id
        assert agent.client.base_url == codegen_env.url
        assert agent.client.timeout == 2
        assert agent.poll_interval == 0.05
        assert agent.retry_policy.base_delay == 0.01
        task = agent.run("from settings").wait_for_completion(timeout=5)
        assert task.status == "COMPLETE"


def test_agent_from_settings_needs_credentials() -> None:
    with pytest.raises(ProviderNotConfiguredError, match="CODEGEN_TOKEN"):
        Agent.from_settings()


# --- the limiter: asked before every request -------------------------------------------------


class CountingLimiter:
    """A ``CodegenLimiter`` that lets everything through and remembers what it was asked."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.limited: list[tuple[str, float | None]] = []

    def before_request(self, kind: str) -> None:
        self.kinds.append(kind)

    def rate_limited(self, kind: str, retry_after: float | None) -> None:
        self.limited.append((kind, retry_after))


def test_every_request_asks_the_limiter_first(fake_codegen: FakeCodegenServer) -> None:
    limiter = CountingLimiter()
    agent = Agent(
        fake_codegen.org_id, fake_codegen.token, fake_codegen.url, poll_interval=0.02,
        limiter=limiter,
    )
    assert agent.limiter is limiter
    task = agent.run("x")
    task.wait_for_completion(timeout=5)
    task.logs()
    task.resume("more")
    agent.tasks(limit=1)
    agent.client.find_repo_id("codegen-sandbox/repo-1")
    assert limiter.kinds[0] == "create" and set(limiter.kinds[1:]) == {"standard"}
    assert len(limiter.kinds) == len(fake_codegen.requests)
    assert limiter.limited == []
    fake_codegen.faults.push(Fault.rate_limit(retry_after=3))
    with pytest.raises(ProviderRateLimitError):
        agent.client.get_run(task.id)
    fake_codegen.faults.push(Fault.rate_limit())
    with pytest.raises(ProviderRateLimitError):
        agent.run("y")
    assert limiter.limited == [("standard", 3.0), ("create", None)]
    agent.close()


def test_a_refusing_limiter_stops_the_request(fake_codegen: FakeCodegenServer) -> None:
    class Refuse:
        def before_request(self, kind: str) -> None:
            raise CodegenBudgetTimeoutError("no token", wait=1.0)

        def rate_limited(self, kind: str, retry_after: float | None) -> None:
            raise AssertionError("not called")

    client = CodegenClient(
        fake_codegen.org_id, fake_codegen.token, fake_codegen.url,
        limiter=Refuse(),
    )
    with pytest.raises(CodegenBudgetExhaustedError):
        client.create_run("x")
    assert fake_codegen.requests == []


@pytest.mark.parametrize("bad", ["mine", 3, object()])
def test_a_limiter_that_is_none_of_the_three_is_refused(
    fake_codegen: FakeCodegenServer, bad: Any
) -> None:
    with pytest.raises(InvalidRequestError, match="limiter must be"):
        Agent(fake_codegen.org_id, fake_codegen.token, fake_codegen.url, limiter=bad)
