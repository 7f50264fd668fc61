"""The provider interface: request, response, in-process stats and the base class."""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from app.ai.pricing import PriceTable, get_price_table
from app.config import get_settings
from app.core.errors import AIProviderError, InvalidRequestError, ProviderNotConfiguredError
from app.core.retry import RetryPolicy

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)


class Usage(BaseModel):
    """Token counts of one answer.

    ``cached_tokens`` are part of ``prompt_tokens``; ``reasoning_tokens`` of ``completion_tokens``.
    """

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class AIResponse(BaseModel):
    """The same shape from every provider."""

    model_config = ConfigDict(frozen=True)

    content: str
    provider_name: str
    model: str
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    response_time: timedelta = timedelta(0)
    request_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AIRequest(BaseModel):
    """A validated request. Built before any network call, so bad input never travels."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    system_prompt: str | None = None
    model: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def build(
        cls,
        prompt: object,
        system_prompt: object = None,
        model: object = None,
        temperature: object = 0.0,
        max_tokens: object = None,
        *,
        max_prompt_chars: int | None = None,
        **extra: Any,
    ) -> AIRequest:
        """Check every parameter; raise ``InvalidRequestError`` naming the bad one."""
        if prompt is None:
            raise InvalidRequestError("prompt is required")
        if not isinstance(prompt, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InvalidRequestError("prompt is empty")
        check_text("prompt", prompt)
        limit = max_prompt_chars or get_settings().ai_max_prompt_chars
        size = len(prompt) + (len(system_prompt) if isinstance(system_prompt, str) else 0)
        if size > limit:
            raise InvalidRequestError(
                f"prompt is {size} characters, over the maximum of {limit} (AI_MAX_PROMPT_CHARS)"
            )
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise InvalidRequestError("system_prompt must be a string or None")
        if system_prompt is not None:
            check_text("system_prompt", system_prompt)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise InvalidRequestError("model must be a non-empty string or None")
        if model is not None:
            check_text("model", model)
            if len(model) > MAX_MODEL_CHARS:
                raise InvalidRequestError(
                    f"model is {len(model)} characters, more than {MAX_MODEL_CHARS}"
                )
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InvalidRequestError("temperature must be a number")
        if not (0.0 <= float(temperature) <= 2.0) or math.isnan(float(temperature)):
            raise InvalidRequestError(f"temperature must be between 0 and 2, got {temperature}")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
        ):
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if max_tokens is not None and max_tokens > MAX_TOKENS:
            raise InvalidRequestError(
                f"max_tokens is {max_tokens}, more than any model answers ({MAX_TOKENS})"
            )
        return cls(
            prompt=prompt,
            system_prompt=system_prompt,
            model=model,
            temperature=float(temperature),
            max_tokens=max_tokens,
            extra=extra,
        )


#: No model answers more tokens than this (a larger ``max_tokens`` is a mistake).
MAX_TOKENS = 1_000_000
#: Model names are stored in columns of this size.
MAX_MODEL_CHARS = 255


def check_text(name: str, value: str) -> str:
    """Text that can travel and be stored: no NUL byte (PostgreSQL refuses it), no lone
    surrogate (it has no UTF-8 form)."""
    if "\x00" in value:
        raise InvalidRequestError(f"{name} contains a NUL character (\\x00)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{name} is not valid Unicode text (a lone surrogate at position {exc.start})"
        ) from None
    return value


def check_json_text(name: str, value: object, depth: int = 0) -> None:
    """``check_text`` on every string (keys included) of a JSON-like value."""
    if depth > 50:
        raise InvalidRequestError(f"{name} is nested too deeply")
    if isinstance(value, str):
        check_text(name, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                check_text(f"{name} key", key)
            check_json_text(name, item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            check_json_text(name, item, depth + 1)


def check_timeout(timeout: float | None) -> float | None:
    """A timeout argument must be a positive number of seconds (or None for the default)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidRequestError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def check_max_retries(max_retries: int | None) -> int | None:
    if max_retries is None:
        return None
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidRequestError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    return max_retries


