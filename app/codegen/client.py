"""A small, strict REST client for the Codegen agent API (one try per call, no retry).

    client = CodegenClient(org_id=42, token="...")
    run = client.create_run("Fix the flaky test in tests/test_io.py", repo_id=7)
    run = client.get_run(run.id)          # AgentRun, status verbatim ("PENDING", ...)
    for run in client.iter_runs(): ...    # every run, newest first, 100 a request
    client.find_repo_id("octo/shop")      # repo_id of a repository (cached map)

What it guarantees:

- Bad input is refused before any network call with ``InvalidRequestError`` (empty
  prompt, ``limit`` outside 1..100, unknown ``agent_type``, non-integer ids, ...).
- Every failure is an ``app.core.errors`` error with ``provider_name="codegen"``: an
  HTTP status goes through ``error_for_status`` (402 quota, 401/403 authentication,
  404 not found, 422 bad request, 429 rate limit, 5xx server); a timeout is
  ``ProviderTimeoutError``, a refused/reset connection ``ProviderConnectionError``, a
  2xx body that is not JSON or not the documented shape ``ProviderResponseError``.
  ``retry_after`` is the server's ``Retry-After`` when it sends one (Codegen
  documents none, so it is usually ``None``).
- ``timeout`` (``CODEGEN_TIMEOUT``) bounds each call in all, connect to last byte: a
  server that trickles its answer is cut off at the deadline (``app.codegen.transport``).
  A body is streamed and read up to ``max_answer_bytes`` (``AIW_MAX_ANSWER_BYTES``): a 2xx
  past it fails with ``AnswerTooLargeError`` (not retried), an error body is cut there.
- Retrying is the caller's business (``RetryPolicy``, ``Task.wait_for_completion``,
  the Celery task): creating a run is not idempotent, so this client never repeats
  a request by itself.
- One pooled ``requests.Session`` (connection pool sized for many threads) serves
  every call; the client may be shared between threads.
- With a ``limiter`` (``app.core.budget.CodegenLimiter``), every HTTP request first
  calls ``limiter.before_request(kind)`` (``"create"`` for a new run, ``"standard"``
  for the rest), and a 429 answer calls ``limiter.rate_limited(kind, retry_after)``.
  ``Agent`` gives its client the blocking limiter of the shared budget; a client made
  without one (the workers' gateway, which pays for its requests itself) is charged
  nothing.
- The token appears in no ``repr``, no error and no log line.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, SecretStr, ValidationError

from app.codegen.checks import AGENT_TYPES as AGENT_TYPES  # re-exported
from app.codegen.checks import MAX_PAGE_SIZE as MAX_PAGE_SIZE
from app.codegen.checks import (
    check_agent_type,
    check_id,
    check_images,
    check_metadata,
    check_model,
    check_page,
    check_prompt,
)
from app.codegen.models import (
    AgentRun,
    AgentRunLog,
    AgentRunLogs,
    AgentRunPage,
    Repo,
    RepoPage,
)
from app.codegen.repos import RepoResolver
from app.codegen.transport import CallGuard, GuardedAdapter
from app.core.budget import CodegenLimiter, RequestKind, codegen_digest
from app.core.errors import (
    AIProviderError,
    InvalidRequestError,
    ProviderConnectionError,
    ProviderNotConfiguredError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderTimeoutError,
    error_for_status,
)
from app.core.retry import parse_retry_after
from app.core.transfer import DEFAULT_MAX_ANSWER_BYTES, Deadline, answer_too_large, declared_length

log = logging.getLogger(__name__)

PROVIDER_NAME = "codegen"
DEFAULT_BASE_URL = "https://api.codegen.com"
DEFAULT_TIMEOUT = 30.0
#: Connections kept per host: enough for a worker process with many threads.
DEFAULT_POOL_SIZE = 32
#: Bytes asked of the body at a time (decoded; urllib3 inflates in bounded steps).
_CHUNK_BYTES = 64 * 1024

M = TypeVar("M", bound=BaseModel)


def _error_message(resp: requests.Response, raw: bytes | bytearray) -> str:
    """A short message from an error body (``raw``, as read): Codegen's ``message``, or
    FastAPI's ``detail``."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        if isinstance(detail, list) and detail:
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    where = ".".join(str(part) for part in item.get("loc") or [])
                    parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            if parts:
                return "; ".join(parts)
    text = bytes(raw[:1000]).decode("utf-8", "replace").strip()
    reason = f"HTTP {resp.status_code} {resp.reason or ''}".strip()
    return f"{reason}: {text[:200]}" if text else reason


