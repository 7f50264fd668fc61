"""OpenAI (or any OpenAI-compatible server) behind the ``AIProvider`` interface.

Built on the official ``openai`` SDK, with its own retries switched off
(``max_retries=0``): the one retry loop is ``app.core.retry``. The client is made on
first use, never at import or construction, and is shared by the threads that use
this provider instance.

Choices worth knowing:

- ``OPENAI_TIMEOUT`` (or ``timeout=``) bounds the whole HTTP call, connect to last byte,
  not only each read: a server that trickles its answer fails with
  ``ProviderTimeoutError`` at the deadline. An answer larger than ``AIW_MAX_ANSWER_BYTES``
  is never read past the cap and fails with ``AnswerTooLargeError`` (not retried; a
  chain falls back). Both live in the SDK's HTTP client (``app.ai.transport``).

- ``provider_specific`` keyword arguments of ``generate_response`` are passed to
  the chat completions request when they are in ``PASSTHROUGH_PARAMS`` (``tools``,
  ``tool_choice``, ``response_format``, ``top_p``, ``seed``, ``stop``, ``user``, ...).
  Anything else is refused with ``InvalidRequestError`` naming it, before any network
  call. ``stream``/``stream_options``, ``n``, ``audio``/``modalities`` and the SDK's
  ``extra_*``/``timeout`` options are refused on purpose: this provider returns one
  complete text answer. A pass-through value of ``None`` means "not given" and is not
  sent (graph-sitter passes ``tool_choice=None`` for non-gpt models).
- When the model answers with a tool call, ``metadata["tool_calls"]`` lists every call
  as ``{"name", "arguments"}`` (arguments: the JSON text as sent), and ``content`` is
  the first call's ``answer`` argument when there is one: graph-sitter's ``set_answer``
  tool. Otherwise ``content`` is the message text (``""`` when there is none).
- ``metadata`` also holds ``finish_reason``, ``response_id``, ``requested_model`` and
  ``rate_limit`` (the ``x-ratelimit-*`` headers: limits/remaining as ints, resets as
  sent plus ``*_seconds``).
- ``cost_usd`` is priced on the model the server says answered (e.g. a dated snapshot
  ``gpt-4o-2024-08-06``); ``None`` when the price table does not know it.
- ``get_available_models()`` asks ``GET /models``; when that fails (or there is no key)
  it returns the price table's model names instead of raising: the list is advisory
  (status pages, the CLI), and a caller that needs to know whether the credentials
  work asks ``validate_credentials()``.

Errors are mapped by exception type, HTTP status and the error body's structured
``code`` field, never by words in a message (see ``map_openai_error``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import openai

from app.ai.base import AIProvider, AIRequest, AIResponse, Usage
from app.ai.transport import Response, make_http_client
from app.core.errors import (
    AIProviderError,
    ContextTooLongError,
    InvalidRequestError,
    ProviderConnectionError,
    ProviderQuotaError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderTimeoutError,
    error_for_status,
)
from app.core.retry import parse_retry_after

if TYPE_CHECKING:
    from app.ai.pricing import PriceTable
    from app.config import Settings

log = logging.getLogger(__name__)

PROVIDER_NAME = "openai"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Parameters of a chat completions request that callers may pass through. model,
# messages, temperature and max_tokens are first-class parameters of generate_response.
PASSTHROUGH_PARAMS: frozenset[str] = frozenset(
    {
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "metadata",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)

_RATE_LIMIT_PREFIX = "x-ratelimit-"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_reset_duration(text: str) -> float | None:
    """OpenAI's reset durations (``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``) in seconds."""
    text = text.strip()
    if not text:
        return None
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        try:
            return float(text)  # a bare number of seconds
        except ValueError:
            return None
    return total


