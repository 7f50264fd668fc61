"""Provider cooldowns shared by every worker.

A 429 puts a provider (and the key it was called with) into a cooldown that
lasts until its Retry-After. Every worker reads it before calling and defers
instead of calling, so many workers do not storm a provider that said "wait".

Kept in Redis (``REDIS_URL``, else a ``redis://`` broker URL) as keys with a
TTL: ``aiw:cooldown:<provider>:<key digest>``. Without Redis (the embedded
mode) the cooldown lives in this process only.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Protocol

from app.core import keys
from app.core.keys import redis_client, redis_url_for

if TYPE_CHECKING:
    from app.config import Settings

KEY_PREFIX = keys.COOLDOWN


def credential_digest(settings: Settings, provider: str) -> str:
    """A short digest naming which key a cooldown is for; not reversible, never the key."""
    if provider == "openai" and settings.openai_api_key is not None:
        secret = settings.openai_api_key.get_secret_value() + (settings.openai_base_url or "")
    elif provider == "codegen" and settings.codegen_token is not None:
        secret = settings.codegen_token.get_secret_value() + str(settings.codegen_org_id)
    else:
        secret = ""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


class CooldownStore(Protocol):
    def start(self, name: str, seconds: float) -> None: ...

    def remaining(self, name: str) -> float: ...


#: Seconds an answer of Redis is reused by this process: a 429 met by another worker
#: is seen here within this time (one in this process, at once). It spares every call a
#: round trip to Redis.
LOCAL_TTL = 0.25


class RedisCooldowns:
    def __init__(self, url: str, settings: Settings) -> None:
        self._redis = redis_client(url, settings)
        self._seen: dict[str, tuple[float, float]] = {}  # name -> (valid until, cool until)
        self._lock = threading.Lock()

    def start(self, name: str, seconds: float) -> None:
        ms = max(1, int(seconds * 1000))
        key = KEY_PREFIX + name
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(key, b"1", px=ms, nx=True)
        pipe.pexpire(key, ms, gt=True)  # only ever lengthen a cooldown, never shorten it
        pipe.execute()
        now = time.monotonic()
        with self._lock:
            until = max(self._seen.get(name, (0.0, 0.0))[1], now + seconds)
            self._seen[name] = (now + LOCAL_TTL, until)

    def remaining(self, name: str) -> float:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(name)
        if seen is not None and seen[0] > now:
            return max(0.0, seen[1] - now)
        ttl = int(self._redis.pttl(KEY_PREFIX + name))
        until = now + ttl / 1000.0 if ttl > 0 else now
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[name] = (now + LOCAL_TTL, until)
        return max(0.0, until - now)


class MemoryCooldowns:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def start(self, name: str, seconds: float) -> None:
        with self._lock:
            self._until[name] = max(self._until.get(name, 0.0), time.monotonic() + seconds)

    def remaining(self, name: str) -> float:
        with self._lock:
            return max(0.0, self._until.get(name, 0.0) - time.monotonic())


_stores: dict[str | None, CooldownStore] = {}
_stores_lock = threading.Lock()


def get_cooldowns(settings: Settings) -> CooldownStore:
    url = redis_url_for(settings)
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = RedisCooldowns(url, settings) if url else MemoryCooldowns()
            _stores[url] = store
        return store


def reset_cooldowns() -> None:
    """Forget the stores (and so every in-process cooldown): after fork, and in tests."""
    with _stores_lock:
        _stores.clear()
