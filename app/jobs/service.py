"""Submit and follow AI requests: the public way to enqueue work.

    job = submit("Summarise this file", system_prompt="...", tags=["docs"])
    job.wait(timeout=60)
    job.result().content

``submit`` validates everything before anything is written or queued, writes
the row (status ``queued``), commits, and only then publishes a message that
carries the row id. If publishing fails the job is still accepted: the sweep
publishes it later. The database is the source of truth; the broker is only
the transport.

``aiw submit`` is a new process each time, so what it runs (``submit``, ``get_job``)
writes and reads the row with SQLAlchemy Core on ``app.db.tables.AI_REQUESTS`` and never
imports the ORM; listing jobs, their attempts and cancelling (the ORM models) are in
``app.jobs.job_admin``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from app.ai.base import AIProvider, AIRequest, AIResponse, check_json_text, check_text
from app.ai.factory import build_provider, provider_names
from app.config import get_settings
from app.core.errors import (
    InvalidRequestError,
    JobFailedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobTimeoutError,
)
from app.core.priorities import NORMAL, check_priority
from app.core.publisher import PublishError, get_publisher
from app.db.hot import insert_row
from app.db.ids import parse_id, resolve_id
from app.db.session import database_url, statement_scope
from app.db.tables import AI_REQUESTS, JobStatus
from app.db.types import utcnow

if TYPE_CHECKING:
    from app.jobs.job_admin import Attempt

log = logging.getLogger(__name__)

MAX_TAGS = 50
MAX_KEY_LENGTH = 255
_TASK_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


class Job(BaseModel):
    """A read-only view of one AI request."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: uuid.UUID
    kind: str
    status: JobStatus
    provider_requested: str | None
    provider_chain: list[str]
    provider_used: str | None
    model: str | None
    agent_run_id: int | None = None  # while answered by Codegen: the tracked agent run
    prompt: str
    system_prompt: str | None
    parameters: dict[str, Any]
    tags: list[str]
    priority: str = NORMAL
    subject: dict[str, Any] | None
    result: dict[str, Any] | None
    error_type: str | None
    error_message: str | None
    attempt_count: int
    next_attempt_at: datetime | None
    idempotency_key: str | None
    callback: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def is_finished(self) -> bool:
        return self.status.is_terminal

    def response(self) -> AIResponse | None:
        return None if self.result is None else AIResponse.model_validate(self.result)


def parse_job_id(job_id: uuid.UUID | str) -> uuid.UUID:
    """A job's id from a UUID or the unique start of one (``aiw jobs`` prints 8 digits)."""
    if isinstance(job_id, uuid.UUID):
        return job_id
    parsed = parse_id(job_id, JobNotFoundError, "job")
    if isinstance(parsed, uuid.UUID):
        return parsed
    with statement_scope() as conn:
        return resolve_id(conn, AI_REQUESTS.c.id, job_id, JobNotFoundError, "job")


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{name} must be JSON-serialisable: {exc}") from None