def make_session(pool_size: int = DEFAULT_POOL_SIZE) -> requests.Session:
    """A ``requests.Session`` with a connection pool of ``pool_size`` and no hidden retries,
    whose connections a call's deadline can cut (``app.codegen.transport``)."""
    session = requests.Session()
    adapter = GuardedAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["Accept"] = "application/json"
    session.headers["User-Agent"] = "ai-worker (codegen client)"
    return session


class CodegenClient:
    """One organization's view of the Codegen agent API. See the module docstring."""

    def __init__(
        self,
        org_id: int,
        token: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        limiter: CodegenLimiter | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        if org_id is None:
            raise ProviderNotConfiguredError(
                "Codegen organization id is missing (CODEGEN_ORG_ID)", provider_name=PROVIDER_NAME
            )
        self.org_id = check_id("org_id", org_id)
        secret = token if isinstance(token, SecretStr) else SecretStr(token or "")
        if not secret.get_secret_value().strip():
            raise ProviderNotConfiguredError(
                "Codegen token is missing (CODEGEN_TOKEN)", provider_name=PROVIDER_NAME
            )
        self._token = secret
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidRequestError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidRequestError(f"timeout must be a positive number, got {timeout!r}")
        self.timeout = float(timeout)
        if (
            isinstance(max_answer_bytes, bool)
            or not isinstance(max_answer_bytes, int)
            or max_answer_bytes <= 0
        ):
            raise InvalidRequestError(
                f"max_answer_bytes must be a positive integer, got {max_answer_bytes!r}"
            )
        #: Bytes of a body read at most (``AIW_MAX_ANSWER_BYTES``).
        self.max_answer_bytes = max_answer_bytes
        self._owns_session = session is None
        self.session = session if session is not None else make_session(pool_size)
        #: Asked before every request (``None``: nothing is charged).
        self.limiter = limiter
        self._repo_resolver: RepoResolver | None = None
        self._resolver_lock = threading.Lock()

    @property
    def budget_digest(self) -> str:
        """``codegen_digest`` of this client's token and organization (not the token)."""
        return codegen_digest(self._token.get_secret_value(), self.org_id)

    # --- agent runs -------------------------------------------------------------------
    def create_run(
        self,
        prompt: str,
        *,
        images: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        repo_id: int | None = None,
        model: str | None = None,
        agent_type: str | None = None,
    ) -> AgentRun:
        """``POST .../agent/run``: start an agent run (Codegen allows 10 a minute)."""
        body: dict[str, Any] = {"prompt": check_prompt(prompt)}
        checked_images = check_images(images)
        if checked_images is not None:
            body["images"] = checked_images
        checked_metadata = check_metadata(metadata)
        if checked_metadata is not None:
            body["metadata"] = checked_metadata
        if repo_id is not None:
            body["repo_id"] = check_id("repo_id", repo_id)
        if model is not None:
            body["model"] = check_model(model)
        if agent_type is not None:
            body["agent_type"] = check_agent_type(agent_type)
        data = self._request(
            "POST", f"{self._org_path}/agent/run", json_body=body, kind="create"
        )
        return self._parse(AgentRun, data)

    def get_run(self, run_id: int) -> AgentRun:
        """``GET .../agent/run/{id}``: the run as it is now."""
        run_id = check_id("run_id", run_id)
        return self._parse(AgentRun, self._request("GET", f"{self._org_path}/agent/run/{run_id}"))

    def list_runs(self, skip: int = 0, limit: int = MAX_PAGE_SIZE) -> AgentRunPage:
        """``GET .../agent/runs``: one page of the organization's runs, newest first."""
        check_page(skip, limit)
        data = self._request(
            "GET", f"{self._org_path}/agent/runs", params={"skip": skip, "limit": limit}
        )
        return self._parse(AgentRunPage, data)

    def iter_runs(self, page_size: int = MAX_PAGE_SIZE) -> Iterator[AgentRun]:
        """Every run of the organization, newest first, ``page_size`` a request.

        Runs created while paging push older ones down a page; a run already yielded
        is not yielded again.
        """
        check_page(0, page_size)
        return self._iter_runs(page_size)

    def _iter_runs(self, page_size: int) -> Iterator[AgentRun]:
        seen: set[int] = set()
        skip = 0
        while True:
            page = self.list_runs(skip=skip, limit=page_size)
            for run in page.items:
                if run.id not in seen:
                    seen.add(run.id)
                    yield run
            skip += len(page.items)
            if len(page.items) < page_size or skip >= page.total:
                return

    def resume_run(
        self, run_id: int, prompt: str, images: Sequence[str] | None = None
    ) -> AgentRun:
        """``POST .../agent/run/resume``: give a paused (or finished) run a new prompt."""
        body: dict[str, Any] = {
            "agent_run_id": check_id("run_id", run_id),
            "prompt": check_prompt(prompt),
        }
        checked_images = check_images(images)
        if checked_images is not None:
            body["images"] = checked_images
        data = self._request("POST", f"{self._org_path}/agent/run/resume", json_body=body)
        return self._parse(AgentRun, data)

    def get_logs(
        self, run_id: int, skip: int = 0, limit: int = MAX_PAGE_SIZE, *, reverse: bool = False
    ) -> AgentRunLogs:
        """``GET /v1/alpha/.../agent/run/{id}/logs``: the run plus one page of its logs.

        Logs come oldest first (``reverse=True``: newest first). The endpoint is ALPHA.
        """
        run_id = check_id("run_id", run_id)
        check_page(skip, limit)
        params: dict[str, Any] = {"skip": skip, "limit": limit}
        if reverse:
            params["reverse"] = "true"
        data = self._request(
            "GET",
            f"/v1/alpha/organizations/{self.org_id}/agent/run/{run_id}/logs",
            params=params,
        )
        return self._parse(AgentRunLogs, data)

    def iter_logs(self, run_id: int, page_size: int = MAX_PAGE_SIZE) -> Iterator[AgentRunLog]:
        """Every log entry of a run, oldest first, ``page_size`` a request."""
        check_id("run_id", run_id)
        check_page(0, page_size)
        return self._iter_logs(run_id, page_size)

    def _iter_logs(self, run_id: int, page_size: int) -> Iterator[AgentRunLog]:
        skip = 0
        while True:
            page = self.get_logs(run_id, skip=skip, limit=page_size)
            yield from page.logs
            skip += len(page.logs)
            if len(page.logs) < page_size or (
                page.total_logs is not None and skip >= page.total_logs
            ):
                return

    # --- repositories -----------------------------------------------------------------
    def list_repos(self, skip: int = 0, limit: int = MAX_PAGE_SIZE) -> RepoPage:
        """``GET .../repos``: one page of the organization's repositories."""
        check_page(skip, limit)
        data = self._request(
            "GET", f"{self._org_path}/repos", params={"skip": skip, "limit": limit}
        )
        return self._parse(RepoPage, data)

    def iter_repos(self, page_size: int = MAX_PAGE_SIZE) -> Iterator[Repo]:
        """Every repository of the organization, ``page_size`` a request."""
        check_page(0, page_size)
        return self._iter_repos(page_size)

    def _iter_repos(self, page_size: int) -> Iterator[Repo]:
        skip = 0
        while True:
            page = self.list_repos(skip=skip, limit=page_size)
            yield from page.items
            skip += len(page.items)
            if len(page.items) < page_size or skip >= page.total:
                return

    @property
    def repo_resolver(self) -> RepoResolver:
        """This client's cached ``owner/repo`` -> ``repo_id`` map (made on first use)."""
        with self._resolver_lock:
            if self._repo_resolver is None:
                self._repo_resolver = RepoResolver(
                    lambda skip, limit: self.list_repos(skip=skip, limit=limit)
                )
            return self._repo_resolver

    def find_repo_id(self, full_name: str) -> int:
        """The ``repo_id`` of ``owner/repo`` (cached a few minutes, see ``app.codegen.repos``).

        ``InvalidRequestError`` if the name is malformed (no request) or the
        organization has no such repository.
        """
        return self.repo_resolver.find_repo_id(full_name)

    # --- plumbing ---------------------------------------------------------------------
    @property
    def _org_path(self) -> str:
        return f"/v1/organizations/{self.org_id}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        kind: RequestKind = "standard",
    ) -> Any:
        """One HTTP call; the decoded JSON body of a 2xx, else an ``AIProviderError``.

        The limiter (if any) is asked first and hears of a 429. The whole call, connect
        to last byte, ends at ``timeout``; the body is read up to ``max_answer_bytes``.
        """
        if self.limiter is not None:
            self.limiter.before_request(kind)
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        started = time.perf_counter()
        deadline = Deadline(self.timeout)
        guard = CallGuard(deadline)
        try:
            with guard:
                resp = self.session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    json=json_body,
                    headers=headers,
                    timeout=deadline.clamp(self.timeout),
                    stream=True,
                )
                with resp:
                    raw = self._read_body(resp, deadline, method, path)
        except requests.RequestException as exc:
            if isinstance(exc, requests.Timeout) or guard.fired or deadline.expired():
                log.debug("codegen %s %s timed out after %.1fs", method, path, self.timeout)
                raise self._timed_out(method, path) from exc
            # ConnectionError (refused, reset, DNS, TLS) and the rarer transport
            # failures (a body cut short): all mean "could not talk to the server".
            log.debug("codegen %s %s failed: %s", method, path, type(exc).__name__)
            raise ProviderConnectionError(
                f"Codegen {method} {path}: {type(exc).__name__}", provider_name=PROVIDER_NAME
            ) from exc
        elapsed = time.perf_counter() - started
        request_id = resp.headers.get("x-request-id")
        log.debug("codegen %s %s -> %d in %.3fs", method, path, resp.status_code, elapsed)
        if not 200 <= resp.status_code < 300:
            error = error_for_status(
                resp.status_code,
                f"Codegen {method} {path}: {_error_message(resp, raw)}",
                provider_name=PROVIDER_NAME,
                request_id=request_id,
                retry_after=parse_retry_after(resp.headers),
            )
            if isinstance(error, ProviderRateLimitError) and self.limiter is not None:
                self.limiter.rate_limited(kind, error.retry_after)
            raise error
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderResponseError(
                f"Codegen {method} {path} answered HTTP {resp.status_code} with a body that "
                "is not JSON",
                provider_name=PROVIDER_NAME,
                status_code=resp.status_code,
                request_id=request_id,
            ) from None

    def _read_body(
        self, resp: requests.Response, deadline: Deadline, method: str, path: str
    ) -> bytearray:
        """The body, streamed: at most ``max_answer_bytes`` of it is ever held.

        A 2xx past the cap (declared or read) raises ``AnswerTooLargeError`` as soon as it
        is known; an error status's body is cut at the cap (its start is the message).
        """
        limit = self.max_answer_bytes
        ok = 200 <= resp.status_code < 300

        def too_large() -> AIProviderError:
            return answer_too_large(
                limit,
                provider_name=PROVIDER_NAME,
                what=f"Codegen's answer to {method} {path}",
                status_code=resp.status_code,
                request_id=resp.headers.get("x-request-id"),
            )

        length = declared_length(resp.headers)
        if ok and length is not None and length > limit:
            raise too_large()
        body = bytearray()
        for chunk in resp.iter_content(_CHUNK_BYTES):
            if deadline.expired():  # the guard cuts the socket; this covers other sessions
                raise self._timed_out(method, path)
            room = limit - len(body)
            if len(chunk) > room:
                if ok:
                    raise too_large()
                body += chunk[:room]
                break
            body += chunk
        return body

    def _timed_out(self, method: str, path: str) -> ProviderTimeoutError:
        return ProviderTimeoutError(
            f"Codegen {method} {path} got no complete answer within {self.timeout:g}s "
            "(CODEGEN_TIMEOUT, the whole call)",
            timeout_duration=self.timeout,
            provider_name=PROVIDER_NAME,
        )

    @staticmethod
    def _parse(model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ProviderResponseError(
                f"Codegen answered a body that is not a {model.__name__}: "
                f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}",
                provider_name=PROVIDER_NAME,
            ) from None

    # --- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection pool (only if this client made it)."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> CodegenClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CodegenClient org_id={self.org_id} base_url={self.base_url!r}>"

