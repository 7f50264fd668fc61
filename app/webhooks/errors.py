"""The webhook layer's errors: one tree under ``WebhookError``.

Input errors are also ``ValueError`` and lookups also ``LookupError``, so a
caller that only knows the built-ins still catches them.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address


class WebhookError(Exception):
    """Base of every error raised by ``app.webhooks``."""


class InvalidArgumentError(WebhookError, ValueError):
    """A bad argument: nothing was written."""


class InvalidWebhookURLError(InvalidArgumentError):
    """The URL is not one we send to: not http(s), no host, credentials in it, too long."""


class UnsafeTargetError(InvalidWebhookURLError):
    """The URL's host is, or resolves to, an address we refuse (loopback, private,
    link-local, multicast, cloud metadata ...). ``refused`` lists each address and why."""

    def __init__(
        self, host: str, refused: list[tuple[IPv4Address | IPv6Address | None, str]]
    ) -> None:
        self.host = host
        self.refused = refused
        reasons = "; ".join(
            f"{addr} is {why}" if addr is not None else why for addr, why in refused
        )
        if any(not why.startswith(ALWAYS_REFUSED) for _, why in refused):
            hint = "set AIW_WEBHOOK_ALLOW_PRIVATE=true to allow private targets on purpose"
        else:  # the switch would not open it: do not suggest it
            hint = "refused even with AIW_WEBHOOK_ALLOW_PRIVATE: no webhook receiver lives there"
        super().__init__(f"refused webhook target {host!r}: {reasons} ({hint})")


# What ``AIW_WEBHOOK_ALLOW_PRIVATE`` does not open (the reasons in app.webhooks.urlguard).
ALWAYS_REFUSED = ("a cloud metadata", "an unspecified address", "a multicast address")


class UnknownEventTypeError(InvalidArgumentError):
    """An event type (or pattern) that ai-worker does not emit."""


class InvalidPayloadError(InvalidArgumentError):
    """An event payload that is not a JSON object."""


class InvalidSecretError(InvalidArgumentError):
    """A signing secret that is not ``whsec_`` + base64 of 24..64 bytes."""


class SecretKeyError(WebhookError):
    """The key that encrypts stored secrets (``AIW_SECRET_KEY`` or its key file) is
    malformed, unreadable, or not the key a stored secret was encrypted with."""


class EndpointNotFoundError(WebhookError, LookupError):
    """No endpoint has this id."""


class DeliveryNotFoundError(WebhookError, LookupError):
    """No delivery has this id."""


class DeliveryBusyError(WebhookError):
    """A worker is sending this delivery right now; try the manual redelivery again later."""


class WebhookVerificationError(WebhookError):
    """``verify_webhook`` refused a delivery: missing headers, a signature that does not
    match (wrong secret or a changed body), or a timestamp outside the tolerance."""
