"""Webhooks through real worker processes, Redis and PostgreSQL, to a receiver on
loopback that verifies every signature with the standardwebhooks library.

The receiver is on 127.0.0.1, so the bed allows private targets
(AIW_WEBHOOK_ALLOW_PRIVATE=true) except where a test switches it off on purpose.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from standardwebhooks import Webhook

from app.db.session import session_scope
from app.jobs import submit
from app.sandbox.base import Fault
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import (
    Delivery,
    DeliveryStatus,
    UnsafeTargetError,
    emit,
    get_delivery,
    get_endpoint,
    list_attempts,
    list_deliveries,
    list_endpoints,
    redeliver,
    register_endpoint,
    verify_webhook,
)
from tests.plugins.queue import QueueBed

pytestmark = pytest.mark.integration


def _register(receiver: WebhookReceiver, types: list[str] | None = None) -> uuid.UUID:
    endpoint, secret = register_endpoint(receiver.url, types)
    receiver.secret = secret
    return endpoint.id


def _emit(event_type: str = "agent_run.completed", **payload: object) -> list[uuid.UUID]:
    with session_scope() as session:
        return emit(session, event_type, payload or {"id": 1})


def wait_ended(delivery_ids: list[uuid.UUID], timeout: float) -> list[Delivery]:
    deadline = time.monotonic() + timeout
    while True:
        deliveries = [get_delivery(d) for d in delivery_ids]
        if all(d.status != DeliveryStatus.PENDING for d in deliveries):
            return deliveries
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries still pending after {timeout}s: {deliveries}")
        time.sleep(0.1)


def test_an_ai_job_produces_a_signed_succeeded_event(
    webhook_bed: QueueBed, receiver: WebhookReceiver
) -> None:
    _register(receiver, ["ai_request.succeeded"])
    webhook_bed.worker(concurrency=4)
    handle = submit("hello webhooks", tags=["wh"])
    (got,) = receiver.wait_for(1, timeout=30)
    # Verified on the receiving side by the library itself, and by our consumer helper.
    envelope = Webhook(receiver.secret or "").verify(got.body, got.headers)
    assert envelope == verify_webhook(got.body, got.headers, receiver.secret or "")
    assert envelope["type"] == "ai_request.succeeded"
    data = envelope["data"]
    assert data["id"] == str(handle.id) and data["status"] == "succeeded"
    assert data["content"] == "echo: hello webhooks" and data["tags"] == ["wh"]
    assert data["usage"]["total_tokens"] > 0
    assert handle.wait(timeout=10).status == "succeeded"
    (delivery,) = wait_ended([d.id for d in list_deliveries()], timeout=10)
    assert delivery.status == DeliveryStatus.SUCCEEDED and delivery.attempt_count == 1
    assert delivery.event_id == got.webhook_id


def test_a_receiver_outage_is_survived_with_one_id_and_one_success_each(
    webhook_bed: QueueBed, receiver: WebhookReceiver
) -> None:
    # 0.5 s and 1 s waits go back to the broker as countdowns; the 2 s ones are parked
    # in the database and published by the beat's sweep.
    webhook_bed.configure(AIW_MAX_COUNTDOWN=1, AIW_WEBHOOK_RETRY_SCHEDULE="0.5,1,2,2,2,2,2,2")
    endpoint_id = _register(receiver)
    webhook_bed.worker(concurrency=4)
    webhook_bed.beat()
    receiver.stop()  # connection refused
    ids = _emit(id="a") + _emit(id="b") + _emit(id="c")
    time.sleep(3)
    assert get_endpoint(endpoint_id).failing_since is not None
    receiver.faults.push(Fault.status_code(500), times=3)  # back, but failing at first
    receiver.start()
    receiver.wait_for(3, timeout=60)
    deliveries = wait_ended(ids, timeout=30)
    assert {d.status for d in deliveries} == {DeliveryStatus.SUCCEEDED}
    time.sleep(2)  # nothing else arrives later
    verified = Counter(receiver.verified_ids())
    assert verified == Counter({d.event_id: 1 for d in deliveries})  # one success each
    ids_per_try = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert set(ids_per_try) == set(verified)  # every try of an event carries its id
    for delivery in deliveries:
        attempts = list_attempts(delivery.id)
        codes = [a.status_code for a in attempts]
        assert codes.count(200) == 1 and codes[-1] == 200
        assert len(attempts) == delivery.attempt_count >= 3
        assert attempts[0].error == "connection failed: Connection refused"
        # Every try that reached the receiver is an attempt row.
        assert ids_per_try[delivery.event_id] == sum(c is not None for c in codes)
    assert sum(a.status_code == 500 for d in deliveries for a in list_attempts(d.id)) == 3
    assert get_endpoint(endpoint_id).failing_since is None


def test_410_disables_the_endpoint(webhook_bed: QueueBed, receiver: WebhookReceiver) -> None:
    endpoint_id = _register(receiver)
    receiver.faults.push(Fault.status_code(410))
    webhook_bed.worker(concurrency=2)
    (delivery,) = wait_ended(_emit(), timeout=30)
    assert (delivery.status, delivery.last_status_code) == (DeliveryStatus.FAILED, 410)
    endpoint = get_endpoint(endpoint_id)
    assert not endpoint.enabled and endpoint.disabled_reason == "the receiver answered 410 Gone"
    assert _emit() == []
    time.sleep(1)
    assert len(receiver.requests) == 1


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    webhook_bed: QueueBed, receiver: WebhookReceiver
) -> None:
    webhook_bed.configure(AIW_WEBHOOK_RETRY_SCHEDULE="0.3")
    elsewhere = WebhookReceiver().start()
    try:
        _register(receiver)
        receiver.faults.push(Fault.status_code(302, headers={"Location": elsewhere.url}), times=2)
        webhook_bed.worker(concurrency=2)
        (delivery,) = wait_ended(_emit(), timeout=30)
        assert (delivery.status, delivery.last_status_code) == (DeliveryStatus.FAILED, 302)
        attempts = list_attempts(delivery.id)
        assert [a.status_code for a in attempts] == [302, 302]
        assert attempts[0].error == f"HTTP 302: redirect to {elsewhere.url} not followed"
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()


def test_ssrf_targets_are_refused_at_registration_and_at_delivery(
    webhook_bed: QueueBed, receiver: WebhookReceiver
) -> None:
    webhook_bed.configure(AIW_WEBHOOK_ALLOW_PRIVATE="false")
    for url in (
        receiver.url,
        f"http://localhost:{receiver.port}/hooks",
        f"http://[::1]:{receiver.port}/hooks",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://10.0.0.1/hooks",
        "http://[fd00:ec2::254]/latest/api/token",
    ):
        with pytest.raises(UnsafeTargetError):
            register_endpoint(url)
    assert list_endpoints() == []
    # Registered while allowed; the worker that delivers does not allow it: it refuses
    # on the address it would connect to, and nothing reaches the receiver.
    webhook_bed.configure(AIW_WEBHOOK_ALLOW_PRIVATE="true", AIW_WEBHOOK_RETRY_SCHEDULE="0.3")
    _register(receiver)
    strict = dict(webhook_bed.env, AIW_WEBHOOK_ALLOW_PRIVATE="false")
    webhook_bed.celery.worker(strict, concurrency=2)
    (delivery,) = wait_ended(_emit(), timeout=30)
    assert delivery.status == DeliveryStatus.FAILED
    attempts = list_attempts(delivery.id)
    assert len(attempts) == 2 and all(a.status_code is None for a in attempts)
    assert all("refused webhook target '127.0.0.1'" in (a.error or "") for a in attempts)
    assert receiver.requests == []


def test_manual_redelivery_keeps_the_webhook_id(
    webhook_bed: QueueBed, receiver: WebhookReceiver
) -> None:
    _register(receiver)
    webhook_bed.worker(concurrency=2)
    (delivery,) = wait_ended(_emit(id="again"), timeout=30)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    attempt = redeliver(delivery.id)
    assert attempt.ok and attempt.manual and attempt.number == 2
    first, second = receiver.wait_for(2, timeout=10)
    assert first.webhook_id == second.webhook_id == delivery.event_id
    assert first.body == second.body and first.timestamp <= second.timestamp
    assert [a.manual for a in list_attempts(delivery.id)] == [False, True]
