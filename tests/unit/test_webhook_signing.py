"""Standard Webhooks signing (standardwebhooks library) and the consumer's check."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from app.config import ConfigError, load_settings
from app.webhooks import WebhookVerificationError, verify_webhook
from app.webhooks.crypto import generate_secret
from app.webhooks.policy import is_gone, is_success, retry_delay, should_disable
from app.webhooks.signing import event_body, sign_headers

CREATED = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _signed(secret: str, *, at: float | None = None) -> tuple[str, dict[str, str]]:
    body = event_body("ai_request.succeeded", {"id": "j1", "content": "héllo"}, CREATED)
    return body, sign_headers(secret, "msg_abc", body, timestamp=at)


def test_the_library_verifies_what_we_sign() -> None:
    secret = generate_secret()
    body, headers = _signed(secret)
    assert headers["webhook-id"] == "msg_abc"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("ai-worker-webhooks/")
    assert headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    envelope = Webhook(secret).verify(body.encode(), headers)
    assert envelope == {
        "type": "ai_request.succeeded",
        "timestamp": "2025-01-02T03:04:05.678901Z",
        "data": {"id": "j1", "content": "héllo"},
    }


def test_the_body_is_ascii_json_and_the_same_on_every_try() -> None:
    body = event_body("x.y", {"b": [1, 2], "a": "é"}, CREATED)
    assert body.isascii() and json.loads(body)["data"] == {"b": [1, 2], "a": "é"}
    assert body == event_body("x.y", {"b": [1, 2], "a": "é"}, CREATED)


def test_verify_webhook_accepts_a_good_delivery_with_any_header_case() -> None:
    secret = generate_secret()
    body, headers = _signed(secret)
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_webhook(body.encode(), upper, secret)["data"]["id"] == "j1"
    assert verify_webhook(body, headers, secret)["type"] == "ai_request.succeeded"


def test_verify_webhook_refuses_a_wrong_secret() -> None:
    body, headers = _signed(generate_secret())
    with pytest.raises(WebhookVerificationError, match="wrong secret, or the body was changed"):
        verify_webhook(body, headers, generate_secret())


def test_verify_webhook_refuses_a_changed_body() -> None:
    secret = generate_secret()
    body, headers = _signed(secret)
    tampered = body.replace('"j1"', '"j2"')
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        verify_webhook(tampered, headers, secret)
    with pytest.raises(WebhookVerificationError, match="signature does not match"):
        verify_webhook(body, dict(headers, **{"webhook-id": "msg_other"}), secret)


def test_verify_webhook_refuses_an_old_or_future_timestamp() -> None:
    secret = generate_secret()
    body, headers = _signed(secret, at=time.time() - 301)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(body, headers, secret)
    body, headers = _signed(secret, at=time.time() + 400)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify_webhook(body, headers, secret)
    body, headers = _signed(secret, at=time.time() - 200)  # within the 5 minutes
    assert verify_webhook(body, headers, secret)


def test_verify_webhook_refuses_missing_or_malformed_headers() -> None:
    secret = generate_secret()
    body, headers = _signed(secret)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(WebhookVerificationError, match=f"missing header.*{name}"):
            verify_webhook(body, partial, secret)
    with pytest.raises(WebhookVerificationError, match="not a unix time"):
        verify_webhook(body, dict(headers, **{"webhook-timestamp": "yesterday"}), secret)
    with pytest.raises(WebhookVerificationError, match="malformed"):
        verify_webhook(body, dict(headers, **{"webhook-signature": "garbage"}), secret)


def test_retry_schedule_maths() -> None:
    schedule = load_settings().webhook_retry_schedule
    assert schedule == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    waits = [retry_delay(n, schedule) for n in range(1, 8)]
    assert waits == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, None]  # 7 tries in all
    assert sum(w for w in waits if w) / 3600 == pytest.approx(17.59, abs=0.01)
    assert retry_delay(1, ()) is None  # an empty schedule: one try only
    with pytest.raises(ValueError):
        retry_delay(0, schedule)
    assert load_settings(aiw_webhook_retry_schedule=" 0.5, 2 ,").webhook_retry_schedule == (
        0.5,
        2.0,
    )
    for bad in ("5,soon", "-1", "inf"):
        with pytest.raises(ConfigError, match="AIW_WEBHOOK_RETRY_SCHEDULE"):
            load_settings(aiw_webhook_retry_schedule=bad)


def test_success_gone_and_disable_rules() -> None:
    assert [is_success(c) for c in (200, 204, 299, 300, 302, 404, 500, None)] == [
        True, True, True, False, False, False, False, False,
    ]  # fmt: skip
    assert is_gone(410) and not is_gone(404)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    five_days = 5 * 86400
    assert not should_disable(None, start, five_days)
    assert not should_disable(start, start.replace(day=5), five_days)
    assert should_disable(start, start.replace(day=6), five_days)
