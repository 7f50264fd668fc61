"""Endpoints and deliveries as the user sees them: register, list, disable, enable,
redeliver by hand, send a test event. Every function is its own transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, insert, select, update

from app.config import get_settings
from app.db.base import utcnow
from app.db.ids import parse_id, resolve_id
from app.db.session import session_scope
from app.db.webhook_models import (
    DeliveryStatus,
    WebhookAttemptRow,
    WebhookDeliveryRow,
    WebhookEndpointRow,
    WebhookEventRow,
)
from app.webhooks.crypto import generate_secret, get_secret_box, validate_secret
from app.webhooks.delivery import disable, send_now
from app.webhooks.errors import (
    DeliveryNotFoundError,
    EndpointNotFoundError,
    InvalidArgumentError,
    WebhookError,
)
from app.webhooks.events import new_event_id, normalize_filter
from app.webhooks.urlguard import check_url

if TYPE_CHECKING:
    from app.config import Settings

MAX_DESCRIPTION = 1000
MAX_LIST = 1000


class Endpoint(BaseModel):
    """A registered endpoint (its secret is never part of it)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: uuid.UUID
    url: str
    description: str | None
    event_types: list[str]  # [] means every type
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class Delivery(BaseModel):
    """One event to one endpoint."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    event_id: str  # the webhook-id header
    event_type: str
    endpoint_id: uuid.UUID
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryAttempt(BaseModel):
    """One HTTP try of a delivery."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    delivery_id: uuid.UUID
    number: int
    manual: bool
    status_code: int | None
    latency_s: float | None
    error: str | None
    response_snippet: str | None
    created_at: datetime

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _uuid(value: uuid.UUID | str, error: type[WebhookError], what: str) -> uuid.UUID:
    """An endpoint's or delivery's id from a UUID or the unique start of one."""
    parsed = parse_id(value, error, what)
    if isinstance(parsed, uuid.UUID):
        return parsed
    column = WebhookEndpointRow.id if error is EndpointNotFoundError else WebhookDeliveryRow.id
    with session_scope() as session:
        return resolve_id(session, column, value, error, what)


# --- endpoints ---------------------------------------------------------------------------


