"""Choosing providers: the registry, automatic choice, fallback chains, status.

    create_ai_provider()                        # automatic: by credentials, Codegen first
    create_ai_provider(prefer_codegen=False)    # automatic, OpenAI first
    create_ai_provider(provider_name="openai")  # forced: never falls back

With ``fallback_enabled`` and more than one usable provider, the result is a
``ProviderChain``: it asks each provider in turn (each with its own retry
policy) and moves on when one is unavailable, refuses the credentials, or runs
out of retries. The answer's ``provider_name`` says who answered and
``metadata["fallback_errors"]`` what happened before.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from app.ai.base import AIProvider, AIRequest, AIResponse, check_max_retries, check_timeout
from app.config import get_settings
from app.core.errors import (
    AIProviderError,
    ProviderAuthenticationError,
    ProviderUnavailableError,
    UnknownProviderError,
)

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

ProviderFactory = Callable[..., AIProvider]

VALIDATION_TTL = 300.0  # seconds a credential check is trusted


def _builtin_openai(**kwargs: Any) -> AIProvider:
    from app.ai.openai_provider import OpenAIProvider

    return OpenAIProvider(**kwargs)


def _builtin_codegen(**kwargs: Any) -> AIProvider:
    from app.ai.codegen_provider import CodegenProvider

    return CodegenProvider(**kwargs)


_registry: dict[str, ProviderFactory] = {"codegen": _builtin_codegen, "openai": _builtin_openai}
_registry_lock = threading.Lock()


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make a custom provider available by name.

    ``factory(settings=..., timeout=..., max_retries=...)`` returns an ``AIProvider``
    (a subclass itself works). Registered providers join the automatic choice after
    the built-in ones when they report ``is_configured()``.
    """
    if not name or not name.strip():
        raise ValueError("provider name must be non-empty")
    with _registry_lock:
        _registry[name] = factory


def unregister_provider(name: str) -> None:
    if name in ("openai", "codegen"):
        raise ValueError(f"the built-in provider {name!r} cannot be unregistered")
    with _registry_lock:
        _registry.pop(name, None)


def provider_names() -> list[str]:
    with _registry_lock:
        return list(_registry)


def build_provider(
    name: str,
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
) -> AIProvider:
    """One provider by name, without checking credentials (no network)."""
    with _registry_lock:
        factory = _registry.get(name)
    if factory is None:
        known = ", ".join(provider_names())
        raise UnknownProviderError(f"unknown provider {name!r}; known providers: {known}")
    return factory(settings=settings or get_settings(), timeout=timeout, max_retries=max_retries)


def automatic_order(prefer_codegen: bool = True, settings: Settings | None = None) -> list[str]:
    """Names of the configured providers, in the order automatic choice tries them."""
    settings = settings or get_settings()
    names = [n for n in provider_names() if n not in ("openai", "codegen")]
    builtin = ["codegen", "openai"] if prefer_codegen else ["openai", "codegen"]
    configured = []
    for name in builtin + names:
        try:
            if build_provider(name, settings=settings).is_configured():
                configured.append(name)
        except AIProviderError:
            continue
    return configured


# --- credential validation, cached -----------------------------------------------------

_validation_cache: dict[tuple[str, str], tuple[bool, float]] = {}
_validation_lock = threading.Lock()


