"""Codegen agent runs as tracked jobs: the public API.

    run = submit_agent_run("Fix the flaky test in tests/test_io.py", repo_id=7,
                           callbacks=["myapp.tasks.on_run_status"])
    run.wait(timeout=3600).status        # 'COMPLETE' (Codegen's status, verbatim)
    [a.kind for a in run.artifacts()]    # ['result', 'summary', 'pull_request', 'logs']
    run.events()                         # every status change: old, new, when

    track_agent_run(12345)               # follow a run started elsewhere
    resume_agent_run(run.id, "Also add a test for the empty file")

``submit_agent_run`` validates everything before anything is written, writes the
row (``creating``), commits, and only then queues the creation task with the row's
id. Creation, polling, callbacks and webhooks happen in the workers; this module
only writes rows and reads them back. ``track_agent_run`` asks Codegen first (one
request from the shared budget, in the caller's process): an id Codegen does not
know raises ``UnknownRemoteRunError`` and writes nothing.

Two words for where a run stands: ``state`` is ours (``AgentRunState``: creating,
resuming, active, finished, stuck, create_failed); ``status`` is Codegen's, verbatim
(``"PENDING"``, ``"ACTIVE"``, ``"COMPLETE"``, ...; ``None`` before the run exists).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.codegen import AGENT_TYPES, AgentRun, build_run_input
from app.config import get_settings
from app.core.budget import BudgetExhausted
from app.core.errors import (
    AgentRunNotFoundError,
    AgentRunStateError,
    AgentRunTimeoutError,
    AIProviderError,
    CodegenBudgetExhaustedError,
    InvalidRequestError,
    ProviderNotFoundError,
    UnknownRemoteRunError,
)
from app.core.publisher import get_publisher
from app.core.retry import RetryPolicy
from app.db.agent_run_models import AgentRunEventRow, AgentRunRow, AgentRunState
from app.db.base import utcnow
from app.db.models import ArtifactRow
from app.db.session import session_scope
from app.jobs.agent_runs import wakeup
from app.jobs.agent_runs.changes import Notices, observe
from app.jobs.agent_runs.codegen import get_gateway
from app.jobs.agent_runs.constants import (
    MARKER_KEY,
    SOURCE_SUBMITTED,
    SOURCE_TRACKED,
    TASK_CREATE,
    TASK_RESUME,
)

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

MAX_TAGS = 50
MAX_CALLBACKS = 20
MAX_IMAGES = 20
#: Base64 characters of all the images of one creation or resume together (~15 MB).
MAX_IMAGES_CHARS = 20_000_000
#: How long ``track_agent_run`` waits, in the caller's thread, for the shared budget.
TRACK_BUDGET_WAIT = 30.0
_TASK_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


# --- views ---------------------------------------------------------------------------


class AgentRunRecord(BaseModel):
    """A read-only view of one tracked agent run."""

    model_config = ConfigDict(from_attributes=True, frozen=True, populate_by_name=True)

    id: int
    remote_id: int | None
    state: AgentRunState
    remote_status: str | None
    source: str
    prompt: str | None
    repo_id: int | None
    metadata: dict[str, Any] | None = Field(validation_alias="run_metadata")
    model: str | None
    agent_type: str | None
    tags: list[str]
    callbacks: list[str]
    webhook: bool
    result: str | None
    summary: str | None
    web_url: str | None
    error_type: str | None
    error_message: str | None
    poll_interval: float
    next_poll_at: datetime | None
    last_polled_at: datetime | None
    last_status_change_at: datetime | None
    last_poll_error: str | None
    deadline_at: datetime | None
    stuck_at: datetime | None
    resume_count: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def status(self) -> str | None:
        """Codegen's status, verbatim (``None`` until the run exists)."""
        return self.remote_status

    @property
    def is_finished(self) -> bool:
        """Nothing more happens by itself: finished, stuck or never created."""
        return self.state.is_ended


