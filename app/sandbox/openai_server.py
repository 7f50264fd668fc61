"""A fake OpenAI API: a real HTTP server that answers like ``api.openai.com/v1``.

Point the official SDK (or ``OPENAI_BASE_URL``) at ``srv.url`` and it goes through
its real HTTP client, sockets and timeouts::

    with FakeOpenAIServer() as srv:
        client = openai.OpenAI(api_key=srv.api_key, base_url=srv.url, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "hi"}])
        # -> content "echo: hi"

What it does, as the real API does:

- ``POST /v1/chat/completions`` needs ``Authorization: Bearer <api_key>`` (else 401
  ``invalid_api_key``, its message masking the key; with ``srv.echo_key_in_errors`` the
  key presented is echoed verbatim in every field and in ``x-request-id``, as a hostile
  proxy would), a ``model`` it knows (else 404 ``model_not_found``) and a
  non-empty ``messages`` list (else 400 ``invalid_request_error``). Unknown body
  fields are refused with 400, like the real API's "Unrecognized request argument".
- The answer is deterministic: ``"echo: " + <last user message>``, unless
  ``srv.responder`` (``request body -> str``) is set. Token counts are words:
  ``prompt_tokens`` = words of all messages, ``completion_tokens`` = words of the
  content + ``srv.reasoning_tokens``; ``srv.cached_tokens`` is reported as the
  cached part of the prompt. ``max_tokens`` cuts the content (``finish_reason``
  ``"length"``).
- With ``tools`` and a ``tool_choice`` of ``"required"`` or naming a function, the
  answer is a tool call ``{"answer": <content>}`` (what graph-sitter's ``set_answer``
  expects), ``content`` null and ``finish_reason`` ``"tool_calls"``.
- Model ``tiny-context`` has a context window of ``TINY_CONTEXT`` (50) tokens; a
  longer prompt gets 400 ``context_length_exceeded``.
- Every answer carries ``x-request-id`` and the ``x-ratelimit-*`` headers, and the
  limits are enforced: ``rate_limit_requests`` and ``rate_limit_tokens`` per
  ``rate_limit_window`` seconds (sliding; the usage of a chat completion counts when it
  arrives), past them a 429 ``rate_limit_exceeded`` with ``retry-after-ms``
  (``rate_limited`` counts them). A test scales the minute down by setting the window
  (e.g. 6 s) and keeping the per-minute numbers: the same requests and tokens per window,
  the same headers, only a faster clock.
- ``srv.rate_limit_randomly(0.2, retry_after=1.0, models=["gpt-4o-mini"], seed=1)``
  answers a random 20 % of the chat completions (of those models; of every model when
  ``models`` is None) 429 in the real API's shape (body type ``requests``, code
  ``rate_limit_exceeded``, ``retry-after-ms`` and ``retry-after``) but with room left
  in its ``x-ratelimit-*`` headers: a momentary refusal, not a limit used up (those
  answer ``x-ratelimit-remaining-requests: 0``, as a ``Fault.rate_limit`` does); not
  counted in the window. ``random_rate_limited``
  counts them per model; ``rate_limit_randomly(0)`` stops it.
- ``GET /v1/models`` and ``GET /v1/models/{id}``.
- ``Fault.huge_body`` answers a chat completion whose content is the filler.
- Status faults (``srv.faults``) answer in OpenAI's error shape; see ``fault_reply``,
  ``insufficient_quota_fault`` and ``context_length_fault``.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from app.sandbox.base import FakeServer, Fault, Reply, Request

DEFAULT_API_KEY = "sk-test-fake"
TINY_CONTEXT = 50
DEFAULT_CONTEXT = 128_000

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o3-mini",
    "tiny-context",
    "local-model",  # a model with no entry in the price table (cost unknown)
)

# Fields of the chat completions request body (the public API reference). Anything
# else is refused with 400, as the real API does.
CHAT_COMPLETION_FIELDS = frozenset(
    {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "moderation", "n", "parallel_tool_calls", "prediction",
        "presence_penalty", "prompt_cache_key", "prompt_cache_options",
        "prompt_cache_retention", "reasoning_effort", "response_format",
        "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
        "top_p", "user", "verbosity", "web_search_options",
    }
)

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Default error bodies of the status faults: (type, code, message).
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: ("invalid_request_error", None, "Not found."),
    408: ("timeout", None, "Request timed out."),
    409: ("invalid_request_error", "conflict", "Conflict, please try again."),
    422: ("invalid_request_error", None, "Unprocessable entity."),
    429: (
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM). Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def openai_error(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """An error body in OpenAI's shape: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def insufficient_quota_fault() -> Fault:
    """The 429 OpenAI sends when the account's credit is used up (not a rate limit)."""
    return Fault.status_code(
        429,
        openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            type="insufficient_quota",
            code="insufficient_quota",
        ),
    )


