"""A webhook receiver on loopback that verifies every delivery with the
``standardwebhooks`` library, as a real consumer would.

    receiver = WebhookReceiver(secret).start()
    receiver.faults.push(Fault.status_code(500), times=3)   # down for three tries
    ...
    receiver.received        # every delivery that reached the handler, verified or not
    receiver.verified_ids()  # webhook-id of each verified delivery, in arrival order

Answers 200 to a verified delivery and 400 to one that is not. ``secret`` may
be set after start (``receiver.secret = ...``) when the endpoint's secret is
generated at registration.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.sandbox.base import FakeServer, Reply, Request


@dataclass(frozen=True)
class Received:
    webhook_id: str | None
    timestamp: str | None
    signature: str | None
    event_type: str | None
    data: Any
    verified: bool
    error: str | None
    headers: dict[str, str]
    body: bytes
    at: float


class WebhookReceiver(FakeServer):
    def __init__(self, secret: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.secret = secret
        self.received: list[Received] = []
        self._received_lock = threading.Lock()
        self._arrived = threading.Condition(self._received_lock)

    @property
    def url(self) -> str:
        return f"{self.root_url}/hooks"

    def dispatch(self, request: Request) -> Reply:
        verified, error, envelope = False, None, None
        if self.secret is None:
            error = "receiver has no secret"
        else:
            try:
                envelope = Webhook(self.secret).verify(request.raw_body, request.headers)
                verified = True
            except (WebhookVerificationError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        record = Received(
            webhook_id=request.headers.get("webhook-id"),
            timestamp=request.headers.get("webhook-timestamp"),
            signature=request.headers.get("webhook-signature"),
            event_type=envelope.get("type") if isinstance(envelope, dict) else None,
            data=envelope.get("data") if isinstance(envelope, dict) else None,
            verified=verified,
            error=error,
            headers=dict(request.headers),
            body=request.raw_body,
            at=time.time(),
        )
        with self._arrived:
            self.received.append(record)
            self._arrived.notify_all()
        if verified:
            return Reply(200, {"ok": True})
        return Reply(400, {"ok": False, "error": error})

    # --- reading what arrived ---------------------------------------------------------

    def verified(self) -> list[Received]:
        with self._received_lock:
            return [r for r in self.received if r.verified]

    def verified_ids(self) -> list[str]:
        return [r.webhook_id for r in self.verified() if r.webhook_id]

    def wait_for(self, count: int, timeout: float, *, verified_only: bool = True) -> list[Received]:
        """Block until ``count`` deliveries arrived (verified ones by default)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                got = [r for r in self.received if r.verified or not verified_only]
                if len(got) >= count:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(got)} of {count} webhook deliveries after {timeout}s "
                        f"({len(self.received)} received in all)"
                    )
                self._arrived.wait(min(remaining, 0.5))