class AgentRunEvent(BaseModel):
    """One row of a run's history: a status change (``old`` -> ``new``) or one of our marks."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    kind: str
    old_status: str | None
    new_status: str | None
    detail: str | None
    created_at: datetime


class AgentRunArtifact(BaseModel):
    """Something the run produced: ``result``, ``summary``, ``pull_request``, ``logs``."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    kind: str
    name: str | None
    content: str | None
    data: Any
    created_at: datetime


# --- validation ----------------------------------------------------------------------


def _check_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_prompt(prompt: object, settings: Settings) -> str:
    if not isinstance(prompt, str):
        raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InvalidRequestError("prompt is empty")
    if len(prompt) > settings.ai_max_prompt_chars:
        raise InvalidRequestError(
            f"prompt is {len(prompt)} characters, more than AI_MAX_PROMPT_CHARS "
            f"({settings.ai_max_prompt_chars})"
        )
    return prompt


def _check_images(images: object) -> list[str] | None:
    if images is None:
        return None
    if isinstance(images, str | bytes) or not isinstance(images, Sequence):
        raise InvalidRequestError("images must be a list of base64 data URIs")
    if len(images) > MAX_IMAGES:
        raise InvalidRequestError(f"at most {MAX_IMAGES} images, got {len(images)}")
    for image in images:
        if not isinstance(image, str) or not image.startswith("data:") or ";base64," not in image:
            raise InvalidRequestError(
                "each image must be a base64 data URI (data:image/png;base64,...)"
            )
    if sum(len(image) for image in images) > MAX_IMAGES_CHARS:
        raise InvalidRequestError(f"the images are larger than {MAX_IMAGES_CHARS} characters")
    return list(images)


def _check_metadata(metadata: object) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidRequestError("metadata must be a JSON object (a dict with string keys)")
    if MARKER_KEY in metadata:
        raise InvalidRequestError(f"metadata key {MARKER_KEY!r} is reserved for ai-worker")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"metadata is not JSON-serializable: {exc}") from None
    return dict(metadata)


def _check_names(name: str, values: object, limit: int, *, task_names: bool) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidRequestError(f"{name} must be a list of strings")
    if len(values) > limit:
        raise InvalidRequestError(f"at most {limit} {name}, got {len(values)}")
    for value in values:
        if not isinstance(value, str) or not 0 < len(value) <= (255 if task_names else 100):
            raise InvalidRequestError(f"{name} must be non-empty strings, got {value!r}")
        if task_names and not set(value) <= _TASK_NAME_CHARS:
            raise InvalidRequestError(f"{value!r} is not a Celery task name")
    return list(dict.fromkeys(values))


def _check_options(model: object, agent_type: object, webhook: object) -> None:
    if model is not None and (not isinstance(model, str) or not 0 < len(model.strip()) <= 255):
        raise InvalidRequestError(f"model must be a non-empty string, got {model!r}")
    if agent_type is not None and agent_type not in AGENT_TYPES:
        raise InvalidRequestError(
            f"agent_type must be one of {sorted(AGENT_TYPES)}, got {agent_type!r}"
        )
    if not isinstance(webhook, bool):
        raise InvalidRequestError(f"webhook must be True or False, got {webhook!r}")


# --- publishing ----------------------------------------------------------------------


def publish(task_name: str, run_id: int) -> bool:
    """Queue ``task_name(run_id)``; on failure leave it to the poller's recovery. True if sent."""
    try:
        get_publisher().send_callback(task_name, [run_id])
    except Exception as exc:  # noqa: BLE001 - the row is safe; the poll sweep sends it again
        log.warning(
            "agent run %s: %s not published (%s); the poll sweep will publish it",
            run_id,
            task_name,
            type(exc).__name__,
        )
        return False
    return True


# --- the API -------------------------------------------------------------------------