def register_endpoint(
    url: str,
    event_types: list[str] | None = None,
    secret: str | None = None,
    description: str | None = None,
    *,
    settings: Settings | None = None,
) -> tuple[Endpoint, str]:
    """Register a receiver. Returns the endpoint and its signing secret: the secret is
    shown this once (generated when not given) and stored encrypted.

    Raises ``InvalidWebhookURLError`` / ``UnsafeTargetError`` for a URL we will not
    send to, ``UnknownEventTypeError``, ``InvalidSecretError``."""
    settings = settings or get_settings()
    url = check_url(url, allow_private=settings.aiw_webhook_allow_private)
    wanted = normalize_filter(event_types)
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise InvalidArgumentError(f"description: a string of at most {MAX_DESCRIPTION} chars")
    secret = validate_secret(secret) if secret is not None else generate_secret()
    now = utcnow()
    row = WebhookEndpointRow(
        id=uuid.uuid4(),
        url=url,
        description=description,
        event_types=wanted,
        secret_encrypted=get_secret_box(settings).encrypt(secret),
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    with session_scope() as session:
        session.add(row)
        session.flush()
        endpoint = Endpoint.model_validate(row)
    return endpoint, secret


def get_endpoint(endpoint_id: uuid.UUID | str) -> Endpoint:
    eid = _uuid(endpoint_id, EndpointNotFoundError, "webhook endpoint")
    with session_scope() as session:
        row = session.get(WebhookEndpointRow, eid)
        if row is None:
            raise EndpointNotFoundError(f"no webhook endpoint {endpoint_id}")
        return Endpoint.model_validate(row)


def list_endpoints(enabled: bool | None = None) -> list[Endpoint]:
    """Every endpoint, oldest first; ``enabled`` filters."""
    query = select(WebhookEndpointRow).order_by(
        WebhookEndpointRow.created_at, WebhookEndpointRow.id
    )
    if enabled is not None:
        query = query.where(WebhookEndpointRow.enabled.is_(enabled))
    with session_scope() as session:
        return [Endpoint.model_validate(r) for r in session.scalars(query)]


def disable_endpoint(endpoint_id: uuid.UUID | str, reason: str = "by the operator") -> Endpoint:
    """Stop sending to an endpoint; its pending deliveries are abandoned (they can be
    sent again by hand with ``redeliver``)."""
    eid = _uuid(endpoint_id, EndpointNotFoundError, "webhook endpoint")
    with session_scope() as session:
        if session.get(WebhookEndpointRow, eid) is None:
            raise EndpointNotFoundError(f"no webhook endpoint {endpoint_id}")
        disable(session, eid, reason, utcnow())
    return get_endpoint(eid)


def enable_endpoint(endpoint_id: uuid.UUID | str) -> Endpoint:
    """Send to an endpoint again (new events only; earlier ones by hand with
    ``redeliver``). Its failing stretch starts over."""
    eid = _uuid(endpoint_id, EndpointNotFoundError, "webhook endpoint")
    now = utcnow()
    with session_scope() as session:
        row = session.get(WebhookEndpointRow, eid)
        if row is None:
            raise EndpointNotFoundError(f"no webhook endpoint {endpoint_id}")
        session.execute(
            update(WebhookEndpointRow)
            .where(WebhookEndpointRow.id == eid)
            .values(
                enabled=True,
                disabled_reason=None,
                disabled_at=None,
                failing_since=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    return get_endpoint(eid)


# --- deliveries --------------------------------------------------------------------------


def _delivery_query() -> Select[*tuple[Any, ...]]:
    D = WebhookDeliveryRow
    return select(
        D.id,
        D.event_id,
        WebhookEventRow.type.label("event_type"),
        D.endpoint_id,
        D.status,
        D.attempt_count,
        D.next_attempt_at,
        D.last_status_code,
        D.last_error,
        D.delivered_at,
        D.created_at,
        D.updated_at,
    ).join(WebhookEventRow, WebhookEventRow.id == D.event_id)


def list_deliveries(
    endpoint_id: uuid.UUID | str | None = None,
    status: str | None = None,
    *,
    limit: int = 50,
) -> list[Delivery]:
    """Newest first; filtered by endpoint and/or status."""
    if not 0 < limit <= MAX_LIST:
        raise InvalidArgumentError(f"limit must be between 1 and {MAX_LIST}")
    D = WebhookDeliveryRow
    query = _delivery_query().order_by(D.created_at.desc(), D.id).limit(limit)
    if endpoint_id is not None:
        query = query.where(
            D.endpoint_id == _uuid(endpoint_id, EndpointNotFoundError, "webhook endpoint")
        )
    if status is not None:
        if status not in {s.value for s in DeliveryStatus}:
            raise InvalidArgumentError(
                f"unknown delivery status {status!r}; one of "
                f"{', '.join(s.value for s in DeliveryStatus)}"
            )
        query = query.where(D.status == status)
    with session_scope() as session:
        return [Delivery.model_validate(dict(r._mapping)) for r in session.execute(query)]


def get_delivery(delivery_id: uuid.UUID | str) -> Delivery:
    did = _uuid(delivery_id, DeliveryNotFoundError, "webhook delivery")
    with session_scope() as session:
        row = session.execute(_delivery_query().where(WebhookDeliveryRow.id == did)).first()
        if row is None:
            raise DeliveryNotFoundError(f"no webhook delivery {delivery_id}")
        return Delivery.model_validate(dict(row._mapping))


def list_attempts(delivery_id: uuid.UUID | str) -> list[DeliveryAttempt]:
    """Every try of a delivery, first to last."""
    did = _uuid(delivery_id, DeliveryNotFoundError, "webhook delivery")
    with session_scope() as session:
        rows = session.scalars(
            select(WebhookAttemptRow)
            .where(WebhookAttemptRow.delivery_id == did)
            .order_by(WebhookAttemptRow.number)
        )
        return [DeliveryAttempt.model_validate(r) for r in rows]


def redeliver(delivery_id: uuid.UUID | str) -> DeliveryAttempt:
    """Send a delivery again, now, from this process, whatever its status (also to a
    disabled endpoint): a new attempt with the same ``webhook-id``. A success marks
    it succeeded; a failure leaves its status and automatic schedule as they were.
    Raises ``DeliveryNotFoundError``, or ``DeliveryBusyError`` while a worker sends it."""
    did = _uuid(delivery_id, DeliveryNotFoundError, "webhook delivery")
    manual = send_now(did)
    result = manual.result
    return DeliveryAttempt(
        delivery_id=did,
        number=manual.number,
        manual=True,
        status_code=result.status_code,
        latency_s=result.latency_s,
        error=result.error,
        response_snippet=result.snippet,
        created_at=result.started_at,
    )


def send_test_event(endpoint_id: uuid.UUID | str) -> DeliveryAttempt:
    """Send a ``webhook.test`` event to one endpoint, now, from this process (whatever
    its event filter, enabled or not), and return the attempt. A failed test is not
    retried."""
    eid = _uuid(endpoint_id, EndpointNotFoundError, "webhook endpoint")
    now = utcnow()
    event_id = new_event_id()
    delivery_id = uuid.uuid4()
    with session_scope() as session:
        if session.get(WebhookEndpointRow, eid) is None:
            raise EndpointNotFoundError(f"no webhook endpoint {endpoint_id}")
        session.execute(
            insert(WebhookEventRow).values(
                id=event_id,
                type="webhook.test",
                payload={"endpoint_id": str(eid), "message": "a test event from ai-worker"},
                created_at=now,
            )
        )
        # No next_attempt_at: never picked up by the automatic path or the sweep.
        session.execute(
            insert(WebhookDeliveryRow).values(
                id=delivery_id,
                event_id=event_id,
                endpoint_id=eid,
                status=DeliveryStatus.PENDING,
                attempt_count=0,
                next_attempt_at=None,
                published_at=None,
                created_at=now,
                updated_at=now,
            )
        )
    return redeliver(delivery_id)
