"""Errors of the Codegen client that the shared tree (``app.ai.errors``) does not have.

Everything else the client raises comes from ``app.ai.errors``: HTTP statuses go
through ``error_for_status``, transport failures are ``ProviderTimeoutError`` /
``ProviderConnectionError``, garbled bodies ``ProviderResponseError`` and runs that
end badly ``AgentRunFailedError``.
"""

from __future__ import annotations

from typing import Any

from app.ai.errors import ProviderTimeoutError


class AgentRunTimeoutError(ProviderTimeoutError):
    """``Task.wait_for_completion`` reached its deadline before the run ended.

    A ``ProviderTimeoutError`` (``timeout_duration`` is the wait's timeout), but *not*
    retryable: the run is still going on Codegen's side, and trying the request again
    would start a second run. Follow the same run instead (``agent.get(run_id)``).
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        run_id: int | None = None,
        last_status: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.run_id = run_id
        self.last_status = last_status

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "run_id": self.run_id, "last_status": self.last_status}