def _credential_fingerprint(provider: AIProvider) -> str:
    """A digest of what identifies the credentials (kept in memory only, never shown)."""
    s = provider.settings
    parts = [type(provider).__name__]
    if provider.name == "openai":
        parts += [
            s.openai_api_key.get_secret_value() if s.openai_api_key else "",
            s.openai_base_url or "",
        ]
    elif provider.name == "codegen":
        parts += [
            s.codegen_token.get_secret_value() if s.codegen_token else "",
            str(s.codegen_org_id),
            s.codegen_base_url,
        ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def check_credentials(provider: AIProvider, *, now: float | None = None) -> bool:
    """``provider.validate_credentials()``, remembered for ``VALIDATION_TTL`` seconds.

    Only a definite answer is remembered; an outage (connection error, 5xx) raises
    and is asked again next time.
    """
    key = (provider.name, _credential_fingerprint(provider))
    now = time.monotonic() if now is None else now
    with _validation_lock:
        cached = _validation_cache.get(key)
    if cached is not None and cached[1] > now:
        return cached[0]
    ok = bool(provider.validate_credentials())
    with _validation_lock:
        _validation_cache[key] = (ok, now + VALIDATION_TTL)
    return ok


def clear_validation_cache() -> None:
    with _validation_lock:
        _validation_cache.clear()


# --- the chain ------------------------------------------------------------------------


class ProviderChain(AIProvider):
    """Several providers tried in order; each keeps its own retry policy and stats."""

    name = "chain"

    def __init__(self, providers: list[AIProvider], *, settings: Settings | None = None) -> None:
        if not providers:
            raise ProviderUnavailableError("a provider chain needs at least one provider")
        self.providers = list(providers)
        super().__init__(settings=settings or providers[0].settings)

    def default_timeout(self) -> float:
        return max(p.timeout for p in self.providers)

    def default_max_retries(self) -> int:
        return 0

    def is_configured(self) -> bool:
        return any(p.is_configured() for p in self.providers)

    def validate_credentials(self) -> bool:
        return any(check_credentials(p) for p in self.providers)

    def get_available_models(self) -> list[str]:
        models: list[str] = []
        for provider in self.providers:
            models += [m for m in provider.get_available_models() if m not in models]
        return models

    def _generate(self, request: AIRequest) -> AIResponse:  # pragma: no cover - not used
        raise NotImplementedError("ProviderChain answers through generate_response")

    def generate_response(
        self,
        prompt: str,
        system_prompt: str | None = None,
        model: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        **provider_specific: Any,
    ) -> AIResponse:
        self.build_request(  # refuse bad input before any provider is asked
            prompt,
            system_prompt=system_prompt,
            model=model,
            temperature=temperature,
            max_tokens=max_tokens,
        )
        failures: list[dict[str, Any]] = []
        last: AIProviderError | None = None
        for provider in self.providers:
            try:
                response = provider.generate_response(
                    prompt,
                    system_prompt=system_prompt,
                    model=model,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    **provider_specific,
                )
            except AIProviderError as error:
                if not error.fallback:
                    raise
                log.warning("%s failed (%s); falling back", provider.name, error.error_type)
                failures.append({"provider": provider.name, **error.to_dict()})
                last = error
                continue
            if not failures:
                return response
            return response.model_copy(
                update={"metadata": {**response.metadata, "fallback_errors": failures}}
            )
        assert last is not None
        raise last

    def get_stats(self) -> dict[str, Any]:
        per = [p.get_stats() for p in self.providers]
        total = sum(s["request_count"] for s in per)
        errors = sum(s["error_count"] for s in per)
        return {
            "provider_name": self.name,
            "request_count": total,
            "error_count": errors,
            "success_rate": (total - errors) / total if total else 0.0,  # as ProviderStats
            "cost_usd": sum(s["cost_usd"] for s in per),
            "providers": {s["provider_name"]: s for s in per},
        }

    def __repr__(self) -> str:
        return f"<ProviderChain {[p.name for p in self.providers]}>"


# --- the public factory ----------------------------------------------------------------


def create_ai_provider(
    provider_name: str | None = None,
    prefer_codegen: bool = True,
    fallback_enabled: bool = True,
    validate_on_creation: bool = True,
    timeout: float | None = None,
    max_retries: int | None = None,
    *,
    settings: Settings | None = None,
) -> AIProvider:
    """A provider (or a fallback chain) ready to ``generate_response``.

    Raises, before any AI call: ``UnknownProviderError`` for a name nobody registered,
    ``ProviderNotConfiguredError`` when a forced provider lacks credentials,
    ``ProviderAuthenticationError`` when validation says its credentials are refused,
    ``ProviderUnavailableError`` when automatic choice finds nothing usable, and
    ``InvalidRequestError`` for a bad timeout or max_retries.
    """
    settings = settings or get_settings()
    timeout = check_timeout(timeout)
    max_retries = check_max_retries(max_retries)
    options: dict[str, Any] = {"settings": settings, "timeout": timeout, "max_retries": max_retries}

    if provider_name is not None:
        provider = build_provider(provider_name, **options)
        provider.require_configured()
        if validate_on_creation and not check_credentials(provider):
            raise ProviderAuthenticationError(
                f"{provider_name} refused the configured credentials", provider_name=provider_name
            )
        return provider

    names = automatic_order(prefer_codegen, settings)
    log.debug("automatic choice: configured %s (prefer_codegen=%s)", names, prefer_codegen)
    if not names:
        raise ProviderUnavailableError(
            "no AI provider has credentials: set OPENAI_API_KEY, or CODEGEN_TOKEN and "
            "CODEGEN_ORG_ID, or register a provider"
        )
    usable: list[AIProvider] = []
    for name in names:
        provider = build_provider(name, **options)
        if validate_on_creation:
            try:
                if not check_credentials(provider):
                    log.warning("%s credentials refused; leaving it out", name)
                    continue
            except AIProviderError as error:
                log.warning(
                    "%s could not be validated (%s); leaving it out", name, error.error_type
                )
                continue
        usable.append(provider)
        if not fallback_enabled:
            break
    if not usable:
        raise ProviderUnavailableError(
            f"no AI provider is usable: {', '.join(names)} failed credential validation"
        )
    log.debug("chosen: %s", [p.name for p in usable])
    if len(usable) == 1:
        return usable[0]
    return ProviderChain(usable, settings=settings)


# --- status without secrets ------------------------------------------------------------


def _public_url(url: str | None) -> str | None:
    """A URL with any user:password part removed."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def detect_available_credentials(settings: Settings | None = None) -> dict[str, bool]:
    """Which providers have credentials configured. Never any part of a secret."""
    settings = settings or get_settings()
    found: dict[str, bool] = {}
    for name in provider_names():
        try:
            found[name] = build_provider(name, settings=settings).is_configured()
        except AIProviderError:
            found[name] = False
    return found


def get_provider_status(validate: bool = False, settings: Settings | None = None) -> dict[str, Any]:
    """Per provider: configured, (optionally) validated, base URL, timeouts. No secrets."""
    settings = settings or get_settings()
    providers: dict[str, Any] = {}
    for name in provider_names():
        provider = build_provider(name, settings=settings)
        entry: dict[str, Any] = {
            "configured": provider.is_configured(),
            "timeout": provider.timeout,
            "max_retries": provider.max_retries,
        }
        if name == "openai":
            entry["base_url"] = _public_url(settings.openai_base_url) or "https://api.openai.com/v1"
            entry["default_model"] = settings.openai_default_model
        elif name == "codegen":
            entry["base_url"] = _public_url(settings.codegen_base_url)
            entry["org_id"] = settings.codegen_org_id
        entry["valid"] = None
        if validate and entry["configured"]:
            try:
                entry["valid"] = check_credentials(provider)
            except AIProviderError as error:
                entry["valid"] = False
                entry["error"] = error.error_type
        entry["available"] = entry["configured"] and entry["valid"] is not False
        providers[name] = entry
    return {
        "providers": providers,
        "automatic_order": automatic_order(settings.prefer_codegen, settings),
        "prefer_codegen": settings.prefer_codegen,
    }


_TRAITS: dict[str, dict[str, Any]] = {
    "openai": {
        "kind": "chat completion",
        "latency": "seconds",
        "reports_usage": True,
        "best_for": "short answers, code questions, graph-sitter codebase.ai",
    },
    "codegen": {
        "kind": "remote agent run",
        "latency": "minutes",
        "reports_usage": False,
        "best_for": "long repository work that ends in a pull request",
    },
}


def get_provider_comparison(
    validate: bool = False, settings: Settings | None = None
) -> dict[str, Any]:
    """Side by side: what each provider is, whether it is usable, and a recommendation."""
    settings = settings or get_settings()
    status = get_provider_status(validate=validate, settings=settings)
    providers = {}
    for name, entry in status["providers"].items():
        providers[name] = {**_TRAITS.get(name, {"kind": "custom"}), **entry}
    available = [n for n in status["automatic_order"] if providers[n]["available"]]
    return {
        "providers": providers,
        "summary": {
            "available_providers": available,
            "configured_count": sum(1 for p in providers.values() if p["configured"]),
            "recommended_provider": available[0] if available else None,
            "fallback_possible": len(available) > 1,
        },
    }