def _validate(
    prompt: object,
    system_prompt: object,
    provider: object,
    model: object,
    temperature: object,
    max_tokens: object,
    tags: object,
    idempotency_key: object,
    callback: object,
    subject: object,
    provider_kwargs: dict[str, Any],
    priority: object = NORMAL,
) -> AIRequest:
    check_priority(priority)
    request = AIRequest.build(
        prompt,
        system_prompt=system_prompt,
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
    )
    if provider is not None and provider not in provider_names():
        raise InvalidRequestError(
            f"unknown provider {provider!r}; known providers: {', '.join(provider_names())}"
        )
    if tags is not None:
        if isinstance(tags, str) or not isinstance(tags, Sequence):
            raise InvalidRequestError("tags must be a list of strings")
        if len(tags) > MAX_TAGS or not all(isinstance(t, str) and 0 < len(t) <= 100 for t in tags):
            raise InvalidRequestError(f"tags must be at most {MAX_TAGS} strings of 1..100 chars")
        check_json_text("tags", list(tags))
    if isinstance(idempotency_key, str):
        check_text("idempotency_key", idempotency_key)
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_KEY_LENGTH
    ):
        raise InvalidRequestError(f"idempotency_key must be a string of 1..{MAX_KEY_LENGTH} chars")
    if callback is not None and (
        not isinstance(callback, str)
        or not callback
        or len(callback) > 255
        or not set(callback) <= _TASK_NAME_CHARS
    ):
        raise InvalidRequestError(f"callback must be a Celery task name, got {callback!r}")
    if subject is not None and not isinstance(subject, dict):
        raise InvalidRequestError("subject must be a dict")
    _check_json("provider keyword arguments", provider_kwargs)
    _check_json("subject", subject)
    check_json_text("provider keyword arguments", provider_kwargs)
    check_json_text("subject", subject)
    _check_providers(request.model_copy(update={"extra": dict(provider_kwargs)}), provider)
    return request


_checkers: dict[tuple[str, int], AIProvider] = {}


def _check_providers(request: AIRequest, provider: object) -> None:
    """The options must suit the forced provider, or at least one provider of the
    registry (automatic choice: the worker's credentials decide which ones it has).
    Nothing is asked over the network."""
    names = [str(provider)] if provider is not None else provider_names()
    refusals: list[InvalidRequestError] = []
    settings = get_settings()
    for name in names:
        key = (name, id(settings))
        checker = _checkers.get(key)
        if checker is None:
            if len(_checkers) > 32:
                _checkers.clear()
            checker = _checkers[key] = build_provider(name, settings=settings)
        try:
            checker.check_request(request)
        except InvalidRequestError as exc:
            refusals.append(exc)
            continue
        return
    if len(refusals) == 1:
        raise refusals[0]
    raise InvalidRequestError(
        "no provider takes these options: " + "; ".join(str(r) for r in refusals)
    )


