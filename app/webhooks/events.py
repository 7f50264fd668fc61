"""Emitting events: an outbox in the caller's transaction.

``emit(session, "ai_request.succeeded", payload)`` adds, in the caller's open
transaction, one event row and one delivery row per enabled endpoint that wants
the type, and returns the delivery ids. Nothing is published yet: right after
that session commits (SQLAlchemy ``after_commit``), each delivery is handed to
the queue (``Publisher.publish_delivery``). If the transaction rolls back, the
rows vanish and nothing is published. If the broker cannot take a message, the
delivery waits in the database and the sweep publishes it (after
``AIW_REPUBLISH_AFTER`` seconds). So an event is sent if and only if the change
that caused it was committed.

When no enabled endpoint wants the type, nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from types import MappingProxyType
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.ai.base import Usage
from app.core.publisher import PublishError, get_publisher
from app.core.redact import redact
from app.db.base import utcnow
from app.db.models import AIRequestRow
from app.db.session import after_commit
from app.db.webhook_models import (
    DeliveryStatus,
    WebhookDeliveryRow,
    WebhookEndpointRow,
    WebhookEventRow,
)
from app.webhooks.errors import InvalidPayloadError, UnknownEventTypeError

log = logging.getLogger(__name__)

EVENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "ai_request.succeeded": "an AI request (job) ended with an answer",
        "ai_request.failed": "an AI request (job) ended without an answer",
        "agent_run.status_changed": "a Codegen agent run changed status",
        "agent_run.completed": "a Codegen agent run completed",
        "agent_run.failed": "a Codegen agent run failed, was cancelled or timed out",
        "agent_run.stuck": "a Codegen agent run did not end by its deadline (no longer polled)",
        "budget.threshold": "a spend budget passed 80% of its cap (once per window)",
        "budget.exceeded": "a spend budget kept a job out: its cap is spent (once per window)",
        "webhook.test": "a test event sent by hand (send_test_event)",
    }
)
ALL = "*"


def new_event_id() -> str:
    """A Standard Webhooks message id: ``msg_`` + 32 hex digits."""
    return f"msg_{uuid.uuid4().hex}"


# --- event types and endpoint filters -----------------------------------------------


def check_event_type(event_type: object) -> str:
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise UnknownEventTypeError(
            f"unknown event type {event_type!r}; known types: {', '.join(EVENT_TYPES)}"
        )
    return event_type


def normalize_filter(event_types: object) -> list[str]:
    """Check what an endpoint asks for: None, [] or ["*"] (everything), exact types,
    or group patterns like ``"agent_run.*"``. Returns a sorted list without duplicates
    ([] for everything)."""
    if event_types is None:
        return []
    if isinstance(event_types, str) or not isinstance(event_types, list | tuple | set):
        raise UnknownEventTypeError("event_types must be a list of event type names")
    groups = {name.split(".", 1)[0] for name in EVENT_TYPES}
    wanted: set[str] = set()
    for item in event_types:
        if item == ALL:
            return []
        if isinstance(item, str) and item.endswith(".*") and item[:-2] in groups:
            wanted.add(item)
            continue
        wanted.add(check_event_type(item))
    return sorted(wanted)


def wants(event_filter: list[str] | None, event_type: str) -> bool:
    """Does an endpoint with this filter want ``event_type``?"""
    if not event_filter or ALL in event_filter:
        return True
    group = event_type.split(".", 1)[0]
    return event_type in event_filter or f"{group}.*" in event_filter


# --- payloads ---------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json_object(payload: object) -> dict[str, Any]:
    """``payload`` as plain JSON values (datetimes, UUIDs, enums, pydantic models and
    dataclasses converted); ``InvalidPayloadError`` if it is not a JSON object."""
    if not isinstance(payload, Mapping):
        raise InvalidPayloadError(f"an event payload is a dict, not {type(payload).__name__}")
    try:
        plain = json.loads(json.dumps(dict(payload), default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidPayloadError(f"an event payload must be JSON: {exc}") from None
    assert isinstance(plain, dict)
    return plain


# --- emit --------------------------------------------------------------------------------


def emit(session: Session, event_type: str, payload: dict[str, Any]) -> list[uuid.UUID]:
    """Record ``event_type`` with ``payload`` for every enabled endpoint that wants it,
    in ``session``'s transaction; the deliveries are published after it commits.
    Returns the new delivery ids ([] when no endpoint wants the event)."""
    check_event_type(event_type)
    data = to_json_object(payload)
    return _write(session, event_type, data, _targets(session, event_type))


def _targets(session: Session, event_type: str) -> list[uuid.UUID]:
    """The enabled endpoints that want ``event_type``."""
    endpoints = session.execute(
        select(WebhookEndpointRow.id, WebhookEndpointRow.event_types).where(
            WebhookEndpointRow.enabled.is_(True)
        )
    ).all()
    return [endpoint_id for endpoint_id, types in endpoints if wants(types, event_type)]


def _write(
    session: Session, event_type: str, data: dict[str, Any], targets: list[uuid.UUID]
) -> list[uuid.UUID]:
    if not targets:
        return []
    now = utcnow()
    event_id = new_event_id()
    ids = [uuid.uuid4() for _ in targets]
    # Core inserts, executed now and in this order (the deliveries refer to the event).
    session.execute(
        insert(WebhookEventRow).values(id=event_id, type=event_type, payload=data, created_at=now)
    )
    session.execute(
        insert(WebhookDeliveryRow),
        [
            {
                "id": delivery_id,
                "event_id": event_id,
                "endpoint_id": endpoint_id,
                "status": DeliveryStatus.PENDING.value,
                "attempt_count": 0,
                "next_attempt_at": now,
                "published_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for delivery_id, endpoint_id in zip(ids, targets, strict=True)
        ],
    )
    publish_after_commit(session, ids)
    return ids


def publish_after_commit(session: Session, delivery_ids: list[uuid.UUID]) -> None:
    """Publish these deliveries once ``session`` commits (forgotten if it rolls back)."""
    ids = list(delivery_ids)
    if ids:
        after_commit(session, lambda: publish_deliveries(ids))


def publish_deliveries(ids: list[uuid.UUID], countdown: float | None = None) -> int:
    """Hand deliveries to the queue; on a broker failure leave them to the sweep.
    Returns how many were published."""
    published = 0
    try:
        publisher = get_publisher()
        for delivery_id in ids:
            publisher.publish_delivery(str(delivery_id), countdown=countdown)
            published += 1
    except (PublishError, OSError) as exc:
        log.warning(
            "%d webhook deliver%s not published (%s: %s); the sweep will publish them",
            len(ids) - published,
            "y" if len(ids) - published == 1 else "ies",
            type(exc).__name__,
            exc,
        )
    return published


# --- AI request events -----------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def ai_request_payload(row: AIRequestRow) -> dict[str, Any]:
    """The payload of ``ai_request.succeeded`` / ``ai_request.failed`` (no prompt, no
    provider metadata, never a secret: only what the job row says of its outcome, its
    error message redacted once more, whatever wrote the row)."""
    result = row.result or {}
    succeeded = row.status == "succeeded"
    usage = result.get("usage")
    if isinstance(usage, dict):
        usage = {**usage, "total_tokens": Usage.model_validate(usage).total_tokens}
    return {
        "id": str(row.id),
        "kind": row.kind,
        "status": row.status,
        "provider": row.provider_used,
        "model": row.model,
        "content": result.get("content") if succeeded else None,
        "error": None
        if succeeded
        else {"type": row.error_type, "message": redact(row.error_message)},  # again
        "usage": usage,
        "cost_usd": result.get("cost_usd"),
        "tags": list(row.tags or []),
        "attempt_count": row.attempt_count,
        "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
    }


def emit_ai_request_finished(session: Session, job_id: uuid.UUID, status: str) -> list[uuid.UUID]:
    """Emit ``ai_request.succeeded`` or ``ai_request.failed`` for a job that ends in
    ``session``'s transaction. The job row is read only when an endpoint wants it."""
    event_type = "ai_request.succeeded" if status == "succeeded" else "ai_request.failed"
    targets = _targets(session, event_type)
    if not targets:
        return []
    row = session.get(AIRequestRow, job_id)
    if row is None:
        return []
    return _write(session, event_type, to_json_object(ai_request_payload(row)), targets)