def rate_limit_info(headers: Mapping[str, str]) -> dict[str, Any]:
    """The ``x-ratelimit-*`` headers as ``{"limit_requests": 10000, "reset_requests": "6ms",
    "reset_requests_seconds": 0.006, ...}`` (only those present)."""
    info: dict[str, Any] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if not lowered.startswith(_RATE_LIMIT_PREFIX):
            continue
        key = lowered.removeprefix(_RATE_LIMIT_PREFIX).replace("-", "_")
        if key.startswith("reset"):
            info[key] = value
            seconds = parse_reset_duration(value)
            if seconds is not None:
                info[f"{key}_seconds"] = seconds
        else:
            try:
                info[key] = int(value)
            except ValueError:
                info[key] = value
    return info


def _error_fields(exc: openai.APIStatusError) -> tuple[str | None, str | None, str | None]:
    """(code, type, message) of the error body, when it is OpenAI's structured shape."""
    body = exc.body if isinstance(exc.body, dict) else {}
    code = body.get("code")
    kind = body.get("type")
    message = body.get("message")
    return (
        str(code) if code is not None else None,
        str(kind) if kind is not None else None,
        message if isinstance(message, str) else None,
    )


def map_openai_error(exc: Exception, *, timeout: float | None) -> AIProviderError:
    """The ``app.core.errors`` error for an exception raised by the openai SDK.

    - ``APITimeoutError`` -> ``ProviderTimeoutError(timeout_duration=timeout)`` (a single
      operation's timeout, or the call's total deadline, ``app.ai.transport``)
    - ``APIConnectionError`` -> ``ProviderConnectionError`` (retryable)
    - ``APIStatusError`` -> ``error_for_status(status)`` with ``retry_after`` from the
      ``retry-after-ms``/``Retry-After`` headers and the ``x-request-id``, except:
      body code ``context_length_exceeded`` -> ``ContextTooLongError``, and
      ``insufficient_quota`` (sent as a 429) -> ``ProviderQuotaError`` (not retried).
    - ``APIResponseValidationError`` or a body that is not JSON (``ValueError`` from
      parsing) -> ``ProviderResponseError``
    - any other ``openai.OpenAIError`` -> ``AIProviderError`` (not retried)
    """
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeoutError(
            f"no complete answer within {timeout}s (the whole call)",
            timeout_duration=timeout,
            provider_name=PROVIDER_NAME,
        )
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f": {type(cause).__name__}" if cause is not None else ""
        return ProviderConnectionError(
            f"connection failed{detail}", provider_name=PROVIDER_NAME
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code, kind, body_message = _error_fields(exc)
        message = body_message or exc.message
        if code or kind:
            message = f"{message} [type={kind}, code={code}]"
        retry_after = parse_retry_after(exc.response.headers)
        request_id = exc.request_id
        error: AIProviderError
        if code == "context_length_exceeded":
            error = ContextTooLongError(
                message, provider_name=PROVIDER_NAME, status_code=status,
                request_id=request_id,
            )
        elif code == "insufficient_quota" or kind == "insufficient_quota":
            error = ProviderQuotaError(
                message, provider_name=PROVIDER_NAME, status_code=status,
                request_id=request_id, retry_after=retry_after,
            )
        else:
            error = error_for_status(
                status, message, provider_name=PROVIDER_NAME, request_id=request_id,
                retry_after=retry_after,
            )
        if isinstance(error, ProviderRateLimitError):
            error.limits = rate_limit_info(exc.response.headers) or None
        return error
    if isinstance(exc, openai.APIResponseValidationError):
        return ProviderResponseError(
            f"answer does not match the API's schema: {exc.message}",
            provider_name=PROVIDER_NAME,
            status_code=exc.status_code,
            request_id=exc.response.headers.get("x-request-id"),
        )
    if isinstance(exc, ValueError):  # json.JSONDecodeError from LegacyAPIResponse.parse()
        return ProviderResponseError(
            f"answer is not valid JSON ({type(exc).__name__})", provider_name=PROVIDER_NAME
        )
    return AIProviderError(
        f"unexpected openai SDK error: {type(exc).__name__}", provider_name=PROVIDER_NAME
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _field(obj: object, name: str) -> Any:
    """``obj[name]`` of a JSON object; None when it is absent or ``obj`` is no object."""
    return obj.get(name) if isinstance(obj, dict) else None


def usage_from(completion: object) -> Usage:
    """Token counts from a chat completion's JSON; every field may be absent (-> 0)."""
    usage = _field(completion, "usage")
    return Usage(
        prompt_tokens=_int(_field(usage, "prompt_tokens")),
        completion_tokens=_int(_field(usage, "completion_tokens")),
        cached_tokens=_int(_field(_field(usage, "prompt_tokens_details"), "cached_tokens")),
        reasoning_tokens=_int(
            _field(_field(usage, "completion_tokens_details"), "reasoning_tokens")
        ),
    )


def _tool_calls(message: object) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    listed = _field(message, "tool_calls")
    for call in listed if isinstance(listed, list) else []:
        function = _field(call, "function")
        custom = _field(call, "custom")
        if function is not None:
            calls.append(
                {"name": _field(function, "name"), "arguments": _field(function, "arguments")}
            )
        elif custom is not None:
            calls.append({"name": _field(custom, "name"), "arguments": _field(custom, "input")})
    return calls


def _answer_argument(arguments: object) -> str | None:
    if not isinstance(arguments, str):
        return None
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("answer"), str):
        return str(parsed["answer"])
    return None


class OpenAIProvider(AIProvider):
    """Chat completions through the official SDK. Settings: ``OPENAI_API_KEY``,
    ``OPENAI_BASE_URL``, ``OPENAI_TIMEOUT``, ``OPENAI_MAX_RETRIES``, ``OPENAI_DEFAULT_MODEL``.
    """

    name: ClassVar[str] = PROVIDER_NAME

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        super().__init__(
            settings=settings, timeout=timeout, max_retries=max_retries, prices=prices
        )
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()

    # --- configuration --------------------------------------------------------------
    def default_timeout(self) -> float:
        return self.settings.openai_timeout

    def default_max_retries(self) -> int:
        return self.settings.openai_max_retries

    def is_configured(self) -> bool:
        key = self.settings.openai_api_key
        return key is not None and bool(key.get_secret_value())

    @property
    def base_url(self) -> str:
        return self.settings.openai_base_url or OPENAI_DEFAULT_BASE_URL

    @property
    def default_model(self) -> str:
        return self.settings.openai_default_model

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client, made on first use (needs the key)."""
        with self._client_lock:
            if self._client is None:
                self.require_configured()
                key = self.settings.openai_api_key
                assert key is not None
                self._client = openai.OpenAI(
                    api_key=key.get_secret_value(),
                    # Explicit, so Settings (env or .env) is the one source of the URL.
                    base_url=self.base_url,
                    timeout=self.timeout,
                    max_retries=0,
                    # self.timeout for the whole call, and AIW_MAX_ANSWER_BYTES at most
                    # read (app.ai.transport); closed with this client.
                    http_client=make_http_client(
                        base_url=self.base_url,
                        timeout=self.timeout,
                        max_answer_bytes=self.settings.aiw_max_answer_bytes,
                        provider_name=PROVIDER_NAME,
                    ),
                )
            return self._client

    def close(self) -> None:
        """Close the HTTP connections of the client (made again on next use)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> OpenAIProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<OpenAIProvider name={self.name!r} configured={self.is_configured()} "
            f"base_url={self.base_url!r} timeout={self.timeout} "
            f"max_retries={self.max_retries}>"
        )

    # --- requests ---------------------------------------------------------------------
    def build_request(self, prompt: object, **kwargs: Any) -> AIRequest:
        request = super().build_request(prompt, **kwargs)
        self.check_extra(request.extra)
        return request

    @staticmethod
    def check_extra(extra: Mapping[str, Any]) -> None:
        """Refuse a keyword argument the chat completions call does not take."""
        unknown = sorted(set(extra) - PASSTHROUGH_PARAMS)
        if unknown:
            raise InvalidRequestError(
                f"unsupported parameter(s) for openai: {', '.join(unknown)} "
                f"(accepted: {', '.join(sorted(PASSTHROUGH_PARAMS))})",
                provider_name=PROVIDER_NAME,
            )

    def check_request(self, request: AIRequest) -> None:
        self.check_extra(request.extra)

    def _params(self, request: AIRequest) -> dict[str, Any]:
        self.check_extra(request.extra)
        messages: list[dict[str, str]] = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        params: dict[str, Any] = {
            "model": request.model or self.default_model,
            "messages": messages,
            "temperature": request.temperature,
        }
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        params.update({k: v for k, v in request.extra.items() if v is not None})
        return params

    def _generate(self, request: AIRequest) -> AIResponse:
        params = self._params(request)
        client = self.client
        started = time.perf_counter()
        try:
            # The SDK's own request (auth, timeouts, its errors), without the typed
            # ``chat.completions.create``: its parameter transform and its answer's
            # model construction walk type hints on every call (about a tenth of a
            # worker's CPU per job). The JSON is read here, each field checked.
            raw = client.post("/chat/completions", body=params, cast_to=Response)
            completion = raw.json()
        except (openai.OpenAIError, ValueError) as exc:
            raise map_openai_error(exc, timeout=self.timeout) from exc
        elapsed = time.perf_counter() - started
        headers = raw.headers
        request_id = headers.get("x-request-id")
        return self._to_response(
            completion,
            requested_model=params["model"],
            request_id=request_id,
            headers=headers,
            elapsed=elapsed,
        )

    def _to_response(
        self,
        completion: object,
        *,
        requested_model: str,
        request_id: str | None,
        headers: Mapping[str, str],
        elapsed: float,
    ) -> AIResponse:
        choices = _field(completion, "choices")
        if not isinstance(choices, list) or not choices:
            raise ProviderResponseError(
                "answer has no choices", provider_name=PROVIDER_NAME, request_id=request_id
            )
        choice = choices[0]
        message = _field(choice, "message")
        if not isinstance(message, dict):
            raise ProviderResponseError(
                "answer's first choice has no message",
                provider_name=PROVIDER_NAME,
                request_id=request_id,
            )
        text = message.get("content")
        if text is not None and not isinstance(text, str):
            raise ProviderResponseError(
                f"answer's content is a {type(text).__name__}, not text",
                provider_name=PROVIDER_NAME,
                request_id=request_id,
            )
        model = _field(completion, "model") or requested_model
        usage = usage_from(completion)
        metadata: dict[str, Any] = {
            "finish_reason": _field(choice, "finish_reason"),
            "response_id": _field(completion, "id"),
            "requested_model": requested_model,
            "rate_limit": rate_limit_info(headers),
        }
        content = text or ""
        calls = _tool_calls(message)
        if calls:
            metadata["tool_calls"] = calls
            answer = _answer_argument(calls[0]["arguments"])
            if answer is not None:
                content = answer
        refusal = message.get("refusal")
        if refusal:
            metadata["refusal"] = refusal
        return AIResponse(
            content=content,
            provider_name=self.name,
            model=str(model),
            usage=usage,
            cost_usd=self.prices.cost(str(model), usage),
            response_time=timedelta(seconds=elapsed),
            request_id=request_id,
            metadata=metadata,
        )

    # --- credentials and models ---------------------------------------------------------
    def validate_credentials(self) -> bool:
        """One ``GET /models``: True if the key works, False if it is refused (401/403)
        or missing. Other failures raise the mapped error (the answer is unknown)."""
        if not self.is_configured():
            return False
        try:
            self.client.models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            return False
        except (openai.OpenAIError, ValueError) as exc:
            raise map_openai_error(exc, timeout=self.timeout) from exc
        return True

    def list_models(self) -> list[str]:
        """The model ids ``GET /models`` lists (raises the mapped error on failure)."""
        try:
            page = self.client.models.list()
            return sorted(model.id for model in page.data)
        except (openai.OpenAIError, ValueError) as exc:
            raise map_openai_error(exc, timeout=self.timeout) from exc

    def get_available_models(self) -> list[str]:
        """Models from ``GET /models``; the price table's names when that call fails."""
        if self.is_configured():
            try:
                return self.list_models()
            except AIProviderError as error:
                log.warning(
                    "openai: listing models failed (%s); using the price table's models",
                    error.error_type,
                )
        return sorted(self.prices.prices)
