"""``graph_sitter.ai.providers``: the seed document's module, on ai-worker's providers.

graph-sitter has no ``graph_sitter.ai.providers``; the seed document ("Enhanced AI
Provider System") imports its factory, status functions and error classes from there.
While the integration is installed (``app.integrations.graph_sitter.install()``,
``aiw-graph-sitter run``, ``AIW_GRAPH_SITTER=1``) this module is importable under that
name (``app.integrations.graph_sitter_names``)::

    from graph_sitter.ai.providers import create_ai_provider, ProviderRateLimitError

Every name is ``app.ai.providers``'s, the same object, with one exception:
``get_provider_status`` answers in the seed's shape, one entry per provider name
(``status["openai"]["is_available"]``, ``status["codegen"].get("error")``), where
ai-worker's own (``app.ai.providers.get_provider_status``) nests the providers under
``"providers"`` next to ``automatic_order`` and ``prefer_codegen``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.ai import factory
from app.ai import providers as _providers

if TYPE_CHECKING:
    from app.config import Settings

#: What each built-in provider needs, for the ``error`` of an unconfigured one.
_NEEDS = {"openai": "OPENAI_API_KEY", "codegen": "CODEGEN_TOKEN and CODEGEN_ORG_ID"}


def _why_unavailable(name: str, entry: dict[str, Any]) -> str:
    if not entry["configured"]:
        needs = _NEEDS.get(name)
        return f"not configured (set {needs})" if needs else "not configured"
    if entry.get("error"):
        return f"credentials could not be checked ({entry['error']})"
    return "credentials refused"


def get_provider_status(
    validate: bool = True, settings: Settings | None = None
) -> dict[str, dict[str, Any]]:
    """Health of every registered provider, by name, in the seed's shape.

    Each entry is ai-worker's status entry (``configured``, ``valid``, ``available``,
    ``base_url``, timeouts; never a secret) plus ``is_available`` and, for a provider
    that is not available, ``error``: why, in words (``"not configured (set
    OPENAI_API_KEY)"``, ``"credentials refused"``, ``"credentials could not be checked
    (connection_error)"``; the error type, if any, stays in ``error_type``).

    ``validate`` (default True, a health check): one cheap call per configured
    provider to check its credentials, remembered for five minutes
    (``app.ai.factory.VALIDATION_TTL``); ``validate=False`` looks at the settings only.
    """
    status = factory.get_provider_status(validate=validate, settings=settings)
    health: dict[str, dict[str, Any]] = {}
    for name, entry in status["providers"].items():
        item = {**entry, "is_available": bool(entry["available"])}
        if "error" in entry:
            item["error_type"] = entry["error"]
            del item["error"]
        if not item["is_available"]:
            item["error"] = _why_unavailable(name, entry)
        health[name] = item
    return health


def __getattr__(name: str) -> Any:
    # Every other name is app.ai.providers's own object (its OpenAIProvider and
    # CodegenProvider load when asked for: they import their SDKs).
    return getattr(_providers, name)


__all__ = list(_providers.__all__)
