"""Codegen REST client: ``Agent`` / ``Task`` on top of ``CodegenClient`` (the real API).

Knows nothing of providers, jobs or the database (an import-linter contract). See
``agent.py`` for the walk-through, ``status.py`` for what the statuses mean,
``options.py`` for turning request options into a run's input and ``repos.py`` for
``owner/repo`` -> ``repo_id``.
"""

from app.codegen.agent import DEFAULT_POLL_INTERVAL, Agent, Task
from app.codegen.checks import AGENT_TYPES, MAX_PAGE_SIZE
from app.codegen.client import DEFAULT_BASE_URL, CodegenClient
from app.codegen.models import (
    AgentRun,
    AgentRunLog,
    AgentRunLogs,
    AgentRunPage,
    PullRequest,
    Repo,
    RepoPage,
)
from app.codegen.options import (
    DEFAULT_MODEL,
    RunInput,
    build_run_input,
    compose_prompt,
    resolve_run_input,
)
from app.codegen.repos import RepoLookup, RepoResolver, check_repository
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
    "DEFAULT_MODEL",
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
    "Repo",
    "RepoLookup",
    "RepoPage",
    "RepoResolver",
    "RunInput",
    "Task",
    "build_run_input",
    "check_repository",
    "compose_prompt",
    "is_failure",
    "is_known",
    "is_success",
    "is_terminal",
    "resolve_run_input",
]
