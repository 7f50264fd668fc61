"""Codegen REST client: ``Agent`` / ``Task`` on top of ``CodegenClient`` (the real API).

Knows nothing of providers, jobs or the database (an import-linter contract). See
``agent.py`` for the walk-through, ``status.py`` for what the statuses mean,
``options.py`` for turning request options into a run's input and ``repos.py`` for
``owner/repo`` -> ``repo_id``.

The names below are imported on first use (PEP 562): ``app.codegen.options`` (what
``aiw submit`` checks a request with) does not load the HTTP client (requests) or the
models of the API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.lazy import lazy_exports

if TYPE_CHECKING:
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

_WHERE = {
    "DEFAULT_POLL_INTERVAL": "app.codegen.agent",
    "Agent": "app.codegen.agent",
    "Task": "app.codegen.agent",
    "AGENT_TYPES": "app.codegen.checks",
    "MAX_PAGE_SIZE": "app.codegen.checks",
    "DEFAULT_BASE_URL": "app.codegen.client",
    "CodegenClient": "app.codegen.client",
    "AgentRun": "app.codegen.models",
    "AgentRunLog": "app.codegen.models",
    "AgentRunLogs": "app.codegen.models",
    "AgentRunPage": "app.codegen.models",
    "PullRequest": "app.codegen.models",
    "Repo": "app.codegen.models",
    "RepoPage": "app.codegen.models",
    "DEFAULT_MODEL": "app.codegen.options",
    "RunInput": "app.codegen.options",
    "build_run_input": "app.codegen.options",
    "compose_prompt": "app.codegen.options",
    "resolve_run_input": "app.codegen.options",
    "RepoLookup": "app.codegen.repos",
    "RepoResolver": "app.codegen.repos",
    "check_repository": "app.codegen.repos",
    "FAILURE": "app.codegen.status",
    "IN_PROGRESS": "app.codegen.status",
    "KNOWN": "app.codegen.status",
    "NEEDS_INPUT": "app.codegen.status",
    "SUCCESS": "app.codegen.status",
    "TERMINAL": "app.codegen.status",
    "is_failure": "app.codegen.status",
    "is_known": "app.codegen.status",
    "is_success": "app.codegen.status",
    "is_terminal": "app.codegen.status",
    "AgentRunTimeoutError": "app.core.errors",
}

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


__getattr__, __dir__ = lazy_exports(globals(), _WHERE)
