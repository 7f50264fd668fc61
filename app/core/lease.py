"""Short leases shared by every worker: "one of us at a time does this".

A lease is a Redis key (``REDIS_URL``, else a ``redis://`` broker) holding its
owner's token, with a TTL: ``acquire`` sets it only if absent (``SET NX PX``),
``renew`` and ``release`` act only if the key still holds the caller's token (a Lua
compare-and-set, so a lease that expired and was taken by another is never touched).
A holder that dies lets its lease expire. Without Redis (embedded mode: one worker
process) leases live in the process.

Keys: ``aiw:lease:<name>``. Used by the agent run poller
(``aiw:lease:agent-poll:<credential digest>``): one poll round at a time, so rounds
do not split the Codegen budget between them and re-read the same pages.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from app.core import keys
from app.core.keys import redis_client, redis_url_for

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = keys.LEASE

#: KEYS[1] the lease; ARGV: token, ttl (ms; 0 = release). 1 if the caller holds it.
_RENEW_OR_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""


class Leases(Protocol):
    def acquire(self, name: str, token: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``ttl`` seconds if nobody holds it."""

    def renew(self, name: str, token: str, ttl: float) -> bool:
        """Extend it to ``ttl`` seconds from now, if ``token`` still holds it."""

    def release(self, name: str, token: str) -> None:
        """Give it back, if ``token`` still holds it."""


class RedisLeases:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._script = client.register_script(_RENEW_OR_RELEASE)

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        import redis

        try:
            return bool(self._client.set(KEY_PREFIX + name, token, nx=True, px=_ms(ttl)))
        except redis.RedisError as exc:
            log.warning("lease %s: store unreachable (%s)", name, type(exc).__name__)
            return False

    def renew(self, name: str, token: str, ttl: float) -> bool:
        return self._call(name, token, _ms(ttl))

    def release(self, name: str, token: str) -> None:
        self._call(name, token, 0)

    def _call(self, name: str, token: str, ttl_ms: int) -> bool:
        import redis

        try:
            return bool(self._script(keys=[KEY_PREFIX + name], args=[token, ttl_ms]))
        except redis.RedisError as exc:
            log.warning("lease %s: store unreachable (%s)", name, type(exc).__name__)
            return False


class MemoryLeases:
    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            held = self._held.get(name)
            if held is not None and held[1] > now:
                return False
            self._held[name] = (token, now + ttl)
            return True

    def renew(self, name: str, token: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            held = self._held.get(name)
            if held is None or held[0] != token or held[1] <= now:
                return False
            self._held[name] = (token, now + ttl)
            return True

    def release(self, name: str, token: str) -> None:
        with self._lock:
            held = self._held.get(name)
            if held is not None and held[0] == token:
                del self._held[name]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


_stores: dict[str | None, Leases] = {}
_stores_lock = threading.Lock()


def get_leases(settings: Settings) -> Leases:
    url = redis_url_for(settings)
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            if url:
                client = redis_client(url, settings)
                store = RedisLeases(client)
            else:
                store = MemoryLeases()
            _stores[url] = store
        return store


def reset_leases() -> None:
    """Forget the stores (and every in-process lease): tests, after a fork."""
    with _stores_lock:
        _stores.clear()
