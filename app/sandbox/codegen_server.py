"""A fake Codegen API: a real HTTP server that answers like ``api.codegen.com``.

Point ``CodegenClient`` / ``Agent`` (or ``CODEGEN_BASE_URL``) at ``srv.url``::

    with FakeCodegenServer() as srv:
        agent = Agent(org_id=srv.org_id, token=srv.token, base_url=srv.url)
        task = agent.run("Fix the bug").wait_for_completion(timeout=5, poll_interval=0.05)
        # PENDING (0.2 s) -> ACTIVE (0.5 s) -> COMPLETE, with result, summary and a PR

It follows ``shared/reference/codegen-openapi3.json`` and EXTERNAL.md:

- ``POST /v1/organizations/{org_id}/agent/run`` (``CreateAgentRunInput``),
  ``GET .../agent/run/{id}``, ``GET .../agent/runs?skip=&limit=`` (newest first,
  ``{items, total, page, size, pages}``), ``POST .../agent/run/resume`` and
  ``GET /v1/alpha/organizations/{org_id}/agent/run/{id}/logs?skip=&limit=&reverse=``
  and ``GET .../repos?skip=&limit=`` (``Page[RepoResponse]``, by id; the
  repositories are ``repos=["owner/name", ...]`` or ``add_repo(...)``, by default
  ``codegen-sandbox/repo-1`` and ``codegen-sandbox/repo-2``).
- Request validation as FastAPI does it, before anything else: 422
  ``{"detail": [{"type", "loc", "msg", "input"}]}`` (missing or empty prompt, ``limit``
  outside 1..100, a non-integer id, an unknown ``agent_type``, ...). An unknown path
  is 404 ``{"detail": "Not Found"}``, a wrong method 405.
- Then authentication: ``Authorization: Bearer <token>``, else 401 in FastAPI's
  ``{"detail": ...}`` shape (the document lists no 401 at all); an organization other
  than ``org_id`` is 403 ``PermissionsErrorResponse``.
- Then rate limits (``rate_limits=True``): a sliding window of 60 requests per 30 s
  shared by every endpoint but creation, and 10 creations per 60 s. Over a limit:
  429 ``{"message": "Rate limit exceeded. Please try again later.", "status_code":
  429}`` and no ``Retry-After`` header (none is documented). ``rate_limited_count``
  counts the 429s answered. Refused requests do not use up the window.
- ``max_runs = N``: creations past N runs answer 402 (the plan's runs are used up).
- Unknown run: 404 ``{"message": "Agent run not found.", "status_code": 404}``.
- ``Fault.huge_body`` answers a COMPLETE ``AgentRunResponse`` whose ``result`` is the filler.

Runs move with time (``clock``, injectable; a test may share a fake clock with the
client's ``sleep``): ``PENDING`` for ``pending_seconds``, ``ACTIVE`` for
``active_seconds``, then the outcome: ``default_outcome`` as it was when the run was
created (``COMPLETE`` unless changed) or ``set_outcome(run_id, "FAILED")``.
``set_status(run_id, "PAUSED")`` forces a status now (any string, unknown ones
included; ``None`` goes back to the timeline). ``random_durations(min_s, max_s,
seed)`` gives each new run its own length. Statuses, results and logs are computed
from the run's times when asked, so thousands of runs cost nothing while they wait.
A ``COMPLETE`` run has ``result``, ``summary`` and one pull request; every run has
``web_url`` ``https://codegen.com/agent/trace/<id>``, ``source_type`` ``"API"``
and its creation ``metadata``. Logs grow as the run goes on.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from app.sandbox.base import FakeServer, Fault, Reply, Request

DEFAULT_TOKEN = "cg-test-token"
DEFAULT_ORG_ID = 42
FIRST_RUN_ID = 1001
DEFAULT_REPOS = ("codegen-sandbox/repo-1", "codegen-sandbox/repo-2")
AGENT_TYPES = ("codegen", "claude_code")

RATE_LIMIT_BODY = {"message": "Rate limit exceeded. Please try again later.", "status_code": 429}
RUN_LIMIT_BODY = {
    "message": "Alloted agent runs for the current billing plan have been reached. "
    "Please upgrade your plan to continue.",
    "status_code": 402,
}
PERMISSION_BODY = {"message": "You do not have access to this organization.", "status_code": 403}
NOT_FOUND_BODY = {"message": "Agent run not found.", "status_code": 404}
NOT_AUTHENTICATED_BODY = {"detail": "Not authenticated"}
BAD_TOKEN_BODY = {"detail": "Invalid authentication credentials"}

PENDING, ACTIVE, COMPLETE = "PENDING", "ACTIVE", "COMPLETE"


def codegen_error(status: int, message: str | None = None) -> dict[str, Any]:
    """Codegen's own error body: ``{"message": ..., "status_code": ...}``."""
    return {"message": message or HTTPStatus(status).phrase, "status_code": status}


