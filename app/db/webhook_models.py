"""The webhook tables: endpoints, events, deliveries (event x endpoint), attempts.

- ``webhook_endpoints``: where to send, which event types, the signing secret
  (encrypted, never in clear: see ``app.webhooks.secrets``), and whether the
  endpoint is enabled. ``failing_since`` is the first failure of the current
  unbroken stretch of failures (``NULL`` after any success); an endpoint
  failing for ``AIW_WEBHOOK_DISABLE_AFTER`` seconds is disabled.
- ``webhook_events``: one row per event; ``id`` (``msg_<hex>``) is the Standard
  Webhooks ``webhook-id``, the same on every try and every manual redelivery.
- ``webhook_deliveries``: one row per event and endpoint (UNIQUE), the unit of
  work of the ``aiw.webhook.deliver`` task. Scheduling mirrors ``ai_requests``:
  ``next_attempt_at`` (due time), ``published_at`` (when a message last went to
  the broker; ``NULL`` while a long wait is parked here for the sweep), and a
  claim (``claim_token``, ``lease_expires_at``) taken with one conditional
  UPDATE so that a delivery is never sent by two workers at once and a
  succeeded one is never sent again.
- ``webhook_attempts``: one row per HTTP try (status code, latency, error, the
  start of the response body).

Deleting an endpoint deletes its deliveries and their attempts (``ON DELETE
CASCADE``); deleting an event deletes its deliveries.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, BigIntPK, JSONType, TimestampMixin, UTCDateTime, utcnow
from app.db.tables import in_list


class DeliveryStatus(StrEnum):
    """Where one delivery (an event to an endpoint) stands."""

    PENDING = "pending"  # waiting for its (next) try
    SUCCEEDED = "succeeded"  # a 2xx was received; never sent again automatically
    FAILED = "failed"  # the retry schedule is spent, or the receiver answered 410
    ABANDONED = "abandoned"  # its endpoint was disabled before it got through


class WebhookEndpointRow(TimestampMixin, Base):
    """A registered receiver."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    # Event types wanted: exact names or "group.*"; empty or ["*"] means every type.
    event_types: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    # Fernet token of the "whsec_..." secret (app.webhooks.secrets).
    secret_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=text("true")
    )
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"<WebhookEndpointRow {self.id} {self.url} enabled={self.enabled}>"


class WebhookEventRow(Base):
    """Something that happened, as sent to every endpoint that wants it."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "msg_<32 hex>"
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now(), index=True
    )

    def __repr__(self) -> str:
        return f"<WebhookEventRow {self.id} {self.type}>"


class WebhookDeliveryRow(TimestampMixin, Base):
    """One event to one endpoint, with its schedule and claim."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        CheckConstraint(in_list("status", DeliveryStatus), name="status"),
        # The sweep: pending deliveries that are due and have no live message.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
        Index("ix_webhook_deliveries_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    event_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), nullable=False
    )
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=DeliveryStatus.PENDING)
    attempt_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claim_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # first 2xx

    def __repr__(self) -> str:
        return f"<WebhookDeliveryRow {self.id} {self.event_id} {self.status}>"


class WebhookAttemptRow(Base):
    """One HTTP try of one delivery."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "number"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)  # 1, 2, ... per delivery
    manual: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    response_snippet: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, default=utcnow, server_default=func.now()
    )

    def __repr__(self) -> str:
        return f"<WebhookAttemptRow {self.delivery_id}#{self.number} {self.status_code}>"


__all__ = [
    "DeliveryStatus",
    "WebhookAttemptRow",
    "WebhookDeliveryRow",
    "WebhookEndpointRow",
    "WebhookEventRow",
]
