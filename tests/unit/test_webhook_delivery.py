"""One delivery at a time, as the task runs it: claim, signed POST over real HTTP to a
receiver on loopback that verifies it, record. SQLite; the broker is a recording
publisher (the real one is in tests/integration/test_webhooks.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from cryptography.fernet import Fernet

from app.db.claims import Outcome
from app.db.session import session_scope
from app.jobs import submit
from app.jobs.runner import reset_providers, run_job
from app.sandbox.base import Fault
from app.sandbox.openai_server import FakeOpenAIServer
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import (
    DeliveryNotFoundError,
    DeliveryStatus,
    emit,
    get_delivery,
    get_endpoint,
    list_attempts,
    list_deliveries,
    redeliver,
    register_endpoint,
    send_test_event,
    verify_webhook,
)
from app.webhooks.delivery import deliver, reset_resources
from app.webhooks.sweep import sweep_deliveries
from tests.plugins.webhooks import RecordingPublisher


def _endpoint(receiver: WebhookReceiver, types: list[str] | None = None) -> uuid.UUID:
    endpoint, secret = register_endpoint(receiver.url, types)
    receiver.secret = secret
    return endpoint.id


def _emit(event_type: str = "ai_request.succeeded", **payload: object) -> list[uuid.UUID]:
    with session_scope() as session:
        return emit(session, event_type, payload or {"id": "j1"})


def drive(delivery_id: uuid.UUID, limit: int = 20) -> list[Outcome]:
    """Deliver until it ends, waiting out each countdown as the broker would."""
    outcomes = []
    for _ in range(limit):
        outcome = deliver(delivery_id)
        outcomes.append(outcome)
        if outcome.action != "retry":
            return outcomes
        time.sleep(outcome.countdown or 0)
    raise AssertionError(f"still retrying after {limit} tries: {outcomes}")


def test_a_delivery_is_signed_verified_and_never_sent_twice(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    _endpoint(receiver)
    (delivery_id,) = _emit(id="job-1", content="hi")
    assert [o.action for o in drive(delivery_id)] == ["done"]
    (got,) = receiver.verified()
    assert got.event_type == "ai_request.succeeded" and got.data == {"id": "job-1", "content": "hi"}
    delivery = get_delivery(delivery_id)
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.delivered_at
    assert got.webhook_id == delivery.event_id and got.webhook_id.startswith("msg_")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("ai-worker-webhooks/")
    # The consumer helper accepts it too.
    assert verify_webhook(got.body, got.headers, receiver.secret or "")["data"]["id"] == "job-1"
    again = deliver(delivery_id)
    assert (again.action, again.reason) == ("skipped", "already succeeded")
    assert len(receiver.requests) == 1
    (attempt,) = list_attempts(delivery_id)
    assert attempt.status_code == 200 and attempt.ok and not attempt.manual
    assert attempt.response_snippet == '{"ok": true}' and attempt.latency_s


def test_failures_retry_on_the_schedule_with_the_same_webhook_id(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    endpoint_id = _endpoint(receiver)
    receiver.faults.push(Fault.status_code(500), times=2)
    (delivery_id,) = _emit()
    first = deliver(delivery_id)
    assert (first.action, first.countdown, first.status_code) == ("retry", 0.05, 500)
    assert get_endpoint(endpoint_id).failing_since is not None
    early = deliver(delivery_id)  # a duplicate message before the wait is over
    assert (early.action, early.reason) == ("skipped", "not due")
    time.sleep(first.countdown or 0)
    outcomes = [first, *drive(delivery_id)]
    assert [o.countdown for o in outcomes] == [0.05, 0.1, None]
    assert [a.status_code for a in list_attempts(delivery_id)] == [500, 500, 200]
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(receiver.requests) == 3 and len(ids) == 1
    assert get_delivery(delivery_id).status == DeliveryStatus.SUCCEEDED
    assert get_endpoint(endpoint_id).failing_since is None  # the stretch ended


def test_a_spent_schedule_fails_the_delivery(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    endpoint_id = _endpoint(receiver)
    receiver.faults.push(Fault.status_code(503), times=10)
    (delivery_id,) = _emit()
    outcomes = drive(delivery_id)
    assert [o.action for o in outcomes] == ["retry", "retry", "done"]
    assert outcomes[-1].status == DeliveryStatus.FAILED and "retries spent" in outcomes[-1].reason
    delivery = get_delivery(delivery_id)
    assert (delivery.status, delivery.attempt_count, delivery.last_status_code) == (
        DeliveryStatus.FAILED, 3, 503
    )  # fmt: skip
    assert delivery.last_error == "HTTP 503 Service Unavailable"
    assert get_endpoint(endpoint_id).enabled  # failing for less than the disable stretch


def test_410_disables_the_endpoint_and_abandons_its_other_deliveries(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    endpoint_id = _endpoint(receiver)
    (first,) = _emit(id="a")
    (second,) = _emit(id="b")
    receiver.faults.push(Fault.status_code(410))
    outcome = deliver(first)
    assert (outcome.action, outcome.status, outcome.status_code) == ("done", "failed", 410)
    endpoint = get_endpoint(endpoint_id)
    assert not endpoint.enabled and "410" in (endpoint.disabled_reason or "")
    assert get_delivery(second).status == DeliveryStatus.ABANDONED
    assert deliver(second).reason == "already abandoned"
    assert _emit(id="c") == []  # a disabled endpoint gets no new deliveries
    assert len(receiver.requests) == 1


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    elsewhere = WebhookReceiver().start()
    try:
        _endpoint(receiver)
        receiver.faults.push(Fault.status_code(302, headers={"Location": elsewhere.url}))
        (delivery_id,) = _emit()
        outcome = deliver(delivery_id)
        assert (outcome.action, outcome.status_code) == ("retry", 302)
        (attempt,) = list_attempts(delivery_id)
        assert attempt.status_code == 302 and not attempt.ok
        assert attempt.error == f"HTTP 302: redirect to {elsewhere.url} not followed"
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()


def test_long_waits_are_parked_for_the_sweep(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    env(AIW_MAX_COUNTDOWN=0.1, AIW_WEBHOOK_RETRY_SCHEDULE="0.4")
    _endpoint(receiver)
    receiver.faults.push(Fault.status_code(500))
    (delivery_id,) = _emit()
    webhook_db.deliveries.clear()
    outcome = deliver(delivery_id)
    assert (outcome.action, outcome.countdown) == ("parked", None)
    assert sweep_deliveries() == 0  # not due yet
    assert deliver(delivery_id).reason == "not due"
    time.sleep(0.45)
    assert sweep_deliveries() == 1
    assert webhook_db.delivery_ids() == [str(delivery_id)]
    assert deliver(delivery_id).status == DeliveryStatus.SUCCEEDED


def test_an_endpoint_failing_for_the_whole_stretch_is_disabled(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    env(AIW_WEBHOOK_DISABLE_AFTER=0.3, AIW_WEBHOOK_RETRY_SCHEDULE="0.1,0.1,0.1,0.1,0.1,0.1")
    endpoint_id = _endpoint(receiver)
    receiver.faults.push(Fault.status_code(500), times=100)
    (delivery_id,) = _emit()
    outcomes = drive(delivery_id)
    assert outcomes[-1].status == DeliveryStatus.ABANDONED
    assert "AIW_WEBHOOK_DISABLE_AFTER" in outcomes[-1].reason
    endpoint = get_endpoint(endpoint_id)
    assert not endpoint.enabled and "failing without a success" in (endpoint.disabled_reason or "")
    assert 3 <= len(list_attempts(delivery_id)) <= 6


def test_concurrent_messages_for_one_delivery_send_it_once(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    _endpoint(receiver)
    receiver.latency = 0.3
    (delivery_id,) = _emit()
    outcomes: list[Outcome] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        outcomes.append(deliver(delivery_id))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.action for o in outcomes) == ["done"] + ["skipped"] * 5
    assert len(receiver.requests) == 1 and len(list_attempts(delivery_id)) == 1


def test_a_private_target_is_refused_again_at_delivery(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    _endpoint(receiver)  # registered while private targets were allowed
    (delivery_id,) = _emit()
    env(AIW_WEBHOOK_ALLOW_PRIVATE="false")
    outcome = deliver(delivery_id)
    assert outcome.action == "retry" and outcome.status_code is None
    (attempt,) = list_attempts(delivery_id)
    assert attempt.status_code is None
    assert "refused webhook target '127.0.0.1'" in (attempt.error or "")
    assert "loopback" in (attempt.error or "")
    assert receiver.requests == []


def test_transport_failures_are_recorded_with_their_reason(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    env(AIW_WEBHOOK_TIMEOUT=0.3)
    _endpoint(receiver)
    receiver.faults.push(Fault.slow(1.0))
    receiver.faults.push(Fault.drop())
    receiver.faults.push(Fault.status_code(500, body="x" * 5000))
    (delivery_id,) = _emit()
    env(AIW_WEBHOOK_RETRY_SCHEDULE="0,0,0,0")
    for _ in range(3):
        deliver(delivery_id)
    receiver.stop()
    deliver(delivery_id)
    errors = [a.error for a in list_attempts(delivery_id)]
    assert errors[0] == "timed out (timeout 0.3 s)"
    assert (errors[1] or "").startswith("connection failed")
    assert errors[2] == "HTTP 500 Internal Server Error"
    assert len(list_attempts(delivery_id)[2].response_snippet or "") == 1024
    assert errors[3] == "connection failed: Connection refused"


def test_a_key_that_cannot_decrypt_the_secret_is_a_failed_attempt(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    _endpoint(receiver)
    (delivery_id,) = _emit()
    env(AIW_SECRET_KEY=Fernet.generate_key().decode())
    assert deliver(delivery_id).action == "retry"
    assert "cannot be decrypted" in (list_attempts(delivery_id)[0].error or "")
    assert receiver.requests == []


def test_manual_redelivery_keeps_the_webhook_id(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    _endpoint(receiver)
    (delivery_id,) = _emit()
    drive(delivery_id)
    attempt = redeliver(delivery_id)
    assert attempt.ok and attempt.manual and attempt.number == 2
    first, second = receiver.verified()
    assert first.webhook_id == second.webhook_id and first.body == second.body
    assert [a.manual for a in list_attempts(delivery_id)] == [False, True]
    with pytest.raises(DeliveryNotFoundError):
        redeliver(uuid.uuid4())
    with pytest.raises(DeliveryNotFoundError):
        redeliver("nope")


def test_redelivering_a_failed_delivery_by_hand(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    env(AIW_WEBHOOK_RETRY_SCHEDULE="")
    _endpoint(receiver)
    receiver.faults.push(Fault.status_code(500), times=2)
    (delivery_id,) = _emit()
    assert drive(delivery_id)[-1].status == DeliveryStatus.FAILED
    failed_again = redeliver(delivery_id)
    assert failed_again.status_code == 500
    assert get_delivery(delivery_id).status == DeliveryStatus.FAILED
    assert redeliver(delivery_id).ok
    assert get_delivery(delivery_id).status == DeliveryStatus.SUCCEEDED
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1


def test_send_test_event(webhook_db: RecordingPublisher, receiver: WebhookReceiver) -> None:
    endpoint_id = _endpoint(receiver, ["agent_run.completed"])  # its filter does not matter
    attempt = send_test_event(endpoint_id)
    assert attempt.ok
    (got,) = receiver.verified()
    assert got.event_type == "webhook.test" and got.data["endpoint_id"] == str(endpoint_id)
    receiver.faults.push(Fault.status_code(500))
    failed = send_test_event(endpoint_id)
    assert failed.status_code == 500
    assert get_delivery(failed.delivery_id).status == DeliveryStatus.FAILED  # not retried
    assert sweep_deliveries() == 0 and webhook_db.deliveries == []


def test_the_runner_emits_ai_request_events(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, openai_env: FakeOpenAIServer,
    env: Callable[..., None],
) -> None:  # fmt: skip
    env(PREFER_CODEGEN="false", OPENAI_MAX_RETRIES=0)
    reset_providers()
    _endpoint(receiver, ["ai_request.*"])
    ok = submit("hello", tags=["t1"])
    assert run_job(ok.id).action == "done"
    openai_env.faults.push(Fault.status_code(400))
    bad = submit("refused")
    assert run_job(bad.id).action == "done"
    for delivery_id in webhook_db.delivery_ids():
        drive(uuid.UUID(delivery_id))
    succeeded, failed = receiver.verified()
    assert succeeded.event_type == "ai_request.succeeded"
    data = succeeded.data
    assert data["id"] == str(ok.id) and data["status"] == "succeeded"
    assert data["content"] == "echo: hello" and data["provider"] == "openai"
    assert data["usage"]["prompt_tokens"] > 0 and data["tags"] == ["t1"]
    assert data["error"] is None and data["finished_at"] and data["attempt_count"] == 1
    assert "prompt" not in data
    assert failed.event_type == "ai_request.failed"
    assert failed.data["error"]["type"] == "ProviderBadRequestError"
    assert failed.data["content"] is None
    # No secret anywhere in what was sent.
    for got in receiver.received:
        assert openai_env.api_key.encode() not in got.body
    assert {d.event_type for d in list_deliveries()} == {
        "ai_request.succeeded", "ai_request.failed"
    }  # fmt: skip
    reset_providers()
    reset_resources()
