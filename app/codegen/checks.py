"""Checks of what the Codegen API takes, made before any request (no network here).

Each ``check_*`` returns the value as it will be sent, or raises
``InvalidRequestError`` naming the field and what was wrong. ``CodegenClient`` runs
them on every call; ``app.codegen.options`` runs them when a request is first built,
so a bad value is refused before anything is queued or created.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.core.errors import InvalidRequestError

#: ``limit`` of the list, logs and repos endpoints is 1..100.
MAX_PAGE_SIZE = 100
#: ``CreateAgentRunInput.agent_type``.
AGENT_TYPES: frozenset[str] = frozenset({"codegen", "claude_code"})


def check_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InvalidRequestError("prompt is empty")
    return prompt


def check_page(skip: object, limit: object) -> None:
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise InvalidRequestError(f"skip must be an integer >= 0, got {skip!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequestError(
            f"limit must be an integer between 1 and {MAX_PAGE_SIZE}, got {limit!r}"
        )


def check_images(images: object) -> list[str] | None:
    if images is None:
        return None
    if isinstance(images, str | bytes) or not isinstance(images, Sequence):
        raise InvalidRequestError("images must be a list of base64 data URI strings")
    for image in images:
        if not isinstance(image, str) or not image.strip():
            raise InvalidRequestError("images must be a list of base64 data URI strings")
    return list(images)


def check_metadata(metadata: object) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidRequestError("metadata must be a JSON object (a dict with string keys)")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"metadata is not JSON-serializable: {exc}") from None
    return dict(metadata)


def check_model(model: object) -> str:
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(f"model must be a non-empty string, got {model!r}")
    return model


def check_agent_type(agent_type: object) -> str:
    if not isinstance(agent_type, str) or agent_type not in AGENT_TYPES:
        raise InvalidRequestError(
            f"agent_type must be one of {sorted(AGENT_TYPES)}, got {agent_type!r}"
        )
    return agent_type
