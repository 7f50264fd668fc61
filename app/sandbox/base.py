"""What the fake servers share: a threaded HTTP server on loopback, recorded
requests, and scripted or random faults.

A fake is a real HTTP server (``http.server.ThreadingHTTPServer``) on a port of
127.0.0.1, so the code under test goes through its real HTTP client, sockets,
timeouts and all. Faults are switched on from the test:

    srv.faults.push(Fault.rate_limit(retry_after=2), times=3)   # next 3 requests
    srv.faults.set_random(0.3, [Fault.status(500), Fault.status(503)], seed=1)
    srv.faults.push(Fault.trickle(3.0))            # the answer, one byte every 3 s
    srv.faults.push(Fault.huge_body(50))           # a 200 with 50 MB of valid-looking JSON
    srv.faults.clear()

``srv.body_bytes_sent`` counts the bytes of answer bodies written to sockets (a client
that stops reading at its cap stops this count near the cap plus the socket buffers).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Fault:
    """One way to answer badly. Build with the class methods."""

    kind: str  # "status" | "slow" | "drop" | "bad_json" | "trickle" | "huge_body"
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    size: int = 0  # huge_body: bytes of the (decoded) body
    chunked: bool = False  # huge_body: Transfer-Encoding: chunked, no Content-Length
    gzip: bool = False  # huge_body: Content-Encoding: gzip (chunked)
    from_start: bool = False  # trickle: the status line and headers too, not only the body

    @classmethod
    def status_code(
        cls, status: int, body: Any = None, headers: dict[str, str] | None = None
    ) -> Fault:
        return cls("status", status=status, body=body, headers=dict(headers or {}))

    @classmethod
    def rate_limit(
        cls,
        retry_after: float | None = None,
        *,
        retry_after_ms: float | None = None,
        http_date: bool = False,
        body: Any = None,
    ) -> Fault:
        """429; with ``Retry-After`` seconds (or an HTTP date), ``retry-after-ms``, or none."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            if http_date:
                headers["Retry-After"] = email.utils.formatdate(
                    time.time() + retry_after, usegmt=True
                )
            else:
                headers["Retry-After"] = f"{retry_after:g}"
        if retry_after_ms is not None:
            headers["retry-after-ms"] = f"{retry_after_ms:g}"
        return cls("status", status=429, body=body, headers=headers)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after ``seconds`` (past the client's timeout)."""
        return cls("slow", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without any answer."""
        return cls("drop")

    @classmethod
    def trickle(cls, seconds: float, *, from_start: bool = False) -> Fault:
        """The normal answer, one byte every ``seconds``: the body (the status line and
        headers at once), or with ``from_start`` everything, from the status line on.
        No single read waits long, so only a deadline on the whole call ends it."""
        return cls("trickle", seconds=seconds, from_start=from_start)

    @classmethod
    def huge_body(
        cls, megabytes: float, *, chunked: bool = False, gzip: bool = False, status: int = 200
    ) -> Fault:
        """A 200 (or ``status``) whose body is ``megabytes`` MB of valid-looking JSON in this
        API's shape (``FakeServer.huge_body_parts``), made as it is sent (the fake holds
        none of it).

        Declared by ``Content-Length``; with ``chunked`` sent in chunks and undeclared;
        with ``gzip`` compressed (a few KB on the wire that inflate to the full size).
        """
        size = int(megabytes * 1_000_000)
        return cls("huge_body", status=status, size=size, chunked=chunked or gzip, gzip=gzip)

    @classmethod
    def bad_json(cls) -> Fault:
        """A 200 with a body that is not JSON."""
        return cls("bad_json", status=200)

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls("status", status=401)


class FaultPlan:
    """Scripted faults (a queue, consumed one per request) and an optional random rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._rate = 0.0
        self._choices: list[Fault] = []
        self._rng = random.Random()
        self.applied: list[Fault] = []

    def push(self, fault: Fault, times: int = 1) -> None:
        with self._lock:
            self._queue.extend([fault] * times)

    def set_random(self, rate: float, choices: Iterable[Fault], seed: int | None = None) -> None:
        with self._lock:
            self._rate = rate
            self._choices = list(choices)
            self._rng = random.Random(seed)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rate = 0.0
            self._choices = []

    def next(self) -> Fault | None:
        with self._lock:
            fault: Fault | None = None
            if self._queue:
                fault = self._queue.popleft()
            elif self._rate and self._choices and self._rng.random() < self._rate:
                fault = self._rng.choice(self._choices)
            if fault is not None:
                self.applied.append(fault)
            return fault


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is when set (bad JSON)


Route = Callable[["Request"], Reply]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any
    raw_body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle and the client's
    # delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read srv.requests instead

    def _handle(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
        )
        fake._record(request)
        if fake.latency:
            time.sleep(fake.latency)
        fault = fake.faults.next() if not request.path.startswith("/_sandbox") else None
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "huge_body":
            self._send_huge(fault)
            return
        trickle: Fault | None = None
        if fault is not None and fault.kind == "trickle":
            trickle, fault = fault, None
        if fault is not None and fault.kind == "bad_json":
            reply = Reply(200, raw=b'{"id": "broken", "choices": [')
        elif fault is not None:
            reply = fake.fault_reply(fault)
        else:
            reply = fake.dispatch(request)
        if trickle is not None:
            self._send_trickled(reply, trickle)
        else:
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = (
            reply.raw
            if reply.raw is not None
            else (b"" if reply.body is None else json.dumps(reply.body).encode())
        )
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.server.fake._count_sent(len(data))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to do

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}".rstrip()]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_trickled(self, reply: Reply, fault: Fault) -> None:
        """``reply``, one byte every ``fault.seconds`` (the head at once unless from_start)."""
        data = (
            reply.raw
            if reply.raw is not None
            else (b"" if reply.body is None else json.dumps(reply.body).encode())
        )
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)),
                   **reply.headers, "Connection": "close"}
        head = self._head(reply.status, headers)
        self.close_connection = True
        fake = self.server.fake
        try:
            if not fault.from_start:
                self.wfile.write(head)
            slow = head + data if fault.from_start else data
            for i in range(len(slow)):
                time.sleep(fault.seconds)
                self.wfile.write(slow[i : i + 1])
                if not fault.from_start or i >= len(head):
                    fake._count_sent(1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its deadline)

    def _send_huge(self, fault: Fault) -> None:
        """A ``fault.status`` with ``fault.size`` bytes of JSON, written as it is made."""
        fake = self.server.fake
        prefix, suffix = fake.huge_body_parts()
        filler = max(0, fault.size - len(prefix) - len(suffix))
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if fault.gzip:
            headers["Content-Encoding"] = "gzip"
        if fault.chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(len(prefix) + filler + len(suffix))
        self.close_connection = True

        def pieces() -> Iterator[bytes]:
            yield prefix
            block = b"x" * 65536
            left = filler
            while left > 0:
                yield block[: min(left, len(block))]
                left -= min(left, len(block))
            yield suffix

        def encoded() -> Iterator[bytes]:
            if not fault.gzip:
                yield from pieces()
                return
            deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
            for piece in pieces():
                out = deflater.compress(piece)
                if out:
                    yield out
            yield deflater.flush()

        try:
            self.wfile.write(self._head(fault.status, headers))
            for piece in encoded():
                if not piece:
                    continue
                if fault.chunked:
                    self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    self.wfile.write(piece)
                fake._count_sent(len(piece))
            if fault.chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (its cap)

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # many concurrent clients (benchmarks at concurrency 200)
    fake: FakeServer


