"""Signing secrets: made, checked, and stored encrypted (never in clear).

A signing secret is ``whsec_`` + base64 of 24..64 random bytes (Standard
Webhooks). It is shown once, when the endpoint is registered; the database
keeps only a Fernet token of it (AES-128-CBC + HMAC-SHA256, ``cryptography``).

The encryption key comes from ``AIW_SECRET_KEY``: one Fernet key (32 url-safe
base64 bytes), or several separated by commas to rotate keys (the first one
encrypts, all of them decrypt). Make one with::

    python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"

When ``AIW_SECRET_KEY`` is unset (embedded mode), a key is generated once into
``<AIW_DATA_DIR>/secret.key`` (mode 0600) and read from there afterwards; a
log line says so. Every process that signs deliveries must see the same key:
with several machines, set ``AIW_SECRET_KEY`` on all of them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.webhooks.errors import InvalidSecretError, SecretKeyError

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
DEFAULT_SECRET_BYTES = 32
KEY_FILENAME = "secret.key"
_KEY_HELP = (
    'make one with: python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"'
)


def generate_secret(nbytes: int = DEFAULT_SECRET_BYTES) -> str:
    """A new signing secret: ``whsec_`` + base64 of ``nbytes`` random bytes."""
    if not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise InvalidSecretError(f"a secret has {MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def validate_secret(secret: object) -> str:
    """Check a secret given by the user; returns it unchanged. Never echoes it."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise InvalidSecretError(
            f"a webhook secret must be a string '{SECRET_PREFIX}' + base64 of "
            f"{MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} random bytes (leave it out to get one)"
        )
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecretError(
            f"the part after '{SECRET_PREFIX}' of a webhook secret must be standard base64"
        ) from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise InvalidSecretError(
            f"a webhook secret must encode {MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} bytes, "
            f"this one has {len(raw)}"
        )
    return secret


class SecretBox:
    """Encrypts and decrypts stored secrets with the configured key(s)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("no encryption key")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, binascii.Error):
            raise SecretKeyError(
                "AIW_SECRET_KEY: each key must be 32 url-safe base64-encoded bytes "
                f"(a Fernet key); {_KEY_HELP}"
            ) from None

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                "a stored webhook secret cannot be decrypted with the current key: was "
                "AIW_SECRET_KEY (or AIW_DATA_DIR/secret.key) changed, or does this process "
                "see another key than the one that registered the endpoint?"
            ) from None


_boxes: dict[tuple[str | None, str], SecretBox] = {}
_boxes_lock = threading.Lock()


def get_secret_box(settings: Settings | None = None) -> SecretBox:
    """The box for the configured key, made once per key (and key file)."""
    if settings is None:
        from app.config import get_settings

        settings = get_settings()
    configured = (
        settings.aiw_secret_key.get_secret_value() if settings.aiw_secret_key is not None else None
    )
    key_path = settings.aiw_data_dir.expanduser().resolve() / KEY_FILENAME
    cache_key = (configured, str(key_path))
    with _boxes_lock:
        box = _boxes.get(cache_key)
        if box is None:
            if configured is not None:
                keys = [k.strip().encode("ascii") for k in configured.split(",") if k.strip()]
            else:
                keys = [load_or_create_key_file(key_path)]
            box = _boxes[cache_key] = SecretBox(keys)
        return box


def load_or_create_key_file(path: Path) -> bytes:
    """Read the key file, or create it (0600) if missing. Safe against concurrent
    creators: the key is written to a private temporary file and hard-linked into
    place, so a reader sees either no file or a whole key."""
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, Fernet.generate_key() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    else:
        log.warning(
            "AIW_SECRET_KEY is not set: generated a new key for webhook secrets in %s "
            "(mode 0600, embedded mode). Keep this file; with several machines set "
            "AIW_SECRET_KEY on every process instead",
            path,
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    data = path.read_bytes().strip()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by other users (mode %o): chmod 600 it", path, mode)
    if not data:
        raise SecretKeyError(f"{path} is empty; delete it to have a new key generated")
    return data


def key_warning(settings: Settings) -> str | None:
    """A warning when ``AIW_SECRET_KEY`` is unset with a shared database: each process
    with its own ``AIW_DATA_DIR`` (each container) would make a key file of its own, and
    an endpoint registered by one could not be delivered by another (processes sharing
    the data directory, as ``aiw up``'s do, share the key file and are fine)."""
    from app.db.session import database_url

    if settings.aiw_secret_key is not None or database_url(settings).startswith("sqlite"):
        return None
    key_path = settings.aiw_data_dir.expanduser().resolve() / KEY_FILENAME
    return (
        "AIW_SECRET_KEY is not set while the database is shared: a process with another "
        f"data directory than {key_path.parent} (another container) makes a key of its own "
        f"and cannot use the webhook secrets registered here; set AIW_SECRET_KEY ({_KEY_HELP})"
    )


def key_problems(settings: Settings) -> list[str]:
    """What is wrong with the key of the webhook secrets, in words (nothing is created):
    stored secrets of enabled endpoints that the key this process has cannot decrypt
    (the key changed, or this process sees another one), so their deliveries fail."""
    from sqlalchemy import select

    from app.db.session import database_url, session_scope
    from app.db.webhook_models import WebhookEndpointRow

    problems: list[str] = []
    configured = settings.aiw_secret_key
    key_path = settings.aiw_data_dir.expanduser().resolve() / KEY_FILENAME
    with session_scope(database_url(settings)) as session:
        stored = list(
            session.scalars(
                select(WebhookEndpointRow.secret_encrypted)
                .where(WebhookEndpointRow.enabled.is_(True))
                .limit(200)
            )
        )
    if not stored:
        return problems
    try:
        if configured is not None:
            keys = [k.strip().encode("ascii") for k in configured.get_secret_value().split(",")]
            box = SecretBox([k for k in keys if k])
        elif key_path.exists():
            box = SecretBox([_read_key_file(key_path)])
        else:
            problems.append(
                f"{len(stored)} webhook endpoint(s) have secrets but this process has no key "
                f"(AIW_SECRET_KEY unset, no {key_path}): their deliveries would fail"
            )
            return problems
    except SecretKeyError as exc:
        return [*problems, str(exc)]
    failing = 0
    for token in stored:
        try:
            box.decrypt(token)
        except SecretKeyError:
            failing += 1
    if failing:
        problems.append(
            f"{failing} of {len(stored)} enabled webhook endpoint(s) have secrets the current "
            "key cannot decrypt: their deliveries fail; use the key that registered them "
            "(AIW_SECRET_KEY, or the same AIW_DATA_DIR/secret.key) or register them again"
        )
    return problems
