"""What a worker process works out once per settings for the job runner: its
providers, its automatic chain, its database's dialect, the default models, the tag
caps and the credential digests that name cooldowns. ``reset_providers`` forgets it
all (after a fork, or when settings change)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.ai.base import AIProvider, AIRequest
from app.ai.factory import automatic_order, build_provider, provider_names
from app.core.cooldown import credential_digest
from app.db.session import database_url
from app.jobs.records import Try

if TYPE_CHECKING:
    from app.config import Settings


@dataclass(frozen=True)
class Claim:
    """A claimed try of a job: its attempt, its claim token and what to ask."""

    tried: Try
    token: str
    request: AIRequest
    row: Mapping[str, Any]  # the claimed job's columns (``hotpath.CLAIMED``)


_providers: dict[tuple[str, int], AIProvider] = {}
_providers_lock = threading.Lock()
_chains: dict[int, list[str]] = {}
_dialects: dict[int, bool] = {}
_defaults: dict[int, dict[str, str]] = {}
_caps: dict[int, dict[str, int]] = {}
_digests: dict[tuple[int, str], str] = {}


def provider(name: str, settings: Settings) -> AIProvider:
    """This process's provider ``name`` (one per name and settings)."""
    key = (name, id(settings))
    with _providers_lock:
        found = _providers.get(key)
        if found is None:
            if len(_providers) > 32:
                _providers.clear()
            found = _providers[key] = build_provider(name, settings=settings)
        return found


def reset_providers() -> None:
    """Forget cached providers and chains (after fork, or when settings change)."""
    with _providers_lock:
        for cache in (_providers, _chains, _dialects, _defaults, _digests, _caps):
            cache.clear()


def automatic_chain(settings: Settings) -> list[str]:
    """The automatic provider order of this worker (computed once per settings)."""
    chain = _chains.get(id(settings))
    if chain is None:
        chain = _chains[id(settings)] = automatic_order(settings.prefer_codegen, settings)
    return chain


def tag_caps(settings: Settings) -> dict[str, int]:
    known = _caps.get(id(settings))
    if known is None:
        known = _caps[id(settings)] = settings.tag_caps
    return known


def on_postgresql(settings: Settings) -> bool:
    known = _dialects.get(id(settings))
    if known is None:
        known = _dialects[id(settings)] = database_url(settings).startswith("postgresql")
    return known


def default_models(settings: Settings) -> dict[str, str]:
    """Each provider's default model (the attempt's model when the job names none)."""
    known = _defaults.get(id(settings))
    if known is None:
        models = {name: provider(name, settings).default_model for name in provider_names()}
        known = _defaults[id(settings)] = {k: v for k, v in models.items() if v}
    return known


def cooldown_name(provider_name: str, model: str | None, settings: Settings) -> str:
    """What a 429 pauses: the provider and key, and for OpenAI, which limits each model
    apart, only the model the answer was for."""
    digest = _digests.get((id(settings), provider_name))
    if digest is None:
        digest = _digests[(id(settings), provider_name)] = credential_digest(
            settings, provider_name
        )
    if provider_name == "openai" and model:
        return f"{provider_name}:{digest}:{model}"
    return f"{provider_name}:{digest}"


__all__ = [
    "Claim",
    "automatic_chain",
    "cooldown_name",
    "default_models",
    "on_postgresql",
    "provider",
    "reset_providers",
    "tag_caps",
]