def submit(
    prompt: str,
    system_prompt: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    tags: list[str] | None = None,
    idempotency_key: str | None = None,
    callback: str | None = None,
    *,
    subject: dict[str, Any] | None = None,
    priority: str = NORMAL,
    **provider_kwargs: Any,
) -> JobHandle:
    """Accept an AI request and queue it. Returns at once with a ``JobHandle``.

    ``priority`` (``high``, ``normal``, ``low``): waiting jobs of a higher priority
    are taken first. When Codegen answers, it is also kept in the run's
    ``metadata["priority"]``.

    Raises ``InvalidRequestError`` (nothing written, nothing queued) for bad input.
    The same ``idempotency_key`` twice returns the first job (its parameters win).
    """
    request = _validate(
        prompt,
        system_prompt,
        provider,
        model,
        temperature,
        max_tokens,
        tags,
        idempotency_key,
        callback,
        subject,
        provider_kwargs,
        priority,
    )
    if idempotency_key is not None:
        existing = _find_by_key(idempotency_key)
        if existing is not None:
            return JobHandle(existing)
    job_id = uuid.uuid4()
    now = utcnow()
    values = {
        "id": job_id,
        "kind": "ai_request",
        "status": JobStatus.QUEUED.value,
        "provider_requested": provider,
        "provider_chain": [],
        "provider_index": 0,
        "model": request.model,
        "prompt": request.prompt,
        "system_prompt": request.system_prompt,
        "parameters": {
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "provider_kwargs": provider_kwargs,
        },
        "tags": list(tags or []),
        "priority": priority,
        "subject": subject,
        "idempotency_key": idempotency_key,
        "callback": callback,
        "attempt_count": 0,
        "retries_on_provider": 0,
        "published_at": now,
        "created_at": now,
        "updated_at": now,
    }
    try:
        _insert(values)
    except IntegrityError:
        # Another submit with the same key won the race: return its job.
        existing = _find_by_key(idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return JobHandle(existing)
    publish(job_id, priority=priority)
    return JobHandle(job_id)


_INSERT = insert(AI_REQUESTS)


def _insert(values: dict[str, Any]) -> None:
    """One INSERT, committed: on PostgreSQL one autocommit statement on the hot cursor
    (``app.db.hot``: every job's first statement); elsewhere the Core statement in a
    transaction."""
    url = database_url()
    if url.startswith("postgresql"):
        insert_row(AI_REQUESTS, values, url)
        return
    with statement_scope(url) as conn:
        conn.execute(_INSERT, values)


def publish(job_id: uuid.UUID, countdown: float | None = None, *, priority: str) -> bool:
    """Hand the job to the queue at its ``priority``; on failure leave it to the sweep.
    True if published."""
    try:
        get_publisher().publish_job(str(job_id), countdown=countdown, priority=priority)
    except Exception as exc:  # noqa: BLE001 - any broker failure: the row is safe, the sweep retries
        log.warning(
            "job %s accepted but not published (%s); the sweep will publish it",
            job_id,
            type(exc).__name__,
        )
        if isinstance(exc, PublishError):
            log.warning("%s", exc)
        return False
    return True


def _find_by_key(key: str) -> uuid.UUID | None:
    with statement_scope() as conn:
        found: uuid.UUID | None = conn.scalar(
            select(AI_REQUESTS.c.id).where(AI_REQUESTS.c.idempotency_key == key)
        )
        return found


def get_job(job_id: uuid.UUID | str) -> Job:
    """The job as it stands now; ``JobNotFoundError`` when there is none.

    A Core SELECT of the row (its columns are named as the model's attributes): the
    same values as ``session.get``, without importing the ORM or configuring every
    mapper on the first read of a process (``aiw submit``)."""
    jid = parse_job_id(job_id)
    with statement_scope() as conn:
        row = conn.execute(select(AI_REQUESTS).where(AI_REQUESTS.c.id == jid)).mappings().first()
    if row is None:
        raise JobNotFoundError(f"no job {job_id}")
    return Job.model_validate(dict(row))


def _idle(job: Job) -> str:
    """What a job that no worker has taken yet needs (said when a wait runs out)."""
    if job.status != JobStatus.QUEUED or job.attempt_count:
        return ""
    return (
        " (no worker has taken it yet: is one running? `aiw up` runs everything, "
        "`aiw worker` a worker alone; the job stays queued until then)"
    )


class JobHandle:
    """What ``submit`` returns: the id, and ways to follow the job."""

    def __init__(self, job_id: uuid.UUID | str) -> None:
        self.id = parse_job_id(job_id)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def get(self) -> Job:
        return get_job(self.id)

    def status(self) -> JobStatus:
        return self.get().status

    def wait(self, timeout: float | None = None, poll_interval: float = 0.05) -> Job:
        """Block until the job ends (polls the database, backing off to 1 s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_interval
        while True:
            job = self.get()
            if job.is_finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(
                    f"job {self.id} still {job.status} after {timeout}s{_idle(job)}"
                )
            time.sleep(
                delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            )
            delay = min(delay * 1.5, 1.0)

    def result(self) -> AIResponse:
        """The answer of a succeeded job; ``JobFailedError`` for a failed or cancelled one."""
        job = self.get()
        if job.status == JobStatus.SUCCEEDED and job.result is not None:
            return AIResponse.model_validate(job.result)
        if job.is_finished:
            raise JobFailedError(job.error_type, job.error_message, job_id=str(self.id))
        raise JobNotFinishedError(f"job {self.id} is {job.status}")

    def cancel(self) -> bool:
        from app.jobs.job_admin import cancel

        return cancel(self.id)

    def attempts(self) -> list[Attempt]:
        from app.jobs.job_admin import get_attempts

        return get_attempts(self.id)
