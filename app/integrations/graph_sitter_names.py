"""The seed document's names under ``graph_sitter.ai``, while the integration is installed.

``mount()`` (called by ``app.integrations.graph_sitter.install()``) makes two imports of
the seed document work in graph-sitter's own package:

- ``from graph_sitter.ai.providers import ...``: ``app.integrations.graph_sitter_providers``
  under that name (in ``sys.modules`` and as the ``providers`` attribute of the
  ``graph_sitter.ai`` package). graph-sitter has no such module; if a graph-sitter
  release ships one, it is left alone (and this does nothing).
- ``from graph_sitter.ai.client import get_ai_client``: ``app.ai.client.get_ai_client``
  (``get_ai_client(provider_name="codegen")``) added to graph-sitter's own
  ``graph_sitter.ai.client`` module; its own functions (``get_openai_client``) stay
  as they are. A ``get_ai_client`` graph-sitter defines itself is not replaced.

``unmount()`` (``uninstall()``) takes back exactly what ``mount()`` added.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from types import ModuleType

log = logging.getLogger(__name__)

PACKAGE = "graph_sitter.ai"
PROVIDERS_MODULE = "graph_sitter.ai.providers"
CLIENT_MODULE = "graph_sitter.ai.client"
CLIENT_FUNCTION = "get_ai_client"

_lock = threading.Lock()


def _ours() -> ModuleType:
    from app.integrations import graph_sitter_providers

    return graph_sitter_providers


def _has_own_providers_module() -> bool:
    """True when graph-sitter itself ships ``graph_sitter.ai.providers``."""
    present = sys.modules.get(PROVIDERS_MODULE)
    if present is not None:
        return present is not _ours()
    return importlib.util.find_spec(PROVIDERS_MODULE) is not None


def mount() -> None:
    """Add ``graph_sitter.ai.providers`` and ``graph_sitter.ai.client.get_ai_client``.

    Idempotent. graph-sitter must be importable (``install()`` has checked it).
    """
    from app.ai.client import get_ai_client

    with _lock:
        package = importlib.import_module(PACKAGE)
        client = importlib.import_module(CLIENT_MODULE)
        if _has_own_providers_module():
            log.info("graph-sitter has its own %s; left as it is", PROVIDERS_MODULE)
        else:
            module = _ours()
            sys.modules[PROVIDERS_MODULE] = module
            setattr(package, "providers", module)  # noqa: B010
        current = getattr(client, CLIENT_FUNCTION, None)
        if current is None:
            setattr(client, CLIENT_FUNCTION, get_ai_client)
        elif current is not get_ai_client:
            log.info("graph-sitter has its own %s.get_ai_client; left as it is", CLIENT_MODULE)


def unmount() -> None:
    """Remove what ``mount()`` added (nothing of graph-sitter's own). Idempotent."""
    from app.ai.client import get_ai_client

    with _lock:
        module = _ours()
        if sys.modules.get(PROVIDERS_MODULE) is module:
            del sys.modules[PROVIDERS_MODULE]
        package = sys.modules.get(PACKAGE)
        if package is not None and getattr(package, "providers", None) is module:
            delattr(package, "providers")
        client = sys.modules.get(CLIENT_MODULE)
        if client is not None and getattr(client, CLIENT_FUNCTION, None) is get_ai_client:
            delattr(client, CLIENT_FUNCTION)


def is_mounted() -> bool:
    return sys.modules.get(PROVIDERS_MODULE) is _ours()
