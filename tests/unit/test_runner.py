"""The job runner's decisions, one run at a time, on SQLite and the fakes over HTTP.

The broker is replaced by a recording publisher (the port ``app.core.publisher``);
the real broker path is in tests/integration/test_queue.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.ai.base import AIProvider, AIRequest, AIResponse
from app.ai.factory import register_provider, unregister_provider
from app.core.admission import reset_admission
from app.core.cooldown import reset_cooldowns
from app.core.publisher import set_publisher
from app.db.base import utcnow
from app.db.models import AIRequestRow, AttemptRow, JobStatus, UsageRow
from app.db.session import dispose_engines, session_scope
from app.jobs import cancel, get_attempts, get_job, submit, usage_stats
from app.jobs.runner import reset_providers, run_job
from app.jobs.sweep import sweep
from app.sandbox.base import Fault
from app.sandbox.openai_server import FakeOpenAIServer


class RecordingPublisher:
    def __init__(self) -> None:
        self.jobs: list[tuple[str, float | None]] = []
        self.callbacks: list[tuple[str, list[object]]] = []
        self.priorities: list[str | None] = []

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        self.jobs.append((job_id, countdown))
        self.priorities.append(priority)

    def send_callback(self, task_name: str, args: list[object]) -> None:
        self.callbacks.append((task_name, args))

    def ensure_routes(self) -> None:
        pass

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        pass


def drive(job_id: uuid.UUID) -> list[str]:
    """Run a job until it ends, waiting out each countdown as the broker would."""
    actions = []
    while True:
        outcome = run_job(job_id)
        actions.append(outcome.action)
        if outcome.action != "retry":
            return actions
        time.sleep(outcome.countdown or 0)


@pytest.fixture
def published(migrated_sqlite_url: str, env: Any) -> Any:
    env(DATABASE_URL=migrated_sqlite_url, RETRY_BASE_DELAY=0.01, RETRY_MAX_DELAY=0.05,
        OPENAI_MAX_RETRIES=2, PREFER_CODEGEN="false")
    publisher = RecordingPublisher()
    set_publisher(publisher)
    reset_providers()
    reset_cooldowns()
    reset_admission()
    yield publisher
    set_publisher(None)
    reset_providers()
    reset_cooldowns()
    reset_admission()
    dispose_engines()


def test_success_records_attempt_usage_and_result(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    handle = submit("hello", model="gpt-4o", callback="my.callback")
    assert published.jobs == [(str(handle.id), None)]
    outcome = run_job(handle.id)
    assert (outcome.action, outcome.status, outcome.callback) == ("done", "succeeded",
                                                                  "my.callback")
    job = get_job(handle.id)
    assert job.status == JobStatus.SUCCEEDED and job.provider_used == "openai"
    assert job.provider_chain == ["openai"]
    assert handle.result().content == "echo: hello"
    with session_scope() as s:
        usage = s.scalars(select(UsageRow)).one()
    assert usage.model.startswith("gpt-4o") and usage.cost_usd and usage.cost_usd > 0
    # A second delivery of the same message changes nothing.
    again = run_job(handle.id)
    assert again.action == "skipped"
    assert len(openai_env.chat_requests()) == 1


def test_retryable_error_becomes_a_countdown_then_succeeds(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    openai_env.faults.push(Fault.rate_limit(retry_after=3))
    handle = submit("patience")
    outcome = run_job(handle.id)
    assert outcome.action == "retry" and outcome.countdown == 3
    job = get_job(handle.id)
    assert job.status == JobStatus.WAITING and job.next_attempt_at is not None
    # Too early: the message is put back for the rest of the wait, nothing is called.
    early = run_job(handle.id)
    assert early.action == "retry" and 2 < (early.countdown or 0) <= 3
    with session_scope() as s:
        s.execute(update(AIRequestRow).values(next_attempt_at=utcnow()))
    reset_cooldowns()  # the 429 started an in-process cooldown (no Redis here): end it
    assert run_job(handle.id).action == "done"
    assert [a.outcome for a in get_attempts(handle.id)] == ["retry", "succeeded"]


def test_a_long_wait_is_parked_for_the_sweep(
    published: RecordingPublisher, openai_env: FakeOpenAIServer, env: Any
) -> None:
    env(AIW_MAX_COUNTDOWN=5, RETRY_AFTER_MAX=3600)
    openai_env.faults.push(Fault.rate_limit(retry_after=600))
    handle = submit("later")
    published.jobs.clear()
    outcome = run_job(handle.id)
    assert outcome.action == "parked"
    with session_scope() as s:
        row = s.get(AIRequestRow, handle.id)
        assert row is not None and row.published_at is None
    assert sweep() == 0  # not due yet
    with session_scope() as s:
        s.execute(update(AIRequestRow).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert sweep() == 1
    assert published.jobs == [(str(handle.id), None)]
    assert sweep() == 0  # stamped: not published twice


class BackupProvider(AIProvider):
    """A second provider, registered by name, answering without a network."""

    name = "backup"

    def default_timeout(self) -> float:
        return 1.0

    def default_max_retries(self) -> int:
        return 0

    def is_configured(self) -> bool:
        return True

    def _generate(self, request: AIRequest) -> AIResponse:
        return AIResponse(content=request.prompt.upper(), provider_name=self.name, model="up")

    def validate_credentials(self) -> bool:
        return True

    def get_available_models(self) -> list[str]:
        return ["up"]


@pytest.fixture
def backup() -> Iterator[None]:
    register_provider("backup", lambda **kw: BackupProvider(**kw))
    yield
    unregister_provider("backup")


def test_spent_retries_fall_back_to_the_next_provider(
    published: RecordingPublisher, openai_env: FakeOpenAIServer, backup: None, env: Any,
) -> None:
    env(OPENAI_MAX_RETRIES=1)
    openai_env.faults.push(Fault.status_code(503), times=2)
    handle = submit("fall back")
    assert drive(handle.id)[-1] == "done"
    job = get_job(handle.id)
    assert job.provider_chain == ["openai", "backup"]
    assert job.provider_used == "backup" and job.status == JobStatus.SUCCEEDED
    assert [(a.provider, a.outcome) for a in get_attempts(handle.id)] == [
        ("openai", "retry"), ("openai", "failed"), ("backup", "succeeded"),
    ]


def test_forced_provider_does_not_fall_back_and_keeps_the_error(
    published: RecordingPublisher, openai_env: FakeOpenAIServer, backup: None,
) -> None:
    openai_env.faults.push(Fault.status_code(401))
    handle = submit("openai only", provider="openai")
    outcome = run_job(handle.id)
    assert outcome.action == "done" and outcome.status == JobStatus.FAILED
    job = get_job(handle.id)
    assert job.error_type == "ProviderAuthenticationError"
    assert job.provider_chain == ["openai"]


def test_the_attempt_is_written_before_the_call_and_a_lost_one_is_marked(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    openai_env.latency = 0.5
    handle = submit("in flight")
    thread = threading.Thread(target=lambda: run_job(handle.id))
    thread.start()
    while not openai_env.chat_requests():
        time.sleep(0.01)
    # The call is in flight: its attempt is there already.
    assert [(a.number, a.outcome) for a in get_attempts(handle.id)] == [(1, "started")]
    thread.join()
    assert [a.outcome for a in get_attempts(handle.id)] == ["succeeded"]

    # A worker that died during its call: the next claim marks its attempt lost.
    orphan = submit("orphan")
    with session_scope() as s:
        s.execute(update(AIRequestRow).where(AIRequestRow.id == orphan.id).values(
            status=JobStatus.RUNNING, claim_token=str(uuid.uuid4()), attempt_count=1,
            lease_expires_at=utcnow() - timedelta(seconds=1)))
        s.add(AttemptRow(request_id=orphan.id, number=1, provider="openai",
                         outcome="started", started_at=utcnow()))
    assert run_job(orphan.id).action == "done"
    attempts = get_attempts(orphan.id)
    assert [(a.number, a.outcome) for a in attempts] == [(1, "lost"), (2, "succeeded")]
    assert "may have been billed" in (attempts[0].detail or "")
    stats = usage_stats(group_by=("outcome",))
    assert {r["outcome"]: r["requests"] for r in stats}["lost"] == 1


def test_a_retry_after_beyond_the_cap_parks_the_job_until_the_servers_time(
    published: RecordingPublisher, openai_env: FakeOpenAIServer, env: Any,
) -> None:
    env(RETRY_AFTER_MAX=5, AIW_RATE_LIMIT_WAIT_MAX=7200)
    openai_env.faults.push(Fault.rate_limit(retry_after=3600))
    handle = submit("wait for me")
    before = utcnow()
    outcome = run_job(handle.id)
    assert outcome.action == "parked"  # not an early try at the 5 s cap
    job = get_job(handle.id)
    assert job.status == JobStatus.WAITING and job.next_attempt_at is not None
    assert job.next_attempt_at - before >= timedelta(seconds=3599)
    (attempt,) = get_attempts(handle.id)
    assert attempt.outcome == "retry" and attempt.retry_after_s == 3600
    assert "RETRY_AFTER_MAX=5" in (attempt.detail or "")
    assert sweep() == 0  # not due: nobody calls before the server's time


def test_no_provider_in_the_worker_fails_with_a_clear_reason(
    published: RecordingPublisher,
) -> None:
    handle = submit("nobody home")
    outcome = run_job(handle.id)
    assert outcome.status == JobStatus.FAILED
    assert "OPENAI_API_KEY" in (get_job(handle.id).error_message or "")


def test_cancel_during_a_call_discards_the_answer_but_keeps_what_it_cost(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    openai_env.latency = 0.5
    handle = submit("slow")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(o=run_job(handle.id)))
    thread.start()
    while not openai_env.chat_requests():
        pass
    assert cancel(handle.id)
    thread.join()
    assert result["o"].action == "skipped"
    assert get_job(handle.id).status == JobStatus.CANCELLED
    assert [a.outcome for a in get_attempts(handle.id)] == ["superseded"]
    with session_scope() as s:  # the answer was paid for: its usage is kept
        assert s.scalar(select(func.count()).select_from(UsageRow)) == 1


def test_an_expired_lease_lets_another_delivery_take_over(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    handle = submit("orphan")
    # A worker claimed it and died: running, lease in the past.
    with session_scope() as s:
        s.execute(update(AIRequestRow).values(
            status=JobStatus.RUNNING, claim_token=str(uuid.uuid4()), attempt_count=1,
            lease_expires_at=utcnow() - timedelta(seconds=1),
            published_at=utcnow() - timedelta(hours=1)))
    assert sweep() == 1
    assert run_job(handle.id).action == "done"
    attempts = get_attempts(handle.id)
    assert [a.number for a in attempts] == [2]


def test_usage_stats_add_up(published: RecordingPublisher, openai_env: FakeOpenAIServer) -> None:
    openai_env.cached_tokens = 1
    ids = [submit(f"question {n}", model="gpt-4o").id for n in range(4)]
    openai_env.faults.push(Fault.status_code(500))
    for job_id in ids:
        drive(job_id)
    with session_scope() as s:
        usage = list(s.scalars(select(UsageRow)))
        attempts = s.scalar(select(func.count()).select_from(AttemptRow))
    rows = usage_stats(group_by=("provider", "model", "day"))
    assert [(r["provider"], r["model"]) for r in rows] == [("openai", "gpt-4o")]
    total = {k: sum(r[k] for r in rows) for k in ("requests", "successes", "failures",
                                                  "prompt_tokens", "cached_tokens")}
    assert total == {
        "requests": attempts, "successes": 4, "failures": 1,
        "prompt_tokens": sum(u.prompt_tokens for u in usage),
        "cached_tokens": 4,
    }
    ok = rows[0]
    assert ok["cost_usd"] == pytest.approx(sum(u.cost_usd or 0 for u in usage))
    assert ok["success_rate"] == pytest.approx(4 / 5)
    assert ok["p50_latency_s"] <= ok["p95_latency_s"]
    assert ok["day"] == utcnow().date().isoformat()
    assert usage_stats(since=utcnow() + timedelta(hours=1)) == []


def test_429s_spend_no_retries_only_the_waiting_budget_ends_the_job(
    published: RecordingPublisher, openai_env: FakeOpenAIServer, env: Any
) -> None:
    env(OPENAI_MAX_RETRIES=1, AIW_RATE_LIMIT_WAIT_MAX=3)
    # Far more 429s than retries: the provider says "later", not "broken".
    openai_env.faults.push(Fault.rate_limit(retry_after=0.05), times=6)
    handle = submit("patience")
    assert drive(handle.id)[-1] == "done"
    assert get_job(handle.id).status == JobStatus.SUCCEEDED
    outcomes = [a.outcome for a in get_attempts(handle.id)]
    assert outcomes.count("retry") == 6 and outcomes[-1] == "succeeded"
    # A provider that keeps saying 429: only the waiting budget fails the job, with why.
    reset_cooldowns()
    openai_env.faults.push(Fault.rate_limit(retry_after=0.5), times=100)
    stubborn = submit("never")
    drive(stubborn.id)
    job = get_job(stubborn.id)
    assert job.status == JobStatus.FAILED and job.error_type == "ProviderRateLimitError"
    assert "AIW_RATE_LIMIT_WAIT_MAX=3" in (job.error_message or "")


def test_a_full_rate_window_defers_to_a_reserved_slot_without_spending_retries(
    published: RecordingPublisher, openai_env: FakeOpenAIServer, env: Any
) -> None:
    # 2 requests per 1 s window: one at once, then one a second (no Redis: in process).
    env(AIW_RATE_LIMITS="openai=2rpm", AIW_RATE_WINDOW=1, AIW_RATE_MARGIN=0.2)
    first, second = submit("one"), submit("two")
    assert run_job(first.id).action == "done"
    waits = run_job(second.id)
    assert waits.action == "retry" and 0.5 < (waits.countdown or 0) <= 1.2
    deferred = get_attempts(second.id)[-1]
    assert deferred.outcome == "deferred" and "a slot is reserved" in (deferred.detail or "")
    assert len(openai_env.chat_requests()) == 1  # not called
    time.sleep(waits.countdown or 0)
    assert run_job(second.id).action == "done"  # its slot: no second wait
    with session_scope() as s:
        row = s.get(AIRequestRow, second.id)
        assert row is not None and row.retries_on_provider == 0
    assert [a.outcome for a in get_attempts(second.id)] == ["deferred", "succeeded"]
    # A slot further than the job may still wait (AIW_RATE_LIMIT_WAIT_MAX): it fails so.
    env(AIW_RATE_LIMIT_WAIT_MAX=0.5)
    time.sleep(1.3)  # the window has room again
    assert run_job(submit("three").id).action == "done"
    late = submit("four")
    drive(late.id)
    job = get_job(late.id)
    assert job.status == JobStatus.FAILED and job.error_type == "ProviderRateLimitError"
    assert "rate window" in (job.error_message or "")
    assert len(openai_env.chat_requests()) == 3


def test_limits_learned_from_the_headers_hold_back_the_next_calls(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    """Nothing configured: the fake's x-ratelimit-* headers (5 requests a minute) are
    learned once an answer says less than half is left, and the next calls wait for
    their slots instead of meeting the limit."""
    openai_env.rate_limit_requests = 5
    jobs = [submit(f"job {n}") for n in range(6)]
    outcomes = [run_job(j.id) for j in jobs]
    actions = [o.action for o in outcomes]
    assert actions[:3] == ["done", "done", "done"]  # 4, 3, 2 left: the third teaches
    held = [o for o in outcomes if o.action == "retry"]
    assert held and all((o.countdown or 0) > 5 for o in held), actions
    assert get_attempts(jobs[actions.index("retry")].id)[-1].outcome == "deferred"
    assert openai_env.rate_limited == 0
    assert len(openai_env.chat_requests()) == actions.count("done") <= 5


def test_a_429_with_room_left_makes_only_its_own_job_wait(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    """A momentary 429 (its headers show requests and tokens left) is no reason to stop
    every call of the model: the next job is called at once; the refused one waits its
    own Retry-After."""
    openai_env.rate_limit_randomly(1.0, retry_after=2.0)
    refused = submit("unlucky")
    outcome = run_job(refused.id)
    assert outcome.action == "retry" and outcome.countdown == 2
    openai_env.rate_limit_randomly(0)
    lucky = run_job(submit("next").id)
    assert (lucky.action, lucky.status) == ("done", JobStatus.SUCCEEDED)
    assert len(openai_env.chat_requests()) == 2  # called, not deferred by a cooldown


def test_a_429_that_says_the_limit_is_used_up_stops_every_call_of_the_model(
    published: RecordingPublisher, openai_env: FakeOpenAIServer
) -> None:
    openai_env.faults.push(Fault.rate_limit(retry_after=2))  # remaining requests: 0
    assert run_job(submit("first").id).action == "retry"
    held = run_job(submit("second").id)
    assert held.action == "retry" and 1 < (held.countdown or 0) <= 3
    assert len(openai_env.chat_requests()) == 1  # the second waited without a call
    assert [a.outcome for a in get_attempts(held.id)] == ["deferred"]


@pytest.mark.parametrize(
    ("limits", "used_up"),
    [
        (None, True),  # no headers: assume the worst
        ({"remaining_requests": 0, "remaining_tokens": 90_000}, True),
        ({"remaining_requests": 40, "remaining_tokens": 3}, True),  # not this call's tokens
        ({"remaining_requests": 40}, True),
        ({"remaining_requests": 40, "remaining_tokens": 90_000}, False),
    ],
)
def test_which_429_says_a_limit_is_used_up(limits: Any, used_up: bool) -> None:
    from app.ai.base import AIRequest
    from app.core.errors import ProviderRateLimitError
    from app.jobs.admission import limit_used_up

    error = ProviderRateLimitError("429", provider_name="openai")
    error.limits = limits
    assert limit_used_up(error, AIRequest(prompt="a prompt of a few tokens")) is used_up