def context_length_fault(limit: int = TINY_CONTEXT, asked: int = TINY_CONTEXT + 1) -> Fault:
    """The 400 OpenAI sends when the prompt does not fit the model's context window."""
    return Fault.status_code(
        400,
        openai_error(
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {asked} tokens. Please reduce the length of the messages.",
            code="context_length_exceeded",
            param="messages",
        ),
    )


def count_words(text: str | None) -> int:
    return len(text.split()) if text else 0


def message_text(message: Any) -> str:
    """The text of one chat message: a string, or the text parts of a content list."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _format_reset(seconds: float) -> str:
    """Durations as OpenAI writes them in ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes:
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{rest:.3g}s"


class FakeOpenAIServer(FakeServer):
    """The OpenAI API on a loopback port. ``url`` is the SDK's ``base_url``."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        models: Iterable[str] = DEFAULT_MODELS,
    ) -> None:
        super().__init__(host=host, port=port, latency=latency)
        self.api_key = api_key
        self.models: list[str] = list(models)
        self.context_windows: dict[str, int] = {"tiny-context": TINY_CONTEXT}
        # What the answer says it was served by, e.g. {"gpt-4o": "gpt-4o-2024-08-06"}
        # (the real API answers with a dated snapshot name).
        self.model_aliases: dict[str, str] = {}
        self.responder: Callable[[dict[str, Any]], str] | None = None
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.send_usage = True  # False: no "usage" at all (some compatible servers)
        self.send_usage_details = True  # False: no *_tokens_details objects
        # True: a wrong key's 401 echoes the key verbatim in every field of the error
        # (message, type, code, param) and in x-request-id, as some proxies do.
        self.echo_key_in_errors = False
        # Rate limits, enforced over a sliding window of ``rate_limit_window`` seconds
        # (a "minute"; tests shrink it): a chat completion that would make more than
        # ``rate_limit_requests`` requests or ``rate_limit_tokens`` tokens (its usage,
        # counted when it arrives) in the window is answered 429.
        self.rate_limit_requests = 10_000
        self.rate_limit_tokens = 2_000_000
        self.rate_limit_window = 60.0
        self.rate_limited = 0  # 429s answered for the limits (not faults)
        # rate_limit_randomly(): (rate, models or None for all, retry-after seconds)
        self._random_429: tuple[float, frozenset[str] | None, float] = (0.0, None, 1.0)
        self._random_429_rng = random.Random()
        self.random_rate_limited: dict[str, int] = {}  # model -> random 429s answered
        self._log: deque[tuple[float, int]] = deque()  # (arrival, tokens) in the window
        self._rl_lock = threading.Lock()
        self.created = int(time.time())

    # lifecycle (typed for the subclass) -------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        super().start()
        return self

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    @property
    def url(self) -> str:
        """The base URL to give the SDK (``.../v1``)."""
        return self.root_url + "/v1"

    def chat_requests(self) -> list[Any]:
        """Bodies of the chat completion requests received so far."""
        with self._lock:
            return [r.body for r in self.requests if r.path == "/v1/chat/completions"]

    # headers -------------------------------------------------------------------------------
    def _request_id(self) -> str:
        return f"req_{uuid.uuid4().hex}"

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.rate_limit_window:
            self._log.popleft()

    def _over_limit(self, tokens: int) -> Reply | None:
        """Count a chat completion of ``tokens`` in the window, or answer 429 (the
        real API's body, ``retry-after-ms`` until the window has room)."""
        with self._rl_lock:
            now = time.monotonic()
            self._expire(now)
            used = sum(t for _, t in self._log)
            if len(self._log) + 1 > self.rate_limit_requests:
                what, limit, count, asked = "requests", self.rate_limit_requests, len(self._log), 1
                room = self._log[len(self._log) - self.rate_limit_requests][0]
            elif used + tokens > self.rate_limit_tokens:
                what, limit, count, asked = "tokens", self.rate_limit_tokens, used, tokens
                freed, room = 0, now
                for at, spent in self._log:
                    freed += spent
                    room = at
                    if used - freed + tokens <= self.rate_limit_tokens:
                        break
            else:
                self._log.append((now, tokens))
                return None
            self.rate_limited += 1
            wait = max(0.001, room + self.rate_limit_window - now)
        unit = "RPM" if what == "requests" else "TPM"
        body = openai_error(
            f"Rate limit reached on {what} per min ({unit}): Limit {limit}, Used {count}, "
            f"Requested {asked}. Please try again in {_format_reset(wait)}.",
            type=what,
            code="rate_limit_exceeded",
        )
        headers = {**self._headers(), "retry-after-ms": str(max(1, round(wait * 1000)))}
        return Reply(429, body, headers)

    def rate_limit_randomly(
        self,
        rate: float,
        *,
        retry_after: float = 1.0,
        models: Iterable[str] | None = None,
        seed: int | None = None,
    ) -> None:
        """Answer a random ``rate`` of the chat completions of ``models`` (every model
        when None) 429 ``rate_limit_exceeded`` with a ``retry_after`` s wait; 0 stops it."""
        with self._rl_lock:
            chosen = frozenset(models) if models is not None else None
            self._random_429 = (rate, chosen, retry_after)
            self._random_429_rng = random.Random(seed)

    def _random_rate_limit(self, model: str) -> Reply | None:
        with self._rl_lock:
            rate, models, wait = self._random_429
            if not rate or (models is not None and model not in models):
                return None
            if self._random_429_rng.random() >= rate:
                return None
            self.random_rate_limited[model] = self.random_rate_limited.get(model, 0) + 1
        # A momentary refusal: the headers still show the window's room (a limit used
        # up answers remaining 0: the fake's own limits, or Fault.rate_limit).
        body = openai_error(
            f"Rate limit reached for {model}. Please try again in {_format_reset(wait)}.",
            type="requests",
            code="rate_limit_exceeded",
        )
        headers = {
            **self._headers(),
            "retry-after-ms": str(max(1, round(wait * 1000))),
            "retry-after": str(max(1, round(wait))),
        }
        return Reply(429, body, headers)

    def _headers(self) -> dict[str, str]:
        with self._rl_lock:
            now = time.monotonic()
            self._expire(now)
            count = len(self._log)
            used_tokens = sum(t for _, t in self._log)
            newest = self._log[-1][0] if self._log else now
        remaining_requests = max(0, self.rate_limit_requests - count)
        remaining_tokens = max(0, self.rate_limit_tokens - used_tokens)
        reset = max(0.001, self.rate_limit_window - (now - newest)) if count else 0.001
        return {
            "x-request-id": self._request_id(),
            "openai-processing-ms": "1",
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": str(self.rate_limit_requests),
            "x-ratelimit-remaining-requests": str(remaining_requests),
            "x-ratelimit-reset-requests": _format_reset(reset),
            "x-ratelimit-limit-tokens": str(self.rate_limit_tokens),
            "x-ratelimit-remaining-tokens": str(remaining_tokens),
            "x-ratelimit-reset-tokens": _format_reset(reset),
        }

    def _error(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> Reply:
        return Reply(
            status,
            openai_error(message, type=type, code=code, param=param),
            {"x-request-id": self._request_id()},
        )

    # faults --------------------------------------------------------------------------------
    def huge_body_parts(self) -> tuple[bytes, bytes]:
        """A ``huge_body`` answer is a chat completion whose content is the filler."""
        head = {"id": "chatcmpl-huge", "object": "chat.completion", "created": self.created,
                "model": "gpt-4o-mini"}
        prefix = json.dumps(head)[:-1] + (
            ', "choices": [{"index": 0, "message": {"role": "assistant", "content": "'
        )
        suffix = (
            '"}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1,'
            ' "completion_tokens": 1, "total_tokens": 2}}'
        )
        return prefix.encode(), suffix.encode()

    def fault_reply(self, fault: Fault) -> Reply:
        """A status fault in OpenAI's error shape (``fault.body`` wins when given)."""
        if fault.body is not None:
            body = fault.body
        else:
            kind, code, message = _STATUS_ERRORS.get(
                fault.status,
                ("server_error" if fault.status >= 500 else "invalid_request_error", None,
                 f"HTTP {fault.status}"),
            )
            body = openai_error(message, type=kind, code=code)
        # Like the real API, an error still carries x-request-id and x-ratelimit-*; a
        # rate-limit 429 says the limit it hit is used up (the fault's headers win).
        headers = self._headers()
        error = body.get("error") if isinstance(body, dict) else None
        if fault.status == 429 and (error or {}).get("code") != "insufficient_quota":
            headers["x-ratelimit-remaining-requests"] = "0"
        return Reply(fault.status, body, {**headers, **fault.headers})

    # routing -------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Reply:
        path = request.path.rstrip("/")
        if not path.startswith("/v1/"):
            return self._error(404, f"Invalid URL ({request.method} {request.path})")
        auth = self._check_auth(request)
        if auth is not None:
            return auth
        if path == "/v1/chat/completions":
            if request.method != "POST":
                return self._error(405, f"Invalid method for URL ({request.method} {path})")
            return self._chat(request)
        if path == "/v1/models" and request.method == "GET":
            return self._list_models()
        if path.startswith("/v1/models/") and request.method == "GET":
            return self._get_model(path.removeprefix("/v1/models/"))
        return self._error(404, f"Invalid URL ({request.method} {request.path})")

    def _check_auth(self, request: Request) -> Reply | None:
        header = request.headers.get("authorization", "")
        if not header:
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.api_key:
            shown = token.strip()
            if self.echo_key_in_errors:
                return Reply(
                    401,
                    openai_error(
                        f"Incorrect API key provided: {shown}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.",
                        type=f"invalid_request_error ({shown})",
                        code=f"invalid_api_key:{shown}",
                        param=shown,
                    ),
                    {"x-request-id": f"req_{shown}"},
                )
            masked = f"{shown[:3]}***{shown[-2:]}" if len(shown) > 8 else "***"
            return self._error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def _model_object(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "system"}

    def _list_models(self) -> Reply:
        body = {"object": "list", "data": [self._model_object(m) for m in self.models]}
        return Reply(200, body, self._headers())

    def _get_model(self, model_id: str) -> Reply:
        if model_id not in self.models:
            return self._error(
                404,
                f"The model '{model_id}' does not exist",
                code="model_not_found",
                param="model",
            )
        return Reply(200, self._model_object(model_id), self._headers())

    # chat completions ----------------------------------------------------------------------
    def _validate(self, body: Any) -> Reply | None:
        if not isinstance(body, dict):
            return self._error(
                400,
                "We could not parse the JSON body of your request. The OpenAI API expects a "
                "JSON payload.",
            )
        unknown = sorted(set(body) - CHAT_COMPLETION_FIELDS)
        if unknown:
            return self._error(
                400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(
                400, f"{messages!r} is too short - 'messages'", code="empty_array",
                param="messages",
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                return self._error(
                    400,
                    f"Invalid value for 'messages[{i}].role'.",
                    code="invalid_value",
                    param=f"messages[{i}].role",
                )
        temperature = body.get("temperature")
        if temperature is not None and (
            not isinstance(temperature, int | float) or not 0 <= temperature <= 2
        ):
            return self._error(
                400,
                f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
                f"but got {temperature} instead.",
                code="decimal_above_max_value",
                param="temperature",
            )
        if body.get("stream"):
            return self._error(400, "The fake server does not stream.", param="stream")
        if model not in self.models:
            return self._error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return None

    def _content_for(self, body: dict[str, Any]) -> str:
        if self.responder is not None:
            return self.responder(body)
        last_user = next(
            (m for m in reversed(body["messages"]) if m.get("role") == "user"), None
        )
        return "echo: " + message_text(last_user)

    def _chat(self, request: Request) -> Reply:
        body = request.body
        problem = self._validate(body)
        if problem is not None:
            return problem
        assert isinstance(body, dict)
        model: str = body["model"]
        limited = self._random_rate_limit(model)
        if limited is not None:
            return limited
        prompt_tokens = sum(count_words(message_text(m)) for m in body["messages"])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        window = self.context_windows.get(model, DEFAULT_CONTEXT)
        wanted = prompt_tokens + (max_tokens if isinstance(max_tokens, int) else 0)
        if wanted > window:
            return self._error(
                400,
                f"This model's maximum context length is {window} tokens. However, you "
                f"requested {wanted} tokens ({prompt_tokens} in the messages, "
                f"{wanted - prompt_tokens} in the completion). Please reduce the length of "
                "the messages or completion.",
                code="context_length_exceeded",
                param="messages",
            )

        content = self._content_for(body)
        finish_reason = "stop"
        words = content.split()
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            content = " ".join(words[:max_tokens])
            finish_reason = "length"
        completion_tokens = count_words(content) + self.reasoning_tokens

        message: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "refusal": None,
            "annotations": [],
        }
        tool_name = self._forced_tool(body)
        if tool_name is not None and finish_reason == "stop":
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": tool_name, "arguments": json.dumps({"answer": content})},
                }
            ]
            finish_reason = "tool_calls"

        asked_n = body.get("n")
        n = asked_n if isinstance(asked_n, int) and asked_n > 0 else 1
        answer: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:29]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_aliases.get(model, model),
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish_reason}
                for i in range(n)
            ],
            "service_tier": "default",
            "system_fingerprint": "fp_fake0000",
        }
        if self.send_usage:
            usage: dict[str, Any] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens * n,
                "total_tokens": prompt_tokens + completion_tokens * n,
            }
            if self.send_usage_details:
                usage["prompt_tokens_details"] = {
                    "cached_tokens": min(self.cached_tokens, prompt_tokens),
                    "audio_tokens": 0,
                }
                usage["completion_tokens_details"] = {
                    "reasoning_tokens": self.reasoning_tokens * n,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                }
            answer["usage"] = usage
        over = self._over_limit(prompt_tokens + completion_tokens * n)
        if over is not None:
            return over
        return Reply(200, answer, self._headers())

    @staticmethod
    def _forced_tool(body: dict[str, Any]) -> str | None:
        """The function the model must call: ``tool_choice`` ``"required"`` or naming one."""
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools:
            return None
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            function = choice.get("function")
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                return str(function["name"])
            return None
        if choice == "required":
            first = tools[0]
            if isinstance(first, dict) and isinstance(first.get("function"), dict):
                name = first["function"].get("name")
                return str(name) if name else None
        return None
