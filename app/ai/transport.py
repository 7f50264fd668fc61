"""The HTTP client under the OpenAI SDK: a total deadline per call, a cap on the answer.

``make_http_client(...)`` is the HTTP client handed to ``openai.OpenAI(http_client=...)``: an
``httpx2.Client`` under openai 3.x, an ``httpx.Client`` (the same API) under openai 1.x,
whichever the installed SDK uses
(one per provider instance, so one connection pool per process, as before). Its
transport, ``GuardedTransport`` (an ``httpx2.HTTPTransport``), adds the two limits of
``app.core.transfer``:

- **A total deadline.** httpx2's timeouts are per socket operation (pydantic/httpx2#557):
  each read may take ``timeout`` seconds, so one byte every few seconds never trips them.
  Each request gets a ``Deadline`` (kept in its extensions, so a redirect spends the same
  one), and the connection pool's network backend is wrapped so that every connect, TLS
  handshake and read waits at most for the time left (and every write starts with at
  most the time left: the request is small). Past it the operation fails
  as httpx2's timeout of the same kind (``ConnectTimeout``, ``ReadTimeout``,
  ``WriteTimeout``), which the SDK raises as ``APITimeoutError`` and ``map_openai_error``
  turns into ``ProviderTimeoutError``. This holds in every phase: a server trickling its
  status line and headers is cut off as exactly as one trickling its body.
- **A cap on the answer.** The body is counted as it streams in: a 2xx whose
  ``Content-Length`` or bytes read pass the cap fails with ``AnswerTooLargeError`` (it
  goes through the SDK as it is, not wrapped); an error status's body is cut at the cap.
  Requests ask for ``Accept-Encoding: gzip`` only and gzip is inflated here, by a bounded
  inflater that also stops at the cap, so a small compressed body cannot grow past it in
  memory; an answer in another encoding is a ``ProviderResponseError``.

httpx2 gives ``HTTPTransport`` no public way to choose its network backend, so
``GuardedTransport`` wraps the one its connection pool keeps (``_pool._network_backend``,
the same attribute on every httpcore2 pool, proxies included). Should a new httpx2 move
it, the transport logs a warning and falls back to checking the deadline between body
chunks (a call may then last up to one per-operation timeout past the deadline); the
tests of the header trickle pin the exact behaviour.

A custom transport switches off httpx2's environment proxies; ``environment_proxy``
looks up the one for the base URL (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, not under
``NO_PROXY``), so the SDK's default behaviour is kept.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from openai import _base_client as _sdk

# The HTTP library is the SDK's own: httpx2 under openai 3.x, httpx (same API) under
# openai 1.x (what graph-sitter installs). mypy checks against httpx2.
if TYPE_CHECKING or hasattr(_sdk, "httpx2"):
    import httpcore2 as httpcore
    import httpx2 as httpx
else:  # pragma: no cover - openai 1.x
    import httpcore  # type: ignore[no-redef]
    import httpx  # type: ignore[no-redef]

from app.core.errors import AIProviderError, ProviderResponseError
from app.core.transfer import Deadline, answer_too_large, declared_length

log = logging.getLogger(__name__)

#: The HTTP response class of the SDK's library (a ``cast_to`` that makes the SDK hand
#: back the response itself, unparsed).
Response = httpx.Response

#: The openai SDK's own connection limits (``openai._constants.DEFAULT_CONNECTION_LIMITS``).
CONNECTION_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
#: Where a request's deadline travels (a redirect copies the extensions).
DEADLINE_EXTENSION = "aiw.deadline"

# The deadline of the request this thread is sending or reading, for the network backend.
_active: ContextVar[Deadline | None] = ContextVar("aiw_http_deadline", default=None)


def _clamp(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` cut to the active deadline; ``expired`` raised once it has passed."""
    deadline = _active.get()
    if deadline is None:
        return timeout
    remaining = deadline.remaining()
    if remaining <= 0:
        raise expired(f"the total deadline of {deadline.seconds:g}s has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection's stream whose every operation waits at most for the time left."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(
            ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """The pool's network backend, with connects bounded and streams wrapped."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, _clamp(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _wrap_network_backend(transport: httpx.HTTPTransport) -> bool:
    """Put ``_DeadlineBackend`` under the transport's pool; False if httpx2 changed."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        log.warning(
            "httpx2's connection pool keeps no network backend where expected: the total"
            " deadline of OpenAI calls is checked between body chunks only"
        )
        return False
    if not isinstance(backend, _DeadlineBackend):
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return True


class _GuardedBody(httpx.SyncByteStream):
    """The response body, read under the deadline, inflated (gzip) and capped."""

    def __init__(
        self,
        inner: httpx.SyncByteStream,
        *,
        deadline: Deadline,
        limit: int,
        strict: bool,
        inflate: bool,
        too_large: Callable[[], AIProviderError],
        corrupt: Callable[[], AIProviderError],
    ) -> None:
        self._inner = inner
        self._deadline = deadline
        self._limit = limit
        self._strict = strict
        self._inflate = inflate
        self._too_large = too_large
        self._corrupt = corrupt

    def __iter__(self) -> Iterator[bytes]:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16) if self._inflate else None
        chunks = iter(self._inner)
        size = 0
        while True:
            token = _active.set(self._deadline)
            try:
                raw = next(chunks, None)
            finally:
                _active.reset(token)
            if raw is None:
                break
            if self._deadline.expired():  # the backend bounds each read; this is a backstop
                raise httpx.ReadTimeout(
                    f"the total deadline of {self._deadline.seconds:g}s has passed"
                )
            room = self._limit - size
            if inflater is None:
                data = raw
            else:
                try:
                    # At most room + 1 bytes come out: one more than fits means "over".
                    data = inflater.decompress(raw, room + 1)
                except zlib.error:
                    raise self._corrupt() from None
            if len(data) > room:
                if self._strict:
                    raise self._too_large()
                yield data[:room]  # an error status: its first bytes are enough
                return
            size += len(data)
            if data:
                yield data

    def close(self) -> None:
        self._inner.close()


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` with a total deadline per request and a cap on answers.

    ``timeout``: seconds a request may take in all (redirects included);
    ``max_answer_bytes``: the cap; ``provider_name``: named in the errors. The other
    keyword arguments are ``HTTPTransport``'s.
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_answer_bytes: int,
        provider_name: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self.provider_name = provider_name
        #: True when every socket operation is bounded by the deadline (see the module).
        self.exact_deadline = _wrap_network_backend(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = request.extensions.get(DEADLINE_EXTENSION)
        if not isinstance(deadline, Deadline):
            deadline = Deadline(self.timeout)
        if deadline.expired():  # a redirect after the deadline
            raise httpx.ConnectTimeout(
                f"the total deadline of {deadline.seconds:g}s has passed", request=request
            )
        timeouts = request.extensions.get("timeout") or {}
        request.extensions = {
            **request.extensions,
            DEADLINE_EXTENSION: deadline,
            # The pool wait too (and every operation, should the backend not be wrapped).
            "timeout": {name: deadline.clamp(value) for name, value in timeouts.items()},
        }
        request.headers["Accept-Encoding"] = "gzip"
        token = _active.set(deadline)
        try:
            response = super().handle_request(request)
        finally:
            _active.reset(token)
        return self._guard(response, deadline)

    def _guard(self, response: httpx.Response, deadline: Deadline) -> httpx.Response:
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        status = response.status_code
        request_id = response.headers.get("x-request-id")
        encoding = (response.headers.get("content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            stream.close()
            raise ProviderResponseError(
                f"the answer came encoded as {encoding!r}; only gzip was accepted",
                provider_name=self.provider_name,
                status_code=status,
                request_id=request_id,
            )
        ok = response.is_success

        def too_large() -> AIProviderError:
            return answer_too_large(
                self.max_answer_bytes,
                provider_name=self.provider_name,
                status_code=status,
                request_id=request_id,
            )

        def corrupt() -> AIProviderError:
            return ProviderResponseError(
                "the answer is not valid gzip",
                provider_name=self.provider_name,
                status_code=status,
                request_id=request_id,
            )

        length = declared_length(response.headers)
        if ok and length is not None and length > self.max_answer_bytes:
            stream.close()
            raise too_large()
        inflate = encoding == "gzip"
        if inflate:  # inflated here: what the client sees is plain
            del response.headers["content-encoding"]
            response.headers.pop("content-length", None)
        response.stream = _GuardedBody(
            stream,
            deadline=deadline,
            limit=self.max_answer_bytes,
            strict=ok,
            inflate=inflate,
            too_large=too_large,
            corrupt=corrupt,
        )
        return response


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (as httpx2's default client reads it).

    ``HTTPS_PROXY`` / ``HTTP_PROXY`` by the URL's scheme, else ``ALL_PROXY``; ``None``
    when none is set or the host is under ``NO_PROXY``.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    proxies = urllib.request.getproxies_environment()
    if not host or urllib.request.proxy_bypass(host):  # NO_PROXY
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


class _Client(httpx.Client):
    """Closes its connections when it is garbage-collected, as the SDK's own default
    client does (a provider dropped without ``close()`` leaks no socket)."""

    def __del__(self) -> None:
        if not self.is_closed:
            with contextlib.suppress(Exception):  # interpreter shutdown: nothing to do
                self.close()


def make_http_client(
    *,
    base_url: str,
    timeout: float,
    max_answer_bytes: int,
    provider_name: str = "openai",
) -> httpx.Client:
    """The ``httpx.Client`` for the SDK: the SDK's defaults (connection limits, redirects
    followed, ``timeout`` per operation) over a ``GuardedTransport`` (``timeout`` in all)."""
    transport = GuardedTransport(
        timeout=timeout,
        max_answer_bytes=max_answer_bytes,
        provider_name=provider_name,
        limits=CONNECTION_LIMITS,
        proxy=environment_proxy(base_url),
    )
    return _Client(transport=transport, timeout=httpx.Timeout(timeout), follow_redirects=True)
