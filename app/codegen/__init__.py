"""Codegen REST client: ``Agent`` / ``Task`` on top of ``CodegenClient`` (the real API).

Knows nothing of providers, jobs or the database (an import-linter contract). See
``agent.py`` for the walk-through and ``status.py`` for what the statuses mean.
"""

from app.codegen.agent import DEFAULT_POLL_INTERVAL, Agent, Task
from app.codegen.client import AGENT_TYPES, DEFAULT_BASE_URL, MAX_PAGE_SIZE, CodegenClient
from app.codegen.models import AgentRun, AgentRunLog, AgentRunLogs, AgentRunPage, PullRequest
from app.codegen.status import (
    FAILURE,
    IN_PROGRESS,
    KNOWN,
    NEEDS_INPUT,
    SUCCESS,
    TERMINAL,
    is_failure,
    is_known,
    is_success,
    is_terminal,
)
from app.core.errors import AgentRunTimeoutError

__all__ = [
    "AGENT_TYPES",
    "DEFAULT_BASE_URL",
    "DEFAULT_POLL_INTERVAL",
    "FAILURE",
    "IN_PROGRESS",
    "KNOWN",
    "MAX_PAGE_SIZE",
    "NEEDS_INPUT",
    "SUCCESS",
    "TERMINAL",
    "Agent",
    "AgentRun",
    "AgentRunLog",
    "AgentRunLogs",
    "AgentRunPage",
    "AgentRunTimeoutError",
    "CodegenClient",
    "PullRequest",
    "Task",
    "is_failure",
    "is_known",
    "is_success",
    "is_terminal",
]