class ProviderStats:
    """Thread-safe running figures of one provider instance (the in-process view)."""

    _WINDOW = 1000  # latencies kept for the p95

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_count = 0
        self.error_count = 0
        self.errors_by_type: dict[str, int] = {}
        self._latencies: deque[float] = deque(maxlen=self._WINDOW)
        self._latency_sum = 0.0
        self._latency_n = 0
        self.tokens = {"prompt": 0, "completion": 0, "cached": 0, "reasoning": 0}
        self.cost_usd = 0.0

    def record_success(self, response: AIResponse) -> None:
        seconds = response.response_time.total_seconds()
        with self._lock:
            self.request_count += 1
            self._add_latency(seconds)
            self.tokens["prompt"] += response.usage.prompt_tokens
            self.tokens["completion"] += response.usage.completion_tokens
            self.tokens["cached"] += response.usage.cached_tokens
            self.tokens["reasoning"] += response.usage.reasoning_tokens
            if response.cost_usd is not None:
                self.cost_usd += response.cost_usd

    def record_error(self, error: BaseException, seconds: float) -> None:
        name = type(error).__name__
        with self._lock:
            self.request_count += 1
            self.error_count += 1
            self.errors_by_type[name] = self.errors_by_type.get(name, 0) + 1
            self._add_latency(seconds)

    def _add_latency(self, seconds: float) -> None:
        self._latencies.append(seconds)
        self._latency_sum += seconds
        self._latency_n += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self._latencies)
            n = self.request_count
            p95 = lat[min(len(lat) - 1, math.ceil(0.95 * len(lat)) - 1)] if lat else None
            return {
                "request_count": n,
                "success_count": n - self.error_count,
                "error_count": self.error_count,
                "errors_by_type": dict(self.errors_by_type),
                # 0.0 before the first call, never None: the seed's samples format it
                # (f"{rate:.2%}"); request_count == 0 tells "no calls" apart.
                "success_rate": (n - self.error_count) / n if n else 0.0,
                "average_response_time": self._latency_sum / self._latency_n
                if self._latency_n
                else None,
                "p95_response_time": p95,
                "tokens": dict(self.tokens),
                "total_tokens": self.tokens["prompt"] + self.tokens["completion"],
                "cost_usd": round(self.cost_usd, 10),
            }


class AIProvider(ABC):
    """Base of every provider. Subclasses implement ``_generate`` (one try, no retry).

    ``generate_response`` validates, then runs ``_generate`` under the retry policy and
    records stats. ``generate_once`` is a single try (the Celery task owns the retries).
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.timeout = check_timeout(timeout) or self.default_timeout()
        retries = check_max_retries(max_retries)
        self.max_retries = self.default_max_retries() if retries is None else retries
        self.retry_policy = RetryPolicy.from_settings(self.settings, max_retries=self.max_retries)
        self.prices = prices or get_price_table(self.settings)
        self.stats = ProviderStats()

    # --- to implement ---------------------------------------------------------------
    @abstractmethod
    def default_timeout(self) -> float: ...

    @abstractmethod
    def default_max_retries(self) -> int: ...

    @abstractmethod
    def is_configured(self) -> bool:
        """True when the credentials this provider needs are present (no network)."""

    @abstractmethod
    def _generate(self, request: AIRequest) -> AIResponse:
        """One try. Raise an ``AIProviderError`` subclass on failure."""

    @abstractmethod
    def validate_credentials(self) -> bool:
        """Ask the provider whether the credentials work (one cheap call)."""

    @abstractmethod
    def get_available_models(self) -> list[str]: ...

    @property
    def default_model(self) -> str | None:
        """The model used when a request names none (None: the provider decides)."""
        return None

    # --- shared behaviour -----------------------------------------------------------
    def require_configured(self) -> None:
        if not self.is_configured():
            raise ProviderNotConfiguredError(
                f"{self.name} has no credentials configured", provider_name=self.name
            )

    def build_request(self, prompt: object, **kwargs: Any) -> AIRequest:
        return AIRequest.build(prompt, max_prompt_chars=self.settings.ai_max_prompt_chars, **kwargs)

    def check_request(self, request: AIRequest) -> None:
        """Refuse (``InvalidRequestError``) what this provider cannot take, with no network
        call: ``submit`` asks it before a job is written. The base accepts any option."""
        return None

    def generate_response(
        self,
        prompt: str,
        system_prompt: str | None = None,
        model: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        **provider_specific: Any,
    ) -> AIResponse:
        """Answer ``prompt``, retrying transient failures per the retry policy."""
        request = self.build_request(
            prompt,
            system_prompt=system_prompt,
            model=model,
            temperature=temperature,
            max_tokens=max_tokens,
            **provider_specific,
        )
        self.require_configured()

        def before_sleep(error: BaseException, delay: float) -> None:
            log.info("%s: %s; retrying in %.2fs", self.name, type(error).__name__, delay)

        return self.retry_policy.call(
            lambda: self.generate_once(request), before_sleep=before_sleep
        )

    def generate_once(self, request: AIRequest) -> AIResponse:
        """One try of a validated request, timed and counted in the stats."""
        self.require_configured()
        started = time.perf_counter()
        try:
            response = self._generate(request)
        except AIProviderError as error:
            if error.provider_name is None:
                error.provider_name = self.name
            self.stats.record_error(error, time.perf_counter() - started)
            raise
        self.stats.record_success(response)
        if self.settings.enable_ai_logging:
            log.info(
                "%s answered model=%s tokens=%d cost=%s in %.3fs",
                self.name,
                response.model,
                response.usage.total_tokens,
                response.cost_usd,
                response.response_time.total_seconds(),
            )
        return response

    def get_stats(self) -> dict[str, Any]:
        return {"provider_name": self.name, **self.stats.snapshot()}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} configured={self.is_configured()}>"