def submit_agent_run(
    prompt: str,
    repo_id: int | None = None,
    metadata: dict[str, Any] | None = None,
    images: list[str] | None = None,
    model: str | None = None,
    agent_type: str | None = None,
    tags: list[str] | None = None,
    callbacks: list[str] | None = None,
    webhook: bool = True,
    *,
    repository: str | None = None,
    branch: str | None = None,
    priority: str | None = None,
) -> AgentRunHandle:
    """Start a Codegen agent run in the background and follow it to its end.

    Raises ``InvalidRequestError`` (nothing written, nothing queued) for bad input.
    ``callbacks`` are Celery task names, each sent ``(run_id, old_status, new_status)``
    on every status change; ``webhook=False`` keeps this run out of the webhooks.
    ``repository`` (``owner/repo``) is resolved to its ``repo_id`` by the creation task
    (an unknown name fails the creation with that reason, before any run is made);
    ``branch`` is told in the prompt; both and ``priority`` (high, normal, low) are
    kept in the run's metadata.
    """
    settings = get_settings()
    checked_prompt = _check_prompt(prompt, settings)
    checked_repo = None if repo_id is None else _check_id("repo_id", repo_id)
    checked_metadata = _check_metadata(metadata)
    checked_images = _check_images(images)
    checked_tags = _check_names("tags", tags, MAX_TAGS, task_names=False)
    checked_callbacks = _check_names("callbacks", callbacks, MAX_CALLBACKS, task_names=True)
    _check_options(model, agent_type, webhook)
    options = {"repository": repository, "branch": branch, "priority": priority}
    run_input = build_run_input(
        checked_prompt,
        None,
        {k: v for k, v in {**options, "metadata": checked_metadata}.items() if v is not None},
    )
    now = utcnow()
    row = AgentRunRow(
        state=AgentRunState.CREATING,
        source=SOURCE_SUBMITTED,
        marker=uuid.uuid4(),
        prompt=run_input.prompt,
        repo_id=checked_repo,
        repository=run_input.repository,
        run_metadata=run_input.metadata,
        images=checked_images,
        model=model,
        agent_type=agent_type,
        tags=checked_tags,
        callbacks=checked_callbacks,
        webhook=webhook,
        poll_interval=settings.aiw_agent_poll_interval,
        published_at=now,
        created_at=now,
        updated_at=now,
    )
    with session_scope() as session:
        session.add(row)
        session.flush()
        run_id = row.id
    publish(TASK_CREATE, run_id)
    return AgentRunHandle(run_id)


