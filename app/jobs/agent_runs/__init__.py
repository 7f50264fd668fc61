"""Codegen agent runs as tracked jobs: create or track a run, follow it to its end.

The public API is ``service.py``; the two tasks call ``actions.py`` (create,
resume) and ``poller.py`` (the beat-driven poll); ``changes.py`` is what a status
change does; ``codegen.py`` pays every request from the shared budget
(``app.core.budget``).
"""

from app.core.errors import (
    AgentRunNotFoundError,
    AgentRunStateError,
    AgentRunTimeoutError,
    CodegenBudgetExhaustedError,
    UnknownRemoteRunError,
)
from app.db.agent_run_models import AgentRunState
from app.jobs.agent_runs.service import (
    AgentRunArtifact,
    AgentRunEvent,
    AgentRunHandle,
    AgentRunRecord,
    get_agent_run,
    list_agent_runs,
    resume_agent_run,
    submit_agent_run,
    track_agent_run,
)

__all__ = [
    "AgentRunArtifact",
    "AgentRunEvent",
    "AgentRunHandle",
    "AgentRunNotFoundError",
    "AgentRunRecord",
    "AgentRunState",
    "AgentRunStateError",
    "AgentRunTimeoutError",
    "CodegenBudgetExhaustedError",
    "UnknownRemoteRunError",
    "get_agent_run",
    "list_agent_runs",
    "resume_agent_run",
    "submit_agent_run",
    "track_agent_run",
]
