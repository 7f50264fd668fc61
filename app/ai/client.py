"""``get_ai_client()`` for code written against the seed.

It returns a provider (``generate_response(...)``), one per process and name,
so the in-process stats accumulate across calls. New code should call
``create_ai_provider`` or, for background work, ``app.jobs.submit``.
"""

from __future__ import annotations

import threading

from app.ai.base import AIProvider
from app.ai.factory import create_ai_provider

_clients: dict[str | None, AIProvider] = {}
_lock = threading.Lock()


def get_ai_client(provider_name: str | None = None) -> AIProvider:
    """The shared provider for ``provider_name`` (None: automatic choice with fallback)."""
    with _lock:
        client = _clients.get(provider_name)
        if client is None:
            client = create_ai_provider(provider_name=provider_name)
            _clients[provider_name] = client
        return client


def reset_ai_clients() -> None:
    """Forget the shared providers (after a settings change, and in tests)."""
    with _lock:
        _clients.clear()
