"""Signing secrets: generated, checked, stored encrypted (never in clear)."""

from __future__ import annotations

import base64
import logging
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from app.config import get_settings
from app.db.session import get_engine
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import InvalidSecretError, SecretKeyError, register_endpoint
from app.webhooks.crypto import (
    KEY_FILENAME,
    SecretBox,
    generate_secret,
    get_secret_box,
    load_or_create_key_file,
    validate_secret,
)
from tests.plugins.webhooks import RecordingPublisher


def test_generated_secrets_are_whsec_base64_of_random_bytes() -> None:
    secrets = {generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret[6:], validate=True)) == 32
        assert validate_secret(secret) == secret
    assert len(base64.b64decode(generate_secret(64)[6:])) == 64
    with pytest.raises(InvalidSecretError):
        generate_secret(16)


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(b"x" * 23).decode(),  # too short
        "whsec_" + base64.b64encode(b"x" * 65).decode(),  # too long
        base64.b64encode(b"x" * 32).decode(),  # no prefix
        "whsec_not base64!",
        "",
        None,
        42,
    ],
)
def test_bad_secrets_are_refused_without_being_echoed(secret: object) -> None:
    with pytest.raises(InvalidSecretError) as info:
        validate_secret(secret)
    if isinstance(secret, str) and len(secret) > 10:
        assert secret[6:] not in str(info.value)


def test_boundaries_of_a_valid_secret() -> None:
    for size in (24, 64):
        validate_secret("whsec_" + base64.b64encode(b"k" * size).decode())


def test_box_round_trip_wrong_key_and_rotation() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    secret = generate_secret()
    token = SecretBox([old]).encrypt(secret)
    assert secret not in token and secret[6:] not in token
    assert SecretBox([old]).decrypt(token) == secret
    with pytest.raises(SecretKeyError, match="cannot be decrypted"):
        SecretBox([new]).decrypt(token)
    rotated = SecretBox([new, old])  # the first encrypts, all decrypt
    assert rotated.decrypt(token) == secret
    assert SecretBox([new]).decrypt(rotated.encrypt(secret)) == secret


def test_a_malformed_key_is_refused_without_echoing_it(env: Callable[..., None]) -> None:
    env(AIW_SECRET_KEY="not-a-fernet-key-at-all")
    with pytest.raises(SecretKeyError, match="Fernet key") as info:
        get_secret_box()
    assert "not-a-fernet" not in str(info.value)


def test_the_key_file_is_made_once_with_mode_0600_and_logged(
    env: Callable[..., None], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env(AIW_DATA_DIR=str(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="app.webhooks.crypto"):
        box = get_secret_box()
    path = tmp_path / "data" / KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "AIW_SECRET_KEY is not set" in caplog.text and str(path) in caplog.text
    key = path.read_bytes().strip()
    assert key.decode() not in caplog.text
    token = box.encrypt("whsec_abc")
    get_settings.cache_clear()
    assert SecretBox([key]).decrypt(token) == "whsec_abc"
    assert load_or_create_key_file(path) == key  # read again, not replaced
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILENAME
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        keys.append(load_or_create_key_file(path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and keys[0] == path.read_bytes().strip()


def test_the_database_never_holds_the_secret_in_clear(
    webhook_db: RecordingPublisher, receiver: WebhookReceiver, migrated_sqlite_url: str
) -> None:
    endpoint, secret = register_endpoint(receiver.url, ["ai_request.succeeded"])
    given = "whsec_" + base64.b64encode(b"s" * 40).decode()
    _other, returned = register_endpoint(receiver.url, secret=given)
    assert returned == given
    with get_engine().connect() as conn:
        query = text("SELECT id, secret_encrypted FROM webhook_endpoints")
        stored = dict(conn.execute(query).all())
    assert len(stored) == 2
    for value in stored.values():
        assert value.startswith("gAAAA")  # a Fernet token
    for plain in (secret, given):
        raw = plain[6:]
        assert all(plain not in v and raw not in v for v in stored.values())
    box = get_secret_box()
    assert {box.decrypt(v) for v in stored.values()} == {secret, given}
    # Not in the file either (WAL included), in any form we know.
    db_file = Path(migrated_sqlite_url.removeprefix("sqlite:///"))
    blob = b"".join(p.read_bytes() for p in db_file.parent.glob(db_file.name + "*"))
    for plain in (secret, given):
        assert plain.encode() not in blob
        assert base64.b64decode(plain[6:]) not in blob
    # The views never carry it.
    assert "secret" not in endpoint.model_dump() and secret not in repr(endpoint)