@dataclass
class _Segment:
    """One stretch of work: the creation, or a resume."""

    prompt: str
    start: float  # created / resumed (fake clock)
    active_from: float
    ends_at: float


@dataclass
class _Run:
    id: int
    created: float
    outcome: str
    metadata: dict[str, Any] | None
    repo_id: int | None
    model: str | None
    agent_type: str | None
    images: list[str] | None
    segments: list[_Segment] = field(default_factory=list)
    forced: str | None = None

    @property
    def prompt(self) -> str:
        return self.segments[-1].prompt


class _Window:
    """A sliding window: at most ``limit`` accepted requests in any ``seconds``."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.hits: deque[float] = deque()

    def allow(self, now: float) -> bool:
        while self.hits and self.hits[0] <= now - self.seconds:
            self.hits.popleft()
        if len(self.hits) >= self.limit:
            return False
        self.hits.append(now)
        return True


# (method, path pattern, handler, rate-limit bucket). The order matters only between
# routes that match the same path *and* method (none here), as in FastAPI.
_ORG = r"/v1/organizations/(?P<org_id>[^/]+)"
_ROUTES: tuple[tuple[str, re.Pattern[str], str, str], ...] = (
    ("POST", re.compile(rf"^{_ORG}/agent/run$"), "_create", "create"),
    ("POST", re.compile(rf"^{_ORG}/agent/run/resume$"), "_resume", "standard"),
    ("GET", re.compile(rf"^{_ORG}/agent/run/(?P<agent_run_id>[^/]+)$"), "_get", "standard"),
    ("GET", re.compile(rf"^{_ORG}/agent/runs$"), "_list", "standard"),
    ("GET", re.compile(rf"^{_ORG}/repos$"), "_list_repos", "standard"),
    (
        "GET",
        re.compile(
            r"^/v1/alpha/organizations/(?P<org_id>[^/]+)/agent/run/(?P<agent_run_id>[^/]+)/logs$"
        ),
        "_logs",
        "standard",
    ),
)


class _Invalid:
    """Collects FastAPI-style validation errors of one request."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def add(self, kind: str, loc: list[Any], msg: str, value: Any, **ctx: Any) -> None:
        error: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": value}
        if ctx:
            error["ctx"] = ctx
        self.errors.append(error)

    def integer(
        self,
        loc: list[Any],
        raw: Any,
        *,
        default: int | None = None,
        ge: int | None = None,
        le: int | None = None,
    ) -> int | None:
        if raw is None:
            return default
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str):
            try:
                value = int(raw.strip())
            except ValueError:
                self.add(
                    "int_parsing", loc,
                    "Input should be a valid integer, unable to parse string as an integer", raw,
                )
                return None
        else:
            self.add("int_type", loc, "Input should be a valid integer", raw)
            return None
        if ge is not None and value < ge:
            self.add("greater_than_equal", loc, f"Input should be greater than or equal to {ge}",
                     raw, ge=ge)
            return None
        if le is not None and value > le:
            self.add("less_than_equal", loc, f"Input should be less than or equal to {le}",
                     raw, le=le)
            return None
        return value

    def prompt(self, body: dict[str, Any]) -> str | None:
        if "prompt" not in body:
            self.add("missing", ["body", "prompt"], "Field required", body)
            return None
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            self.add("string_type", ["body", "prompt"], "Input should be a valid string", prompt)
            return None
        if not prompt.strip():
            self.add("value_error", ["body", "prompt"], "Value error, prompt must not be empty",
                     prompt, error={})
            return None
        return prompt

    def images(self, body: dict[str, Any]) -> list[str] | None:
        images = body.get("images")
        if images is None:
            return None
        if not isinstance(images, list):
            self.add("list_type", ["body", "images"], "Input should be a valid list", images)
            return None
        for i, image in enumerate(images):
            if not isinstance(image, str):
                self.add("string_type", ["body", "images", i], "Input should be a valid string",
                         image)
        return [str(image) for image in images]

    def body_object(self, request: Request) -> dict[str, Any] | None:
        body = request.body
        if request.raw_body and isinstance(body, str):
            self.add("json_invalid", ["body", 0], "JSON decode error", {}, error="invalid JSON")
            return None
        if body is None:
            self.add("missing", ["body"], "Field required", None)
            return None
        if not isinstance(body, dict):
            self.add("model_attributes_type", ["body"],
                     "Input should be a valid dictionary or object to extract fields from", body)
            return None
        return body


