"""Emitting: the outbox written in the caller's transaction, published after commit;
registration and its errors; the AI request events of the runner."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from app.core.publisher import PublishError
from app.db.session import session_scope
from app.db.webhook_models import DeliveryStatus, WebhookDeliveryRow, WebhookEventRow
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import (
    EVENT_TYPES,
    EndpointNotFoundError,
    InvalidPayloadError,
    InvalidWebhookURLError,
    UnknownEventTypeError,
    UnsafeTargetError,
    disable_endpoint,
    emit,
    enable_endpoint,
    get_endpoint,
    list_deliveries,
    list_endpoints,
    register_endpoint,
)
from app.webhooks.sweep import sweep_deliveries
from tests.plugins.webhooks import RecordingPublisher


def _count(model: type) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_emit_writes_one_delivery_per_wanting_endpoint_and_publishes_after_commit(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    everything, _ = register_endpoint(receiver.url)
    star, _ = register_endpoint(receiver.url, ["*"])
    group, _ = register_endpoint(receiver.url, ["ai_request.*"])
    register_endpoint(receiver.url, ["agent_run.completed"])
    off, _ = register_endpoint(receiver.url)
    disable_endpoint(off.id)
    with session_scope() as session:
        ids = emit(session, "ai_request.succeeded", {"id": "j1"})
        assert len(ids) == 3
        assert webhook_db.deliveries == []  # not before the commit
    assert sorted(webhook_db.delivery_ids()) == sorted(str(i) for i in ids)
    targets = {d.endpoint_id for d in list_deliveries()}
    assert targets == {everything.id, star.id, group.id}
    with session_scope() as session:
        assert len(emit(session, "agent_run.completed", {"id": 1})) == 3  # exact + two "all"


def test_a_rolled_back_transaction_sends_nothing(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    register_endpoint(receiver.url)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), session_scope() as session:
        emit(session, "ai_request.failed", {"id": "j1"})
        raise Boom
    assert webhook_db.deliveries == []
    assert _count(WebhookEventRow) == 0 and _count(WebhookDeliveryRow) == 0
    # The same session object used again later does not publish the forgotten ids.
    with session_scope() as session:
        ids = emit(session, "ai_request.failed", {"id": "j2"})
    assert webhook_db.delivery_ids() == [str(ids[0])]


def test_nothing_is_written_when_no_endpoint_wants_the_event(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    with session_scope() as session:
        assert emit(session, "ai_request.succeeded", {"id": "j1"}) == []
    register_endpoint(receiver.url, ["agent_run.*"])
    with session_scope() as session:
        assert emit(session, "ai_request.succeeded", {"id": "j1"}) == []
    assert _count(WebhookEventRow) == 0 and webhook_db.deliveries == []


def test_emit_checks_type_and_payload_and_converts_plain_values(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver
) -> None:
    register_endpoint(receiver.url)
    with session_scope() as session:
        with pytest.raises(UnknownEventTypeError, match=r"known types: ai_request\.succeeded"):
            emit(session, "ai_request.exploded", {})
        with pytest.raises(InvalidPayloadError):
            emit(session, "ai_request.succeeded", ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(InvalidPayloadError):
            emit(session, "ai_request.succeeded", {"x": object()})
        with pytest.raises(InvalidPayloadError):
            emit(session, "ai_request.succeeded", {"x": float("nan")})
        run_id = uuid.uuid4()
        when = datetime(2025, 1, 1, tzinfo=UTC)
        emit(session, "agent_run.status_changed", {"run": run_id, "at": when, "n": 1})
    with session_scope() as session:
        payload = session.scalar(select(WebhookEventRow.payload))
    assert payload == {"run": str(run_id), "at": when.isoformat(), "n": 1}


def test_a_broker_failure_leaves_the_delivery_to_the_sweep(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    register_endpoint(receiver.url)
    webhook_db.fail_with = PublishError("broker down")
    with session_scope() as session:  # the commit itself succeeds
        (delivery_id,) = emit(session, "ai_request.succeeded", {"id": "j1"})
    assert webhook_db.deliveries == []
    assert list_deliveries()[0].status == DeliveryStatus.PENDING
    webhook_db.fail_with = None
    assert sweep_deliveries() == 0  # its message may still be on its way
    env(AIW_REPUBLISH_AFTER=0.2)
    time.sleep(0.3)
    assert sweep_deliveries() == 1
    assert webhook_db.delivery_ids() == [str(delivery_id)]
    assert sweep_deliveries() == 0  # stamped published again


def test_register_endpoint_errors_and_filters(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, env: Callable[..., None]
) -> None:
    with pytest.raises(UnknownEventTypeError):
        register_endpoint(receiver.url, ["ai_request.maybe"])
    with pytest.raises(UnknownEventTypeError):
        register_endpoint(receiver.url, ["nothing.*"])
    with pytest.raises(UnknownEventTypeError):
        register_endpoint(receiver.url, "ai_request.succeeded")  # type: ignore[arg-type]
    with pytest.raises(InvalidWebhookURLError):
        register_endpoint("ftp://example.com/")
    endpoint, _ = register_endpoint(
        receiver.url, ["ai_request.failed", "agent_run.*", "ai_request.failed"], description="d"
    )
    assert endpoint.event_types == ["agent_run.*", "ai_request.failed"]
    assert register_endpoint(receiver.url, ["ai_request.failed", "*"])[0].event_types == []
    env(AIW_WEBHOOK_ALLOW_PRIVATE="false")
    with pytest.raises(UnsafeTargetError, match="loopback"):
        register_endpoint(receiver.url)
    assert len(list_endpoints()) == 2  # nothing written by the refusals
    assert set(EVENT_TYPES) >= {"ai_request.succeeded", "agent_run.status_changed"}


def test_disable_and_enable(webhook_db: RecordingPublisher, receiver: WebhookReceiver) -> None:
    endpoint, _ = register_endpoint(receiver.url)
    with session_scope() as session:
        emit(session, "ai_request.succeeded", {"id": "j1"})
    off = disable_endpoint(endpoint.id, reason="maintenance")
    assert not off.enabled and off.disabled_reason == "maintenance" and off.disabled_at
    (delivery,) = list_deliveries(endpoint.id)
    assert delivery.status == DeliveryStatus.ABANDONED
    assert delivery.last_error == "endpoint disabled: maintenance"
    assert list_endpoints(enabled=False) == [get_endpoint(endpoint.id)]
    on = enable_endpoint(str(endpoint.id))
    assert on.enabled and on.disabled_reason is None and on.failing_since is None
    with pytest.raises(EndpointNotFoundError):
        disable_endpoint(uuid.uuid4())
    with pytest.raises(EndpointNotFoundError):
        get_endpoint("not-an-id")
