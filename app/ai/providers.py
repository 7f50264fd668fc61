"""The public provider API (names kept from the seed).

from app.ai.providers import create_ai_provider
provider = create_ai_provider()
answer = provider.generate_response("Explain this diff", system_prompt="...")
answer.content, answer.provider_name, answer.usage, answer.cost_usd
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.ai.base import AIProvider, AIRequest, AIResponse, ProviderStats, Usage
from app.ai.factory import (
    ProviderChain,
    create_ai_provider,
    detect_available_credentials,
    get_provider_comparison,
    get_provider_status,
    provider_names,
    register_provider,
    unregister_provider,
)
from app.core.errors import (
    AgentRunFailedError,
    AIProviderError,
    ContextTooLongError,
    InvalidRequestError,
    ProviderAuthenticationError,
    ProviderBadRequestError,
    ProviderConflictError,
    ProviderConnectionError,
    ProviderNotConfiguredError,
    ProviderNotFoundError,
    ProviderQuotaError,
    ProviderRateLimitError,
    ProviderResponseError,
    ProviderServerError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    UnknownProviderError,
)

if TYPE_CHECKING:
    from app.ai.codegen_provider import CodegenProvider
    from app.ai.openai_provider import OpenAIProvider


def __getattr__(name: str) -> Any:
    # The concrete providers import their SDKs; load them only when asked for.
    if name == "OpenAIProvider":
        from app.ai.openai_provider import OpenAIProvider

        return OpenAIProvider
    if name == "CodegenProvider":
        from app.ai.codegen_provider import CodegenProvider

        return CodegenProvider
    raise AttributeError(name)


__all__ = [
    "AIProvider",
    "AIProviderError",
    "AIRequest",
    "AIResponse",
    "AgentRunFailedError",
    "CodegenProvider",
    "ContextTooLongError",
    "InvalidRequestError",
    "OpenAIProvider",
    "ProviderAuthenticationError",
    "ProviderBadRequestError",
    "ProviderChain",
    "ProviderConflictError",
    "ProviderConnectionError",
    "ProviderNotConfiguredError",
    "ProviderNotFoundError",
    "ProviderQuotaError",
    "ProviderRateLimitError",
    "ProviderResponseError",
    "ProviderServerError",
    "ProviderStats",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "UnknownProviderError",
    "Usage",
    "create_ai_provider",
    "detect_available_credentials",
    "get_provider_comparison",
    "get_provider_status",
    "provider_names",
    "register_provider",
    "unregister_provider",
]