class FakeCodegenServer(FakeServer):
    """The Codegen agent API on loopback. See the module docstring."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        org_id: int = DEFAULT_ORG_ID,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        rate_limits: bool = True,
        standard_limit: tuple[int, float] = (60, 30.0),
        create_limit: tuple[int, float] = (10, 60.0),
        pending_seconds: float = 0.2,
        active_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        repos: Sequence[str] = DEFAULT_REPOS,
    ) -> None:
        super().__init__(host, port, latency)
        self.token = token
        self.org_id = org_id
        self.rate_limits = rate_limits
        self.pending_seconds = pending_seconds
        self.active_seconds = active_seconds
        self.clock = clock
        self.default_outcome = COMPLETE
        self.max_runs: int | None = None
        #: ``prompt -> result text`` of a COMPLETE run (default: ``"Done: <prompt>"``).
        self.responder: Callable[[str], str] | None = None
        self.rate_limited_count = 0
        self._state = threading.RLock()
        self._windows = {
            "standard": _Window(*standard_limit),
            "create": _Window(*create_limit),
        }
        self._runs: dict[int, _Run] = {}
        self._order: list[int] = []  # creation order, oldest first
        self._next_id = FIRST_RUN_ID
        self._durations: tuple[float, float] | None = None
        self._durations_rng = random.Random()
        self._wall0 = time.time()
        self._clock0 = clock()
        self._repos: dict[int, dict[str, Any]] = {}
        for full_name in repos:
            self.add_repo(full_name)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> FakeCodegenServer:
        super().start()
        return self

    def __enter__(self) -> FakeCodegenServer:
        return self.start()

    @property
    def url(self) -> str:
        """The client's ``base_url``."""
        return self.root_url

    # --- test controls ------------------------------------------------------------------
    def random_durations(self, min_s: float, max_s: float, seed: int | None = None) -> None:
        """Give each run created from now a total length drawn from [min_s, max_s].

        The length is split between PENDING and ACTIVE in the proportion of
        ``pending_seconds`` to ``active_seconds``.
        """
        if not 0 <= min_s <= max_s:
            raise ValueError(f"need 0 <= min_s <= max_s, got {min_s}, {max_s}")
        with self._state:
            self._durations = (min_s, max_s)
            self._durations_rng = random.Random(seed)

    def add_run(
        self,
        prompt: str = "a task",
        *,
        metadata: dict[str, Any] | None = None,
        pending_seconds: float | None = None,
        active_seconds: float | None = None,
    ) -> int:
        """Create a run without HTTP, limits or validation (benchmarks, setup). Its id."""
        with self._state:
            return self._new_run(prompt, metadata, None, None, None, None,
                                 pending_seconds, active_seconds).id

    def add_repo(self, full_name: str, *, repo_id: int | None = None, **fields: Any) -> int:
        """Give the organization a repository ``owner/name`` (``RepoResponse`` fields may
        be overridden, e.g. ``archived=True``). Its id: ``repo_id``, else the next one."""
        owner, _, name = full_name.partition("/")
        if not owner or not name:
            raise ValueError(f"a repository is 'owner/name', got {full_name!r}")
        with self._state:
            rid = repo_id if repo_id is not None else max(self._repos, default=0) + 1
            self._repos[rid] = {
                "id": rid,
                "name": name,
                "full_name": full_name,
                "description": None,
                "github_id": str(700_000 + rid),
                "organization_id": self.org_id,
                "visibility": "private",
                "archived": False,
                "setup_status": "COMPLETE",
                "language": "Python",
                **fields,
            }
            return rid

    def remove_repo(self, repo_id: int) -> None:
        with self._state:
            self._repos.pop(repo_id, None)

    def set_outcome(self, run_id: int, outcome: str) -> None:
        """The status the run takes when its ACTIVE time is over (``"FAILED"``, ...)."""
        with self._state:
            self._run(run_id).outcome = outcome

    def set_status(self, run_id: int, status: str | None) -> None:
        """Force the run's status from now on (any string); ``None`` returns to the timeline."""
        with self._state:
            self._run(run_id).forced = status

    def status_of(self, run_id: int) -> str:
        with self._state:
            return self._status(self._run(run_id), self.clock())

    def run_ids(self) -> list[int]:
        """Every run id, oldest first."""
        with self._state:
            return list(self._order)

    @property
    def run_count(self) -> int:
        with self._state:
            return len(self._order)

    def run_request(self, run_id: int) -> dict[str, Any]:
        """What the run was created with (prompt(s), metadata, repo_id, model, ...)."""
        with self._state:
            run = self._run(run_id)
            return {
                "prompts": [segment.prompt for segment in run.segments],
                "metadata": run.metadata,
                "repo_id": run.repo_id,
                "model": run.model,
                "agent_type": run.agent_type,
                "images": run.images,
            }

    def reset_limits(self) -> None:
        """Empty the rate-limit windows."""
        with self._state:
            for window in self._windows.values():
                window.hits.clear()

    # --- HTTP ---------------------------------------------------------------------------
    def huge_body_parts(self) -> tuple[bytes, bytes]:
        """A ``huge_body`` answer is a COMPLETE ``AgentRunResponse`` whose result is the
        filler."""
        prefix = (
            f'{{"id": {FIRST_RUN_ID}, "organization_id": {self.org_id}, "status": "COMPLETE",'
            ' "result": "'
        )
        suffix = (
            '", "summary": null, "web_url": null, "created_at": null, "source_type": "API",'
            ' "github_pull_requests": [], "metadata": null}'
        )
        return prefix.encode(), suffix.encode()

    def fault_reply(self, fault: Fault) -> Reply:
        """A status fault in Codegen's shapes (a 5xx is plain text, as a proxy sends it)."""
        headers = dict(fault.headers)
        status = fault.status
        if status == 429:
            with self._state:
                self.rate_limited_count += 1
        if fault.body is not None:
            return Reply(status, fault.body, headers)
        if status >= 500:
            return Reply(status, headers=headers, raw=HTTPStatus(status).phrase.encode())
        bodies: dict[int, dict[str, Any]] = {
            401: BAD_TOKEN_BODY,
            402: RUN_LIMIT_BODY,
            403: PERMISSION_BODY,
            404: NOT_FOUND_BODY,
            429: RATE_LIMIT_BODY,
            422: {"detail": [{"type": "value_error", "loc": ["body"], "msg": "Value error",
                              "input": None}]},
        }
        body = bodies.get(status) or codegen_error(status)
        return Reply(status, dict(body), headers)

    def dispatch(self, request: Request) -> Reply:
        matched_path = False
        for method, pattern, handler, bucket in _ROUTES:
            match = pattern.match(request.path)
            if match is None:
                continue
            matched_path = True
            if method == request.method:
                return self._serve(request, match.groupdict(), handler, bucket)
        if matched_path:
            return Reply(405, {"detail": "Method Not Allowed"})
        return Reply(404, {"detail": "Not Found"})

    def _serve(self, request: Request, params: dict[str, str], handler: str, bucket: str) -> Reply:
        check = _Invalid()
        org_id = check.integer(["path", "org_id"], params["org_id"])
        args: dict[str, Any] = {}
        if "agent_run_id" in params:
            args["run_id"] = check.integer(["path", "agent_run_id"], params["agent_run_id"])
        getattr(self, f"_validate{handler}")(request, check, args)
        if check.errors:
            return Reply(422, {"detail": check.errors})
        refused = self._check_auth(request, org_id)
        if refused is not None:
            return refused
        with self._state:
            now = self.clock()
            if self.rate_limits and not self._windows[bucket].allow(now):
                self.rate_limited_count += 1
                return Reply(429, dict(RATE_LIMIT_BODY))
            reply: Reply = getattr(self, handler)(now, **args)
            return reply

    def _check_auth(self, request: Request, org_id: int | None) -> Reply | None:
        header = request.headers.get("authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if not header:
            return Reply(401, dict(NOT_AUTHENTICATED_BODY), challenge)
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or credentials.strip() != self.token:
            return Reply(401, dict(BAD_TOKEN_BODY), challenge)
        if org_id != self.org_id:
            return Reply(403, dict(PERMISSION_BODY))
        return None

    # validation of each endpoint's query and body (FastAPI does it before the handler)
    def _validate_create(self, request: Request, check: _Invalid, args: dict[str, Any]) -> None:
        body = check.body_object(request)
        if body is None:
            return
        args["prompt"] = check.prompt(body)
        args["images"] = check.images(body)
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            check.add("dict_type", ["body", "metadata"], "Input should be a valid dictionary",
                      metadata)
        args["metadata"] = metadata
        args["repo_id"] = check.integer(["body", "repo_id"], body.get("repo_id"))
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            check.add("string_type", ["body", "model"], "Input should be a valid string", model)
        args["model"] = model
        agent_type = body.get("agent_type")
        if agent_type is not None and agent_type not in AGENT_TYPES:
            check.add("literal_error", ["body", "agent_type"],
                      "Input should be 'codegen' or 'claude_code'", agent_type,
                      expected="'codegen' or 'claude_code'")
        args["agent_type"] = agent_type

    def _validate_resume(self, request: Request, check: _Invalid, args: dict[str, Any]) -> None:
        body = check.body_object(request)
        if body is None:
            return
        if "agent_run_id" not in body:
            check.add("missing", ["body", "agent_run_id"], "Field required", body)
        else:
            args["run_id"] = check.integer(["body", "agent_run_id"], body["agent_run_id"])
        args["prompt"] = check.prompt(body)
        args["images"] = check.images(body)

    def _validate_get(self, request: Request, check: _Invalid, args: dict[str, Any]) -> None:
        pass

    def _validate_list(self, request: Request, check: _Invalid, args: dict[str, Any]) -> None:
        self._validate_page(request, check, args)

    def _validate_list_repos(self, request: Request, check: _Invalid, args: dict[str, Any]) -> None:
        self._validate_page(request, check, args)

    def _validate_logs(self, request: Request, check: _Invalid, args: dict[str, Any]) -> None:
        self._validate_page(request, check, args)
        raw = request.arg("reverse")
        reverse = False
        if raw is not None:
            if raw.lower() in ("true", "1", "yes", "on"):
                reverse = True
            elif raw.lower() not in ("false", "0", "no", "off"):
                check.add("bool_parsing", ["query", "reverse"],
                          "Input should be a valid boolean, unable to interpret input", raw)
        args["reverse"] = reverse

    @staticmethod
    def _validate_page(request: Request, check: _Invalid, args: dict[str, Any]) -> None:
        args["skip"] = check.integer(["query", "skip"], request.arg("skip"), default=0, ge=0)
        args["limit"] = check.integer(
            ["query", "limit"], request.arg("limit"), default=100, ge=1, le=100
        )

    # handlers (called with the state lock held and arguments validated)
    def _create(
        self,
        now: float,
        *,
        prompt: str,
        images: list[str] | None,
        metadata: dict[str, Any] | None,
        repo_id: int | None,
        model: str | None,
        agent_type: str | None,
    ) -> Reply:
        if self.max_runs is not None and len(self._order) >= self.max_runs:
            return Reply(402, dict(RUN_LIMIT_BODY))
        run = self._new_run(prompt, metadata, repo_id, model, agent_type, images, None, None)
        return Reply(200, self._run_json(run, now))

    def _get(self, now: float, *, run_id: int) -> Reply:
        run = self._runs.get(run_id)
        if run is None:
            return Reply(404, dict(NOT_FOUND_BODY))
        return Reply(200, self._run_json(run, now))

    def _list(self, now: float, *, skip: int, limit: int) -> Reply:
        total = len(self._order)
        # newest first: position i from the end of the creation order
        stop = max(total - skip, 0)
        start = max(stop - limit, 0)
        ids = reversed(self._order[start:stop])
        return Reply(
            200,
            {
                "items": [self._run_json(self._runs[i], now) for i in ids],
                "total": total,
                "page": skip // limit + 1,
                "size": limit,
                "pages": math.ceil(total / limit),
            },
        )

    def _list_repos(self, now: float, *, skip: int, limit: int) -> Reply:
        ids = sorted(self._repos)
        return Reply(
            200,
            {
                "items": [dict(self._repos[i]) for i in ids[skip : skip + limit]],
                "total": len(ids),
                "page": skip // limit + 1,
                "size": limit,
                "pages": math.ceil(len(ids) / limit),
            },
        )

    def _resume(self, now: float, *, run_id: int, prompt: str, images: list[str] | None) -> Reply:
        run = self._runs.get(run_id)
        if run is None:
            return Reply(404, dict(NOT_FOUND_BODY))
        _, active = self._durations_for_new_run(None, None)
        run.segments.append(_Segment(prompt, now, now, now + active))
        run.forced = None
        if images is not None:
            run.images = images
        return Reply(200, self._run_json(run, now))

    def _logs(self, now: float, *, run_id: int, skip: int, limit: int, reverse: bool) -> Reply:
        run = self._runs.get(run_id)
        if run is None:
            return Reply(404, dict(NOT_FOUND_BODY))
        entries = self._log_entries(run, now)
        if reverse:
            entries.reverse()
        body = self._run_json(run, now)
        for name in ("summary", "source_type", "github_pull_requests"):
            del body[name]  # AgentRunWithLogsResponse does not have them
        body.update(
            logs=entries[skip : skip + limit],
            total_logs=len(entries),
            page=skip // limit + 1,
            size=limit,
            pages=math.ceil(len(entries) / limit),
        )
        return Reply(200, body)

    # --- the runs -----------------------------------------------------------------------
    def _run(self, run_id: int) -> _Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise KeyError(f"no agent run {run_id} on this fake") from None

    def _durations_for_new_run(
        self, pending: float | None, active: float | None
    ) -> tuple[float, float]:
        if pending is not None or active is not None:
            return (pending or 0.0, active or 0.0)
        if self._durations is None:
            return (self.pending_seconds, self.active_seconds)
        total = self._durations_rng.uniform(*self._durations)
        both = self.pending_seconds + self.active_seconds
        share = self.pending_seconds / both if both > 0 else 0.0
        return (total * share, total * (1.0 - share))

    def _new_run(
        self,
        prompt: str,
        metadata: dict[str, Any] | None,
        repo_id: int | None,
        model: str | None,
        agent_type: str | None,
        images: list[str] | None,
        pending_seconds: float | None,
        active_seconds: float | None,
    ) -> _Run:
        now = self.clock()
        pending, active = self._durations_for_new_run(pending_seconds, active_seconds)
        run = _Run(
            id=self._next_id,
            created=now,
            outcome=self.default_outcome,
            metadata=metadata,
            repo_id=repo_id,
            model=model,
            agent_type=agent_type,
            images=images,
            segments=[_Segment(prompt, now, now + pending, now + pending + active)],
        )
        self._next_id += 1
        self._runs[run.id] = run
        self._order.append(run.id)
        return run

    def _status(self, run: _Run, now: float) -> str:
        if run.forced is not None:
            return run.forced
        segment = run.segments[-1]
        if now < segment.active_from:
            return PENDING
        if now < segment.ends_at:
            return ACTIVE
        return run.outcome

    def _iso(self, at: float) -> str:
        return datetime.fromtimestamp(self._wall0 + (at - self._clock0), tz=UTC).isoformat()

    def _result(self, prompt: str) -> str:
        return self.responder(prompt) if self.responder else f"Done: {prompt}"

    def _pull_request(self, run: _Run) -> dict[str, Any]:
        repo = self._repos.get(run.repo_id or 0)
        full_name = repo["full_name"] if repo else f"codegen-sandbox/repo-{run.repo_id or 1}"
        return {
            "id": 500_000 + run.id,
            "title": f"Codegen: {run.segments[0].prompt[:60]}",
            "url": f"https://github.com/{full_name}/pull/{run.id}",
            "created_at": self._iso(run.segments[0].ends_at),
            "head_branch_name": f"codegen-bot/run-{run.id}",
        }

    def _run_json(self, run: _Run, now: float) -> dict[str, Any]:
        status = self._status(run, now)
        done = status == COMPLETE
        ended = not done and now >= run.segments[-1].ends_at and run.forced is None
        summary = None
        if done:
            summary = f"Agent run {run.id} finished the task and opened 1 pull request."
        elif ended:
            summary = f"Agent run {run.id} ended {status}."
        return {
            "id": run.id,
            "organization_id": self.org_id,
            "status": status,
            "created_at": self._iso(run.created),
            "web_url": f"https://codegen.com/agent/trace/{run.id}",
            "result": self._result(run.prompt) if done else None,
            "summary": summary,
            "source_type": "API",
            "github_pull_requests": [self._pull_request(run)] if done else [],
            "metadata": run.metadata,
        }

    def _log_entries(self, run: _Run, now: float) -> list[dict[str, Any]]:
        """The log so far: a few entries per stretch of work, up to ``now``."""

        def entry(at: float, message_type: str, **fields: Any) -> dict[str, Any]:
            return {
                "agent_run_id": run.id,
                "created_at": self._iso(at),
                "tool_name": fields.get("tool_name"),
                "message_type": message_type,
                "thought": fields.get("thought"),
                "observation": fields.get("observation"),
                "tool_input": fields.get("tool_input"),
                "tool_output": fields.get("tool_output"),
                "_at": at,
            }

        entries: list[dict[str, Any]] = []
        last = len(run.segments) - 1
        for n, segment in enumerate(run.segments):
            middle = segment.active_from + (segment.ends_at - segment.active_from) / 2
            entries.append(entry(segment.start, "USER_MESSAGE", observation=segment.prompt))
            entries.append(entry(
                segment.active_from, "ACTION", tool_name="ripgrep_search",
                thought="I need to find the code this task is about.",
                tool_input={"query": segment.prompt[:40]},
                tool_output={"matches": 3, "files": ["src/app.py", "tests/test_app.py"]},
                observation={"status": "success"},
            ))
            entries.append(entry(
                middle, "PLAN_EVALUATION", thought="The change fits in src/app.py; writing it.",
            ))
            outcome = run.outcome if n == last else COMPLETE
            if outcome == COMPLETE:
                pr = self._pull_request(run)
                entries.append(entry(
                    segment.ends_at, "ACTION", tool_name="create_pr",
                    tool_input={"title": pr["title"]}, tool_output={"url": pr["url"]},
                    observation={"status": "success"},
                ))
                entries.append(entry(segment.ends_at, "FINAL_ANSWER",
                                     observation=self._result(segment.prompt)))
            else:
                entries.append(entry(segment.ends_at, "ERROR",
                                     observation={"error": f"run ended {outcome}"}))
        visible = [e for e in entries if e["_at"] <= now]
        for e in visible:
            del e["_at"]
        return visible
