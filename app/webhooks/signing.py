"""Standard Webhooks: the body we send, the headers that sign it, and the check a
consumer makes (``verify_webhook``), all through the ``standardwebhooks`` library.

Body: ``{"type": ..., "timestamp": <event time, ISO 8601>, "data": <payload>}``,
compact JSON, ASCII only; the same bytes on every try of an event.
Headers: ``webhook-id`` (the event id, the consumer's idempotency key),
``webhook-timestamp`` (unix seconds of this try), ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``), ``content-type`` and a
``user-agent``.
"""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import (
    EmptyWebhookSecretError,
)
from standardwebhooks.webhooks import (
    WebhookVerificationError as _LibraryVerificationError,
)

from app.webhooks.errors import InvalidSecretError, WebhookVerificationError

USER_AGENT = "ai-worker-webhooks/1"
TOLERANCE_SECONDS = 300  # the library's fixed tolerance: 5 minutes either way


def event_body(event_type: str, payload: Mapping[str, Any], created_at: datetime) -> str:
    """The JSON body of an event (a string; send it UTF-8 encoded)."""
    envelope = {
        "type": event_type,
        "timestamp": created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": payload,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=True)


def _webhook(secret: str) -> Webhook:
    try:
        return Webhook(secret)
    except (binascii.Error, ValueError, EmptyWebhookSecretError):
        raise InvalidSecretError("the webhook secret is not whsec_ + base64") from None


def sign_headers(
    secret: str, msg_id: str, body: str, *, timestamp: float | None = None
) -> dict[str, str]:
    """The headers of one try: ``webhook-*``, ``content-type``, ``user-agent``."""
    seconds = int(time.time() if timestamp is None else timestamp)
    signature = _webhook(secret).sign(msg_id, datetime.fromtimestamp(seconds, UTC), body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str) -> Any:
    """Check a delivery as its consumer: returns the parsed JSON body when the signature
    matches and the timestamp is within 5 minutes of now; else raises
    ``WebhookVerificationError`` saying why. ``headers``: any mapping of the request's
    headers (names in any case). Use the raw body bytes, before any JSON parsing.

    Keep ``webhook-id`` to ignore a delivery you have already processed: a retry or a
    manual redelivery carries the same id.
    """
    hook = _webhook(secret)
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    missing = [
        name
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        if not lowered.get(name)
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    try:
        sent = float(lowered["webhook-timestamp"])
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a unix time") from None
    _check_age(sent)
    try:
        data = body if isinstance(body, str) else body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookVerificationError("the body is not UTF-8") from None
    try:
        return hook.verify(data, lowered)
    except _LibraryVerificationError:
        _check_age(sent)  # the tolerance may have run out since the first check
        raise WebhookVerificationError(
            "signature does not match: wrong secret, or the body was changed"
        ) from None
    except (ValueError, binascii.Error):
        # A malformed webhook-signature header, or a body that is not JSON.
        raise WebhookVerificationError(
            "malformed webhook-signature header or body (expected 'v1,<base64>' and JSON)"
        ) from None


def _check_age(sent: float) -> None:
    age = time.time() - sent
    if age > TOLERANCE_SECONDS:
        raise WebhookVerificationError(
            f"timestamp too old ({age:.0f} s; the tolerance is {TOLERANCE_SECONDS} s): "
            "a replay, or a clock far off"
        )
    if -age > TOLERANCE_SECONDS:
        raise WebhookVerificationError(
            f"timestamp {-age:.0f} s in the future (tolerance {TOLERANCE_SECONDS} s)"
        )
