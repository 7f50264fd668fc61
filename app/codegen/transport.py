"""The Codegen client's HTTP plumbing: a total deadline per call that no server can stretch.

``requests``' timeouts are per socket operation (the connect, then each read), and a read
that gets one byte starts again: a server sending one byte every few seconds holds a
call forever, and ``iter_content`` blocks until a whole chunk has come. ``CallGuard`` gives
one call its ``Deadline`` with a timer: when it fires, it shuts down the socket the call
is using, so whatever read the call is blocked in ends at once, in the status line, the
headers or the body. The call then fails with a ``requests`` connection error, which
``CodegenClient`` reports as ``ProviderTimeoutError`` because the guard says it fired.
Before that, the connect is bounded by the time left (its own timeout).

The guard learns the socket from the connection: a session made with ``GuardedAdapter``
uses urllib3 connection classes that hand their socket to the guard of the call running
in their thread (a context variable) once connected and before they wait for an answer.
A session of the caller's own (``CodegenClient(session=...)``) has per-operation timeouts
only, plus the client's check of the deadline between chunks.

Shutting down a socket that has just gone back to the pool (the timer firing as the last
byte arrives) is harmless: urllib3 checks an idle connection before reusing it and opens
a new one when it is closed. One timer thread per call is cheap at Codegen's request
rate (the shared budget allows 60 requests per 30 s per token).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from contextvars import ContextVar, Token
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager
from urllib3.response import HTTPResponse

from app.core.transfer import Deadline

_active: ContextVar[CallGuard | None] = ContextVar("aiw_codegen_call_guard", default=None)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: nothing left to interrupt
        sock.shutdown(socket.SHUT_RDWR)


class CallGuard:
    """One HTTP call's deadline; ``with CallGuard(deadline) as guard:`` around the call.

    At the deadline the socket the call uses (handed over by the guarded connections)
    is shut down; ``fired`` then says the call's failure is the deadline's doing.
    """

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._fired = False
        self._timer: threading.Timer | None = None
        self._token: Token[CallGuard | None] | None = None

    @property
    def fired(self) -> bool:
        """True once the deadline has passed during the call."""
        with self._lock:
            return self._fired

    def __enter__(self) -> CallGuard:
        self._token = _active.set(self)
        timer = threading.Timer(max(0.0, self.deadline.remaining()), self._fire)
        timer.daemon = True
        timer.name = "aiw-codegen-deadline"
        timer.start()
        self._timer = timer
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._token is not None:
            _active.reset(self._token)

    def watch(self, sock: socket.socket | None) -> None:
        """The call now uses ``sock``: shut it down at the deadline (at once if past)."""
        if sock is None:
            return
        with self._lock:
            self._sock = sock
            fired = self._fired
        if fired:
            _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            sock = self._sock
        if sock is not None:
            _shut(sock)


def _watch(sock: socket.socket | None) -> None:
    guard = _active.get()
    if guard is not None:
        guard.watch(sock)


class _GuardedHTTPConnection(HTTPConnection):
    """An urllib3 connection that hands its socket to the call's guard."""

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]  # as urllib3's own
        _watch(self.sock)  # a pooled connection: connect() is not called again
        return super().getresponse()


class _GuardedHTTPSConnection(HTTPSConnection):
    """The same, over TLS."""

    def connect(self) -> None:
        super().connect()
        _watch(self.sock)

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]  # as urllib3's own
        _watch(self.sock)
        return super().getresponse()


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def _guarded_pools() -> dict[str, type[HTTPConnectionPool]]:
    return {"http": _GuardedHTTPConnectionPool, "https": _GuardedHTTPSConnectionPool}


class GuardedAdapter(HTTPAdapter):
    """``requests``' adapter whose connections (direct or through an HTTP proxy) let a
    ``CallGuard`` cut them at the deadline. SOCKS proxies keep their own connections."""

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pools()

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = _guarded_pools()
        return manager
