"""Spend budgets on SQLite, one run at a time: input checks, reserve and settle around
real calls to the fake OpenAI server, windows, policies, the once-only settlement, the
sweep's settlement of a dead worker's reservation, and the webhooks.

Many workers at once on PostgreSQL: tests/integration/test_budgets.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from app.ai.base import AIRequest
from app.config import get_settings
from app.core.cooldown import reset_cooldowns
from app.db.base import utcnow
from app.db.budget_models import BudgetReservationRow, BudgetRow
from app.db.models import AttemptOutcome, AttemptRow, JobStatus, UsageRow
from app.db.session import get_engine, session_scope
from app.db.webhook_models import WebhookEventRow
from app.jobs import (
    BudgetExceededError,
    InvalidBudgetError,
    budgets,
    delete_budget,
    get_attempts,
    get_job,
    set_budget,
    spend,
    submit,
)
from app.jobs.runner import reset_providers, run_job
from app.jobs.sweep import sweep
from app.sandbox.openai_server import FakeOpenAIServer
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import register_endpoint
from tests.plugins.webhooks import RecordingPublisher

PROMPT = "tell me about budgets"
MAX_TOKENS = 50


@pytest.fixture
def bed(
    webhook_db: RecordingPublisher, openai_env: FakeOpenAIServer, env: Any
) -> Iterator[FakeOpenAIServer]:
    env(PREFER_CODEGEN="false")
    reset_providers()
    reset_cooldowns()
    spend.reset_cache()
    # Long answers, cut at max_tokens: a call costs nearly its estimate.
    openai_env.responder = lambda body: " ".join(["word"] * 2 * MAX_TOKENS)
    yield openai_env
    spend.reset_cache()
    reset_providers()


def one_estimate() -> float:
    request = AIRequest(prompt=PROMPT, max_tokens=MAX_TOKENS)
    cost = spend.estimate(request, "gpt-4o-mini", get_settings())
    assert cost is not None and cost > 0
    return cost


def count(model: type) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def spent_by_usage() -> float:
    with session_scope() as s:
        return float(s.scalar(select(func.coalesce(func.sum(UsageRow.cost_usd), 0))) or 0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"usd": -5}, "more than 0"),
        ({"usd": 0}, "more than 0"),
        ({"usd": 10**9}, "at most 1,000,000"),
        ({"usd": float("nan")}, "more than 0"),
        ({"usd": True}, "number of USD"),
        ({"usd": "50"}, "number of USD"),
        ({"usd": 5, "per": "week"}, "unknown budget period 'week'"),
        ({"usd": 5, "policy": "maybe"}, "unknown budget policy 'maybe'"),
        ({"usd": 5, "tag": ""}, "non-empty"),
        ({"usd": 5, "tag": "x" * 101}, "at most 100"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    bed: FakeOpenAIServer, kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(InvalidBudgetError, match=words):
        set_budget(**kwargs)
    assert count(BudgetRow) == 0


def test_a_tag_no_job_carries_yet_is_allowed_and_said(bed: FakeOpenAIServer) -> None:
    made = set_budget(50, tag="team-a", per="day")
    assert made.note is not None and "no job carries the tag 'team-a' yet" in made.note
    submit("hi", tags=["team-b"])
    assert set_budget(5, tag="team-b", per="month", policy="fail").note is None
    changed = set_budget(60, tag="team-a")  # the same budget changed, not a second one
    assert changed.cap_usd == 60 and count(BudgetRow) == 2
    listed = {b.name: b for b in budgets()}
    assert set(listed) == {"tag:team-a/day", "tag:team-b/month"}
    month = listed["tag:team-b/month"]
    assert month.policy == "fail" and month.window_start.day == 1
    assert month.window_end > utcnow() >= month.window_start
    assert delete_budget(tag="team-a") and not delete_budget(tag="team-a")
    assert [b.name for b in budgets()] == ["tag:team-b/month"]


def test_no_budget_means_no_statement_per_job(bed: FakeOpenAIServer) -> None:
    handle = submit(PROMPT)
    run_job(handle.id)  # reads the (empty) list of budgets once
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(get_engine(), "before_cursor_execute", seen)
    try:
        from app.jobs.records import Try

        tried = Try(handle.id, 1, "openai", ["openai"], 0, 0, None)
        held = spend.reserve(tried, AIRequest(prompt=PROMPT), "gpt-4o-mini", [], get_settings())
    finally:
        event.remove(get_engine(), "before_cursor_execute", seen)
    assert held is spend.FREE and statements == []


def test_wait_policy_defers_to_the_next_utc_day_and_spend_is_the_usage(
    bed: FakeOpenAIServer,
) -> None:
    cap = one_estimate() * 2.5
    set_budget(cap, per="day")  # global, policy wait
    ids = [submit(PROMPT, max_tokens=MAX_TOKENS).id for _ in range(4)]
    outcomes = [run_job(i) for i in ids]
    done = [o for o in outcomes if o.status == JobStatus.SUCCEEDED]
    waiting = [o for o in outcomes if o.status == JobStatus.WAITING]
    assert (len(done), len(waiting)) == (2, 2), outcomes
    assert len(bed.chat_requests()) == len(done)
    (budget,) = budgets()
    assert budget.reserved_usd == 0
    assert budget.spent_usd == pytest.approx(spent_by_usage()) and budget.spent_usd <= cap
    assert count(BudgetReservationRow) == 0
    job = get_job(waiting[0].id)
    tomorrow = budget.window_end
    assert job.next_attempt_at is not None and job.next_attempt_at >= tomorrow
    (attempt,) = get_attempts(waiting[0].id)
    assert attempt.outcome == AttemptOutcome.DEFERRED
    assert attempt.detail and "waits for the next window at" in attempt.detail
    assert tomorrow.isoformat() in attempt.detail and "global/day" in attempt.detail


def test_fail_policy_fails_with_the_reason_and_no_call(bed: FakeOpenAIServer) -> None:
    set_budget(one_estimate() * 1.5, tag="team-a", policy="fail")
    first = submit(PROMPT, max_tokens=MAX_TOKENS, tags=["team-a"])
    second = submit(PROMPT, max_tokens=MAX_TOKENS, tags=["team-a"])
    untagged = submit(PROMPT, max_tokens=MAX_TOKENS)
    assert run_job(first.id).status == JobStatus.SUCCEEDED
    run_job(second.id)
    assert run_job(untagged.id).status == JobStatus.SUCCEEDED  # not its budget
    job = get_job(second.id)
    assert job.status == JobStatus.FAILED and job.error_type == "BudgetExceededError"
    (attempt,) = get_attempts(second.id)
    assert attempt.outcome == AttemptOutcome.FAILED
    assert attempt.error_type == "BudgetExceededError"
    assert attempt.error_message and "tag:team-a/day" in attempt.error_message
    assert len(bed.chat_requests()) == 2


def test_an_estimate_above_the_whole_cap_fails_even_under_wait(bed: FakeOpenAIServer) -> None:
    set_budget(one_estimate() / 2)
    handle = submit(PROMPT, max_tokens=MAX_TOKENS)
    assert run_job(handle.id).status == JobStatus.FAILED
    message = get_job(handle.id).error_message or ""
    assert "it can never fit" in message
    assert not issubclass(BudgetExceededError, InvalidBudgetError)
    assert len(bed.chat_requests()) == 0


def test_every_budget_of_a_job_must_admit_it(bed: FakeOpenAIServer) -> None:
    set_budget(100, tag="roomy")
    set_budget(one_estimate() / 2, tag="tight", policy="fail")
    handle = submit(PROMPT, max_tokens=MAX_TOKENS, tags=["roomy", "tight"])
    assert run_job(handle.id).status == JobStatus.FAILED
    assert {b.name: b.reserved_usd for b in budgets()} == {
        "tag:roomy/day": 0.0,
        "tag:tight/day": 0.0,
    }  # fmt: skip  (what the roomy budget took was given back)


def test_the_window_rolls_over_in_the_reserving_statement(bed: FakeOpenAIServer) -> None:
    cap = one_estimate() * 1.5
    set_budget(cap, policy="fail")
    yesterday = utcnow() - timedelta(days=1)
    with session_scope() as s:
        s.execute(update(BudgetRow).values(spent_usd=cap, window_start=yesterday))
    assert budgets()[0].spent_usd == 0  # a passed window counts as empty
    handle = submit(PROMPT, max_tokens=MAX_TOKENS)
    assert run_job(handle.id).status == JobStatus.SUCCEEDED
    with session_scope() as s:
        start, spent = s.execute(select(BudgetRow.window_start, BudgetRow.spent_usd)).one()
    assert start == spend.window_start("day", utcnow())
    assert spent == pytest.approx(spent_by_usage())


def test_a_settlement_happens_once_per_attempt(bed: FakeOpenAIServer) -> None:
    set_budget(10)
    handle = submit(PROMPT, max_tokens=MAX_TOKENS)
    from app.jobs.records import Try

    with session_scope() as s:
        attempt = AttemptRow(request_id=handle.id, number=1, provider="openai",
                             outcome=AttemptOutcome.STARTED)  # fmt: skip
        s.add(attempt)
        s.flush()
        attempt_id = attempt.id
    tried = Try(handle.id, attempt_id, "openai", ["openai"], 0, 0, None)
    request = AIRequest(prompt=PROMPT, max_tokens=MAX_TOKENS)
    held = spend.reserve(tried, request, "gpt-4o-mini", [], get_settings())
    assert held.refusal is None and budgets()[0].reserved_usd == pytest.approx(held.estimate)
    with session_scope() as s:
        assert spend.settle_attempt(s, attempt_id, 0.001) == 1
    with session_scope() as s:
        assert spend.settle_attempt(s, attempt_id, 0.001) == 0  # fenced on the attempt
    (budget,) = budgets()
    assert (budget.spent_usd, budget.reserved_usd) == (pytest.approx(0.001), 0.0)


def test_the_sweep_settles_a_dead_workers_reservation_as_possibly_billed(
    bed: FakeOpenAIServer,
) -> None:
    set_budget(10)
    handle = submit(PROMPT, max_tokens=MAX_TOKENS)
    from app.jobs.records import Try

    with session_scope() as s:
        attempt = AttemptRow(request_id=handle.id, number=1, provider="openai",
                             outcome=AttemptOutcome.STARTED)  # fmt: skip
        s.add(attempt)
        s.flush()
        attempt_id = attempt.id
    tried = Try(handle.id, attempt_id, "openai", ["openai"], 0, 0, None)
    held = spend.reserve(
        tried, AIRequest(prompt=PROMPT, max_tokens=MAX_TOKENS), "gpt-4o-mini", [], get_settings()
    )
    sweep()
    assert budgets()[0].reserved_usd > 0  # still in flight: kept
    past = utcnow() - timedelta(minutes=5)
    with session_scope() as s:
        s.execute(update(AttemptRow).values(outcome=AttemptOutcome.LOST))
        s.execute(update(BudgetReservationRow).values(created_at=past))
    sweep()
    (budget,) = budgets()
    assert budget.reserved_usd == 0 and budget.spent_usd == pytest.approx(held.estimate)
    assert count(BudgetReservationRow) == 0


def test_threshold_and_exceeded_webhooks_once_per_window(
    bed: FakeOpenAIServer, receiver: WebhookReceiver
) -> None:
    register_endpoint(receiver.url, ["budget.threshold", "budget.exceeded"])
    set_budget(one_estimate() * 1.1, policy="fail")
    for _ in range(3):
        run_job(submit(PROMPT, max_tokens=MAX_TOKENS).id)
    with session_scope() as s:
        events = list(s.execute(select(WebhookEventRow.type, WebhookEventRow.payload)))
    types = sorted(t for t, _ in events)
    assert types == ["budget.exceeded", "budget.threshold"], types
    payload = dict(events)["budget.exceeded"]
    assert payload["budget"] == "global/day" and payload["job_id"]
    assert payload["cap_usd"] == pytest.approx(one_estimate() * 1.1)


def test_metrics_export_each_budget(bed: FakeOpenAIServer) -> None:
    from prometheus_client import generate_latest

    from app.shell.metrics import registry

    set_budget(50, tag="team-a")
    run_job(submit(PROMPT, max_tokens=MAX_TOKENS, tags=["team-a"]).id)
    text = generate_latest(registry(get_settings())).decode()
    assert 'aiw_budget_cap_usd{budget="tag:team-a/day"} 50.0' in text
    spent = next(line for line in text.splitlines() if line.startswith("aiw_budget_spent_usd{"))
    assert float(spent.split()[-1]) == pytest.approx(spent_by_usage()) and spent_by_usage() > 0
    assert 'aiw_budget_reserved_usd{budget="tag:team-a/day"} 0.0' in text


def test_the_command_line(bed: FakeOpenAIServer) -> None:
    from click.testing import CliRunner

    from app.cli import main

    runner = CliRunner()
    made = runner.invoke(main, ["budgets", "set", "--tag", "team-a", "--usd", "50"])
    assert made.exit_code == 0, made.output
    assert "budget tag:team-a/day: 50.0000 USD per day (UTC), policy wait" in made.output
    assert "no job carries the tag 'team-a' yet" in made.output
    for args, words in [
        (["--tag", "team-a", "--usd", "-1"], "more than 0"),
        (["--tag", "team-a", "--usd", "5", "--per", "year"], "unknown budget period 'year'"),
        (["--tag", "team-a", "--usd", "5", "--policy", "skip"], "unknown budget policy"),
    ]:
        refused = runner.invoke(main, ["budgets", "set", *args])
        assert refused.exit_code == 1 and words in refused.output, refused.output
        assert refused.output.count("\n") == 1
    unnamed = runner.invoke(main, ["budgets", "set", "--usd", "5"])
    assert unnamed.exit_code == 2 and "--global" in unnamed.output
    listed = runner.invoke(main, ["budgets"])
    assert listed.exit_code == 0 and "tag:team-a/day" in listed.output
    assert "50.0000" in listed.output
    as_json = runner.invoke(main, ["budgets", "--json"])
    (entry,) = json.loads(as_json.output)
    assert entry["cap_usd"] == 50 and entry["spent_usd"] == 0
    assert runner.invoke(main, ["budgets", "delete", "--tag", "team-a"]).exit_code == 0
    again = runner.invoke(main, ["budgets", "delete", "--tag", "team-a"])
    assert again.exit_code == 1 and "no budget tag:team-a/day" in again.output
