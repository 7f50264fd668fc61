"""Submit and follow background work. ``app`` never imports Celery: see publisher.py."""

from app.jobs.errors import (
    JobError,
    JobFailedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobTimeoutError,
)
from app.jobs.service import (
    Attempt,
    Job,
    JobHandle,
    cancel,
    get_attempts,
    get_job,
    list_jobs,
    submit,
)
from app.jobs.stats import usage_stats

__all__ = [
    "Attempt",
    "Job",
    "JobError",
    "JobFailedError",
    "JobHandle",
    "JobNotFinishedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "cancel",
    "get_attempts",
    "get_job",
    "list_jobs",
    "submit",
    "usage_stats",
]
