"""Submit and follow background work. ``app`` never imports Celery: see app.core.publisher.

The names below are imported on first use (PEP 562), so ``from app.jobs import
submit`` (the ``aiw submit`` path) does not load the agent-run machinery, the Codegen
client or the webhooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.lazy import lazy_exports

if TYPE_CHECKING:
    from app.core.errors import (
        AgentRunNotFoundError,
        AgentRunStateError,
        AgentRunTimeoutError,
        BudgetExceededError,
        CodegenBudgetExhaustedError,
        InvalidBudgetError,
        JobError,
        JobFailedError,
        JobNotFinishedError,
        JobNotFoundError,
        JobTimeoutError,
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
    from app.jobs.budget_admin import Budget, budgets, delete_budget, set_budget
    from app.jobs.job_admin import Attempt, cancel, get_attempts, list_jobs
    from app.jobs.service import Job, JobHandle, get_job, submit
    from app.jobs.stats import usage_stats

_WHERE = {
    **dict.fromkeys(
        (
            "AgentRunNotFoundError", "AgentRunStateError", "AgentRunTimeoutError",
            "BudgetExceededError", "CodegenBudgetExhaustedError", "InvalidBudgetError",
            "JobError", "JobFailedError", "JobNotFinishedError",
            "JobNotFoundError", "JobTimeoutError", "UnknownRemoteRunError",
        ),
        "app.core.errors",
    ),
    "AgentRunState": "app.db.agent_run_models",
    **dict.fromkeys(
        (
            "AgentRunArtifact", "AgentRunEvent", "AgentRunHandle", "AgentRunRecord",
            "get_agent_run", "list_agent_runs", "resume_agent_run", "submit_agent_run",
            "track_agent_run",
        ),
        "app.jobs.agent_runs.service",
    ),
    **dict.fromkeys(("Attempt", "cancel", "get_attempts", "list_jobs"), "app.jobs.job_admin"),
    **dict.fromkeys(("Job", "JobHandle", "get_job", "submit"), "app.jobs.service"),
    **dict.fromkeys(("Budget", "budgets", "delete_budget", "set_budget"), "app.jobs.budget_admin"),
    "usage_stats": "app.jobs.stats",
}  # fmt: skip

__all__ = [
    "AgentRunArtifact",
    "AgentRunEvent",
    "AgentRunHandle",
    "AgentRunNotFoundError",
    "AgentRunRecord",
    "AgentRunState",
    "AgentRunStateError",
    "AgentRunTimeoutError",
    "Attempt",
    "Budget",
    "BudgetExceededError",
    "CodegenBudgetExhaustedError",
    "InvalidBudgetError",
    "Job",
    "JobError",
    "JobFailedError",
    "JobHandle",
    "JobNotFinishedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "UnknownRemoteRunError",
    "budgets",
    "cancel",
    "delete_budget",
    "get_agent_run",
    "get_attempts",
    "get_job",
    "list_agent_runs",
    "list_jobs",
    "resume_agent_run",
    "set_budget",
    "submit",
    "submit_agent_run",
    "track_agent_run",
    "usage_stats",
]


__getattr__, __dir__ = lazy_exports(globals(), _WHERE)