def track_agent_run(
    remote_id: int,
    callbacks: list[str] | None = None,
    webhook: bool = True,
    tags: list[str] | None = None,
) -> AgentRunHandle:
    """Follow a run created elsewhere, by its Codegen id.

    Codegen is asked first: an id it does not know raises ``UnknownRemoteRunError``
    and nothing is written. A run already tracked returns its handle (a stuck one is
    followed again, with a new deadline). Codegen trouble (429, 5xx, timeouts) is
    retried here with the shared policy; ``CodegenBudgetExhaustedError`` if the shared
    budget stays spent for ``TRACK_BUDGET_WAIT`` seconds.
    """
    settings = get_settings()
    rid = _check_id("remote_id", remote_id)
    checked_tags = _check_names("tags", tags, MAX_TAGS, task_names=False)
    checked_callbacks = _check_names("callbacks", callbacks, MAX_CALLBACKS, task_names=True)
    _check_options(None, None, webhook)
    existing = _follow_again(rid, settings)
    if existing is not None:
        wakeup.wake(settings)
        return AgentRunHandle(existing)
    run = _fetch_for_tracking(rid, settings)
    now = utcnow()
    notices = Notices()
    try:
        with session_scope() as session:
            row = AgentRunRow(
                remote_id=rid,
                state=AgentRunState.ACTIVE,
                source=SOURCE_TRACKED,
                marker=uuid.uuid4(),
                run_metadata=run.metadata,
                tags=checked_tags,
                callbacks=checked_callbacks,
                webhook=webhook,
                poll_interval=settings.aiw_agent_poll_interval,
                deadline_at=now + timedelta(seconds=settings.aiw_agent_run_deadline),
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            run_id = row.id
            observe(session, row, run, now, settings, notices)
            notices.emit_webhooks(session)
    except IntegrityError:
        # Tracked by someone else meanwhile: theirs is the one.
        existing = _follow_again(rid, settings)
        if existing is None:
            raise
        return AgentRunHandle(existing)
    notices.send_callbacks()
    wakeup.wake(settings)
    return AgentRunHandle(run_id)


def _follow_again(remote_id: int, settings: Settings) -> int | None:
    """The row already tracking ``remote_id`` (a stuck one is made active again)."""
    now = utcnow()
    with session_scope() as session:
        row = session.scalars(
            select(AgentRunRow).where(AgentRunRow.remote_id == remote_id).with_for_update()
        ).first()
        if row is None:
            return None
        if row.state == AgentRunState.STUCK:
            row.state = AgentRunState.ACTIVE
            row.stuck_at = None
            row.deadline_at = now + timedelta(seconds=settings.aiw_agent_run_deadline)
            row.next_poll_at = now
            row.polls_since_change = 0
            row.poll_interval = settings.aiw_agent_poll_interval
            row.updated_at = now
        return row.id


def _fetch_for_tracking(remote_id: int, settings: Settings) -> AgentRun:
    """GET the run from the caller's thread (it may wait here: it holds no worker slot)."""
    gateway = get_gateway(settings)
    policy = RetryPolicy.from_settings(settings, max_retries=settings.codegen_max_retries)
    deadline = time.monotonic() + TRACK_BUDGET_WAIT
    retries = 0
    while True:
        try:
            return gateway.get_run(remote_id)
        except BudgetExhausted as exhausted:
            if time.monotonic() + exhausted.wait > deadline:
                raise CodegenBudgetExhaustedError(
                    f"could not ask Codegen about run {remote_id}: {exhausted}",
                    wait=exhausted.wait,
                ) from None
            time.sleep(exhausted.wait)
        except ProviderNotFoundError:
            raise UnknownRemoteRunError(
                f"Codegen has no agent run {remote_id} in organization "
                f"{settings.codegen_org_id}: nothing tracked",
                remote_id=remote_id,
            ) from None
        except AIProviderError as error:
            if not policy.should_retry(error, retries):
                raise
            time.sleep(policy.delay_for(error, retries))
            retries += 1


def resume_agent_run(run_id: int, prompt: str, images: list[str] | None = None) -> AgentRunHandle:
    """Give a run a follow-up prompt (a paused run, or one that ended, to go on).

    The prompt is sent by a task (queue ``agent_runs``) with the shared budget and
    retry policy; the run is ``resuming`` until then and ``active`` after.
    ``AgentRunStateError`` for a run that does not exist at Codegen yet (or is
    already resuming).
    """
    settings = get_settings()
    rid = _check_id("run_id", run_id)
    checked_prompt = _check_prompt(prompt, settings)
    checked_images = _check_images(images)
    now = utcnow()
    resumable = [AgentRunState.ACTIVE, AgentRunState.FINISHED, AgentRunState.STUCK]
    with session_scope() as session:
        result = session.execute(
            update(AgentRunRow)
            .where(
                AgentRunRow.id == rid,
                AgentRunRow.state.in_(resumable),
                AgentRunRow.remote_id.is_not(None),
            )
            .values(
                state=AgentRunState.RESUMING,
                pending_prompt=checked_prompt,
                images=checked_images,
                claim_token=None,
                lease_expires_at=None,
                next_attempt_at=None,
                next_poll_at=None,
                retries=0,
                outcome_unknown=False,
                error_type=None,
                error_message=None,
                published_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if not getattr(result, "rowcount", 0):
            row = session.get(AgentRunRow, rid)
            if row is None:
                raise AgentRunNotFoundError(f"no agent run {rid}")
            raise AgentRunStateError(
                f"agent run {rid} is {row.state}: only an active, finished or stuck run "
                "can be resumed"
            )
    publish(TASK_RESUME, rid)
    return AgentRunHandle(rid)


def get_agent_run(run_id: int) -> AgentRunRecord:
    """The run as it stands now; ``AgentRunNotFoundError`` when there is none."""
    rid = _parse_id(run_id)
    with session_scope() as session:
        row = session.get(AgentRunRow, rid)
        if row is None:
            raise AgentRunNotFoundError(f"no agent run {run_id}")
        return AgentRunRecord.model_validate(row)


def list_agent_runs(
    state: str | Iterable[str] | None = None,
    status: str | Iterable[str] | None = None,
    tag: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[AgentRunRecord]:
    """Newest first. ``state`` ours, ``status`` Codegen's (verbatim), one or several each."""
    if not 0 < limit <= 1000:
        raise InvalidRequestError("limit must be between 1 and 1000")
    if offset < 0:
        raise InvalidRequestError("offset must be >= 0")
    query = select(AgentRunRow).order_by(AgentRunRow.created_at.desc(), AgentRunRow.id.desc())
    if state is not None:
        wanted = [state] if isinstance(state, str) else list(state)
        known = {s.value for s in AgentRunState}
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise InvalidRequestError(
                f"unknown state {unknown[0]!r}; one of {', '.join(sorted(known))}"
            )
        query = query.where(AgentRunRow.state.in_(wanted))
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        query = query.where(AgentRunRow.remote_status.in_(statuses))
    with session_scope() as session:
        rows = list(session.scalars(query.limit(limit if tag is None else 1000).offset(offset)))
        runs = [AgentRunRecord.model_validate(r) for r in rows]
    if tag is not None:  # tags are a JSON list: filtered here, portable across databases
        runs = [r for r in runs if tag in r.tags][:limit]
    return runs


def get_agent_run_events(run_id: int) -> list[AgentRunEvent]:
    rid = _parse_id(run_id)
    with session_scope() as session:
        rows = session.scalars(
            select(AgentRunEventRow)
            .where(AgentRunEventRow.agent_run_id == rid)
            .order_by(AgentRunEventRow.id)
        )
        return [AgentRunEvent.model_validate(r) for r in rows]


def get_agent_run_artifacts(run_id: int) -> list[AgentRunArtifact]:
    rid = _parse_id(run_id)
    with session_scope() as session:
        rows = session.scalars(
            select(ArtifactRow).where(ArtifactRow.agent_run_id == rid).order_by(ArtifactRow.id)
        )
        return [AgentRunArtifact.model_validate(r) for r in rows]


def _parse_id(run_id: object) -> int:
    if isinstance(run_id, bool):
        raise AgentRunNotFoundError(f"no agent run {run_id!r}: not a run id")
    if isinstance(run_id, int):
        return run_id
    try:
        return int(str(run_id))
    except ValueError:
        raise AgentRunNotFoundError(f"no agent run {run_id!r}: not a run id") from None


class AgentRunHandle:
    """What ``submit_agent_run`` / ``track_agent_run`` return: the id, ways to follow."""

    def __init__(self, run_id: int) -> None:
        self.id = _parse_id(run_id)

    def __repr__(self) -> str:
        return f"<AgentRunHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentRunHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def get(self) -> AgentRunRecord:
        return get_agent_run(self.id)

    def status(self) -> str | None:
        """Codegen's status, verbatim (``None`` until the run exists)."""
        return self.get().remote_status

    def state(self) -> AgentRunState:
        """Ours: creating, resuming, active, finished, stuck or create_failed."""
        return self.get().state

    def wait(self, timeout: float | None = None, poll_interval: float = 0.1) -> AgentRunRecord:
        """Block until the run has ended (finished, stuck or never created).

        Reads the database (never Codegen), backing off to 1 s between reads.
        ``AgentRunTimeoutError`` after ``timeout`` seconds; the run goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_interval
        while True:
            record = self.get()
            if record.is_finished:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise AgentRunTimeoutError(
                    f"agent run {self.id} still {record.state} ({record.remote_status}) "
                    f"after {timeout}s",
                    timeout_duration=timeout,
                    run_id=record.remote_id,
                    last_status=record.remote_status,
                )
            time.sleep(
                delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            )
            delay = min(delay * 1.5, 1.0)

    def events(self) -> list[AgentRunEvent]:
        """The run's history, oldest first."""
        return get_agent_run_events(self.id)

    def artifacts(self) -> list[AgentRunArtifact]:
        """What the run produced so far (result, summary, pull requests, logs)."""
        return get_agent_run_artifacts(self.id)

    def resume(self, prompt: str, images: list[str] | None = None) -> AgentRunHandle:
        return resume_agent_run(self.id, prompt, images)
