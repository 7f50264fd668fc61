"""Signed webhooks (Standard Webhooks): endpoints, events, deliveries.

    endpoint, secret = register_endpoint("https://example.com/hooks", ["ai_request.*"])
    # show `secret` to the receiver's owner now: it is stored encrypted, never shown again

    # in a receiver:
    event = verify_webhook(request.body, request.headers, secret)

Events are emitted in the transaction of the change they report (``emit``),
sent by the ``aiw.webhook.deliver`` task after that transaction commits, signed
with the endpoint's secret, retried on the ``AIW_WEBHOOK_RETRY_SCHEDULE`` with
the same ``webhook-id``, and refused for private or metadata addresses (see
``urlguard``).
"""

from app.db.webhook_models import DeliveryStatus
from app.webhooks.endpoints import (
    Delivery,
    DeliveryAttempt,
    Endpoint,
    disable_endpoint,
    enable_endpoint,
    get_delivery,
    get_endpoint,
    list_attempts,
    list_deliveries,
    list_endpoints,
    redeliver,
    register_endpoint,
    send_test_event,
)
from app.webhooks.errors import (
    DeliveryBusyError,
    DeliveryNotFoundError,
    EndpointNotFoundError,
    InvalidArgumentError,
    InvalidPayloadError,
    InvalidSecretError,
    InvalidWebhookURLError,
    SecretKeyError,
    UnknownEventTypeError,
    UnsafeTargetError,
    WebhookError,
    WebhookVerificationError,
)
from app.webhooks.events import EVENT_TYPES, emit
from app.webhooks.signing import verify_webhook

__all__ = [
    "EVENT_TYPES",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryBusyError",
    "DeliveryNotFoundError",
    "DeliveryStatus",
    "Endpoint",
    "EndpointNotFoundError",
    "InvalidArgumentError",
    "InvalidPayloadError",
    "InvalidSecretError",
    "InvalidWebhookURLError",
    "SecretKeyError",
    "UnknownEventTypeError",
    "UnsafeTargetError",
    "WebhookError",
    "WebhookVerificationError",
    "disable_endpoint",
    "emit",
    "enable_endpoint",
    "get_delivery",
    "get_endpoint",
    "list_attempts",
    "list_deliveries",
    "list_endpoints",
    "redeliver",
    "register_endpoint",
    "send_test_event",
    "verify_webhook",
]