class FakeServer:
    """Base of the fakes: start/stop, request log, faults. Subclasses implement ``dispatch``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self.faults = FaultPlan()
        self.requests: list[RecordedRequest] = []
        #: Bytes of answer bodies written to sockets so far (as sent: compressed if so).
        self.body_bytes_sent = 0
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeServer:
        server = _Server((self.host, self.port), _Handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"{type(self).__name__}:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # recording -----------------------------------------------------------------------
    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    request.query,
                    request.headers,
                    request.body,
                    time.time(),
                )
            )

    def _count_sent(self, n: int) -> None:
        with self._lock:
            self.body_bytes_sent += n

    def request_count(self, path_contains: str | None = None, method: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (path_contains is None or path_contains in r.path)
                and (method is None or r.method == method)
            )

    # to implement ----------------------------------------------------------------------
    def dispatch(self, request: Request) -> Reply:
        raise NotImplementedError

    def huge_body_parts(self) -> tuple[bytes, bytes]:
        """What a ``huge_body`` answer starts and ends with; the middle is ``x`` repeated,
        so the whole is one valid JSON object. Subclasses give their API's shape."""
        return b'{"data": "', b'"}'

    def fault_reply(self, fault: Fault) -> Reply:
        """The body of a status fault in this API's error shape."""
        return Reply(
            fault.status, fault.body or {"message": f"fault {fault.status}"}, dict(fault.headers)
        )
