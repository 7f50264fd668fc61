"""Creating a run and sending a follow-up prompt: what the two tasks call.

Both follow the shape of ``app.jobs.runner``: three short steps, each its own
transaction, no database connection held during the HTTP call.

1. **Claim** the row with one conditional UPDATE (its state is ``creating`` /
   ``resuming``, it is due, and nobody holds it, or their lease ran out): a fresh
   ``claim_token`` and a lease. A duplicate message claims nothing.
2. **Call** Codegen once, paid from the shared budget (``CodegenGateway``). An empty
   budget calls nothing: the claim is given back and the task is published again
   with a countdown (``retry``), never slept on.
3. **Record**, fenced by the claim token: the run (events, callbacks, webhooks through
   ``changes.observe``), or the failure: a retryable one (429, 5xx, timeout,
   connection, garbled body) is retried with the shared ``RetryPolicy`` (a broker
   countdown, or parked in ``next_attempt_at`` for the poll sweep when long); any
   other ends the attempt (``create_failed``, or the resume is dropped and the run
   goes back to where it was).

**Never two runs for one row.** Creating is not idempotent and a try that timed out
(or got a 5xx, or a 2xx with a garbled body) may have created the run anyway. Every
creation carries ``metadata[MARKER_KEY] = <the row's marker>``; after such a try the
row is flagged ``outcome_unknown`` (from the claim on: a worker that dies during the
call leaves it so) and the next try first looks for the marker among the newest runs
(one page of the list endpoint) and adopts the run it finds instead of creating
another. A dead worker's row is taken over no sooner than ``CODEGEN_TIMEOUT`` +
``LANDING`` seconds after its claim, so a request still on its way has landed (or
failed) before anyone looks. When the retries are spent while the outcome is unknown,
a last look is made before giving up. A resume is checked the same way: if the run moved
from an ended/paused status to a working one, the prompt got there.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.codegen import IN_PROGRESS, NEEDS_INPUT, TERMINAL, AgentRun, is_terminal
from app.config import get_settings
from app.core.budget import BudgetExhausted
from app.core.errors import AIProviderError, InvalidRequestError, ProviderRateLimitError
from app.core.redact import redact
from app.core.retry import RetryPolicy
from app.db.agent_run_models import AgentRunEventKind, AgentRunEventRow, AgentRunRow, AgentRunState
from app.db.base import utcnow
from app.db.claims import Action, Outcome, claim_values, claimable, record_durably
from app.db.heartbeat import hold
from app.db.models import ArtifactRow
from app.db.session import session_scope
from app.jobs.agent_runs import wakeup
from app.jobs.agent_runs.changes import ARTIFACT_PROMPT, Notices, mark_create_failed, observe
from app.jobs.agent_runs.codegen import CodegenGateway, get_gateway
from app.jobs.agent_runs.constants import MARKER_KEY

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

#: Newest runs searched for the marker of a creation whose outcome is unknown.
MARKER_LOOKBACK = 100
#: Seconds past ``CODEGEN_TIMEOUT`` that a request of a dead worker may still take to
#: reach Codegen and be acted on there.
LANDING = 10.0
#: Tries allowed past ``CODEGEN_MAX_RETRIES`` only to find out whether a creation or a
#: resume with an unknown outcome went through (the look itself may fail).
EXTRA_LOOKS = 3


@dataclass(frozen=True)
class _Claim:
    run_id: int
    token: str
    state: AgentRunState
    remote_id: int | None
    remote_status: str | None
    prompt: str
    images: list[str] | None
    options: dict[str, Any]
    marker: uuid.UUID
    retries: int
    outcome_unknown: bool


def _policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy.from_settings(settings, max_retries=settings.codegen_max_retries)


# --- the two entry points ------------------------------------------------------------


def create_run(
    run_id: int, *, claim_token: str | None = None, settings: Settings | None = None
) -> Outcome:
    """Create the Codegen run of a ``creating`` row (one try)."""
    settings = settings or get_settings()
    claim = _claim(run_id, AgentRunState.CREATING, claim_token or str(uuid.uuid4()), settings)
    if isinstance(claim, Outcome):
        return claim
    with hold(AgentRunRow, run_id, claim.token):
        outcome = _create(claim, settings)
    wakeup.wake(settings)  # a run to follow now, or soon
    return outcome


def _create(claim: _Claim, settings: Settings) -> Outcome:
    run_id = claim.run_id
    try:
        gateway = get_gateway(settings)
    except AIProviderError as error:  # not configured in this worker
        return _give_up(claim, error.error_type, str(error), settings)
    policy = _policy(settings)
    try:
        _resolve_repository(claim, gateway)
        if claim.outcome_unknown:
            found = _find_by_marker(gateway, claim.marker)
            if found is not None:
                log.info("agent run %s: adopting Codegen run %s found by marker", run_id, found.id)
                return _record_started(claim, found, settings)
            if claim.retries >= policy.max_retries:
                return _give_up(
                    claim,
                    "AgentRunCreateFailed",
                    "the creation failed and its last try may not have reached Codegen; "
                    f"no run carries marker {claim.marker} among the newest runs",
                    settings,
                )
        metadata = {**claim.options["metadata"], MARKER_KEY: str(claim.marker)}
        try:
            run = gateway.create_run(
                claim.prompt,
                images=claim.images,
                metadata=metadata,
                repo_id=claim.options["repo_id"],
                model=claim.options["model"],
                agent_type=claim.options["agent_type"],
            )
        except AIProviderError as error:
            return _record_failure(claim, error, settings, sent=True)
    except BudgetExhausted as exhausted:
        return _defer(claim, exhausted.wait, settings)
    except AIProviderError as error:  # the look for the marker failed
        return _record_failure(claim, error, settings, sent=False)
    return _record_started(claim, run, settings)


def resume_run(
    run_id: int, *, claim_token: str | None = None, settings: Settings | None = None
) -> Outcome:
    """Send the pending follow-up prompt of a ``resuming`` row (one try)."""
    settings = settings or get_settings()
    claim = _claim(run_id, AgentRunState.RESUMING, claim_token or str(uuid.uuid4()), settings)
    if isinstance(claim, Outcome):
        return claim
    with hold(AgentRunRow, run_id, claim.token):
        outcome = _resume(claim, settings)
    wakeup.wake(settings)
    return outcome


def _resume(claim: _Claim, settings: Settings) -> Outcome:
    assert claim.remote_id is not None  # only a created run can be resuming
    try:
        gateway = get_gateway(settings)
    except AIProviderError as error:
        return _give_up(claim, error.error_type, str(error), settings)
    policy = _policy(settings)
    try:
        if claim.outcome_unknown:
            now_seen = gateway.get_run(claim.remote_id)
            if _looks_resumed(claim.remote_status, now_seen.status):
                return _record_started(claim, now_seen, settings)
            if claim.retries >= policy.max_retries:
                return _give_up(
                    claim,
                    "AgentRunResumeFailed",
                    "the follow-up prompt failed and its last try may not have reached Codegen",
                    settings,
                )
        try:
            run = gateway.resume_run(claim.remote_id, claim.prompt, claim.images)
        except AIProviderError as error:
            return _record_failure(claim, error, settings, sent=True)
    except BudgetExhausted as exhausted:
        return _defer(claim, exhausted.wait, settings)
    except AIProviderError as error:
        return _record_failure(claim, error, settings, sent=False)
    return _record_started(claim, run, settings)


def _resolve_repository(claim: _Claim, gateway: CodegenGateway) -> None:
    """The ``repository`` asked for (``owner/repo``) to its ``repo_id``, before any run is
    created: an unknown name is ``InvalidRequestError`` (the creation fails with it)."""
    repository = claim.options["repository"]
    if not repository:
        return
    found = gateway.repos.find_repo_id(repository)
    given = claim.options["repo_id"]
    if given is not None and given != found:
        raise InvalidRequestError(
            f"repository {repository!r} is repo_id {found} at Codegen, but repo_id {given} "
            "was given: give one of them",
            provider_name="codegen",
        )
    claim.options["repo_id"] = found


def _looks_resumed(before: str | None, now: str | None) -> bool:
    return (before in TERMINAL or before in NEEDS_INPUT) and now in IN_PROGRESS


def _find_by_marker(gateway: CodegenGateway, marker: uuid.UUID) -> AgentRun | None:
    page = gateway.list_runs(skip=0, limit=MARKER_LOOKBACK)
    for run in page.items:
        if run.metadata and run.metadata.get(MARKER_KEY) == str(marker):
            return run
    return None


# --- claim ---------------------------------------------------------------------------


def _claim(run_id: int, state: AgentRunState, token: str, settings: Settings) -> _Claim | Outcome:
    now = utcnow()
    with session_scope() as session:
        result = session.execute(
            update(AgentRunRow)
            .where(
                AgentRunRow.id == run_id,
                AgentRunRow.state == state,
                claimable(AgentRunRow, now, token),
            )
            .values(
                **claim_values(token, now, settings),
                attempt_count=AgentRunRow.attempt_count + 1,
                # If this worker dies during the call, the request may still be on its
                # way: nobody takes the row over before it has landed or timed out, so
                # the next try finds its marker instead of creating a second run.
                next_attempt_at=now + timedelta(seconds=settings.codegen_timeout + LANDING),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        row = session.get(AgentRunRow, run_id)
        if row is None:
            log.warning("agent run %s: no such run; message dropped", run_id)
            return Outcome(str(run_id), "skipped", reason="no such run")
        if not getattr(result, "rowcount", 0):
            return _not_claimed(row, state, now, settings)
        prompt = row.prompt if state == AgentRunState.CREATING else row.pending_prompt
        unknown = row.outcome_unknown
        # Until this try records its answer, its outcome is unknown: if the worker dies
        # during the call, whoever claims the row next looks before sending again.
        row.outcome_unknown = True
        return _Claim(
            run_id=run_id,
            token=token,
            state=state,
            remote_id=row.remote_id,
            remote_status=row.remote_status,
            prompt=prompt or "",
            images=list(row.images) if row.images else None,
            options={
                "metadata": dict(row.run_metadata or {}),
                "repo_id": row.repo_id,
                "repository": row.repository,
                "model": row.model,
                "agent_type": row.agent_type,
            },
            marker=row.marker,
            retries=row.retries,
            outcome_unknown=unknown,
        )


def _not_claimed(
    row: AgentRunRow, state: AgentRunState, now: datetime, settings: Settings
) -> Outcome:
    if row.state != state:
        return Outcome(str(row.id), "skipped", reason=f"already {row.state}")
    if row.claim_token is None and row.next_attempt_at is not None:
        remaining = (row.next_attempt_at - now).total_seconds()
        if remaining <= settings.aiw_max_countdown:
            return Outcome(str(row.id), "retry", countdown=max(0.0, remaining), reason="early")
        return Outcome(str(row.id), "skipped", reason="parked until next_attempt_at")
    return Outcome(str(row.id), "skipped", reason="owned by another worker")


def _locked(session: Session, claim: _Claim) -> AgentRunRow | None:
    """The row, locked, if this claim still holds it."""
    row = session.get(AgentRunRow, claim.run_id, with_for_update=True)
    if row is None or row.claim_token != claim.token or row.state != claim.state:
        return None
    return row


# --- record --------------------------------------------------------------------------

P = ParamSpec("P")


def _durable(
    record: Callable[Concatenate[_Claim, P], Outcome],
) -> Callable[Concatenate[_Claim, P], Outcome]:
    """A record that waits out a database outage instead of losing what Codegen said."""

    def durably(claim: _Claim, /, *args: P.args, **kwargs: P.kwargs) -> Outcome:
        return record_durably(
            lambda: record(claim, *args, **kwargs), what=f"agent run {claim.run_id}"
        )

    return durably


def _schedule(
    row: AgentRunRow, delay: float, now: datetime, settings: Settings
) -> tuple[Action, float | None]:
    """Wait ``delay`` seconds: a broker countdown, or parked for the poll sweep."""
    row.next_attempt_at = now + timedelta(seconds=delay)
    row.claim_token = None
    row.lease_expires_at = None
    row.updated_at = now
    if delay <= settings.aiw_max_countdown:
        row.published_at = now
        return "retry", delay
    row.published_at = None
    return "parked", None


@_durable
def _defer(claim: _Claim, wait: float, settings: Settings) -> Outcome:
    """No budget: give the claim back without calling, try again when there is some."""
    now = utcnow()
    delay = wait + random.uniform(0.0, min(2.0, 0.25 + wait * 0.5))  # spread the herd
    with session_scope() as session:
        row = _locked(session, claim)
        if row is None:
            return Outcome(str(claim.run_id), "skipped", reason="claim lost")
        row.attempt_count -= 1  # nothing was tried
        row.outcome_unknown = claim.outcome_unknown
        action, countdown = _schedule(row, delay, now, settings)
        return Outcome(
            str(claim.run_id), action, countdown=countdown, reason="waiting for Codegen budget"
        )


@_durable
def _record_started(claim: _Claim, run: AgentRun, settings: Settings) -> Outcome:
    """Codegen has the run (created, adopted, or resumed): record it and follow it."""
    now = utcnow()
    notices = Notices()
    with session_scope() as session:
        row = _locked(session, claim)
        if row is None:
            log.error(
                "agent run %s: Codegen run %s started but the claim was lost meanwhile",
                claim.run_id,
                run.id,
            )
            return Outcome(str(claim.run_id), "skipped", reason="claim lost")
        if claim.state == AgentRunState.CREATING:
            row.remote_id = run.id
            row.repo_id = claim.options["repo_id"]
        else:
            row.resume_count += 1
            row.resumed_at = now
            row.pending_prompt = None
            session.add(
                AgentRunEventRow(
                    agent_run_id=row.id,
                    kind=AgentRunEventKind.RESUMED,
                    old_status=row.remote_status,
                    new_status=run.status,
                    detail=f"follow-up prompt #{row.resume_count} sent",
                    created_at=now,
                )
            )
            session.add(  # what was asked, kept with the run
                ArtifactRow(
                    agent_run_id=row.id,
                    kind=ARTIFACT_PROMPT,
                    name=f"resume-{row.resume_count}",
                    content=claim.prompt,
                    created_at=now,
                )
            )
        row.images = None
        row.outcome_unknown = False
        row.retries = 0
        row.lease_expires_at = None
        row.next_attempt_at = None
        row.error_type = row.error_message = None
        row.stuck_at = None
        row.logs_fetched_at = None
        row.deadline_at = now + timedelta(seconds=settings.aiw_agent_run_deadline)
        row.polls_since_change = 0
        row.poll_interval = settings.aiw_agent_poll_interval
        row.state = AgentRunState.ACTIVE
        observe(session, row, run, now, settings, notices)
        notices.emit_webhooks(session)
    notices.send_callbacks()
    return Outcome(str(claim.run_id), "done", reason=f"{claim.state}: Codegen run {run.id}")


@_durable
def _record_failure(
    claim: _Claim, error: AIProviderError, settings: Settings, *, sent: bool
) -> Outcome:
    """A try failed. ``sent``: the failing request was the creation/resume itself."""
    now = utcnow()
    policy = _policy(settings)
    with session_scope() as session:
        row = _locked(session, claim)
        if row is None:
            return Outcome(str(claim.run_id), "skipped", reason="claim lost")
        if sent:  # a timeout, 5xx or bad body may have gone through; a 429 or 4xx did not
            row.outcome_unknown = error.retryable and not isinstance(error, ProviderRateLimitError)
        else:  # the look for an earlier try failed: what it was is still unknown
            row.outcome_unknown = claim.outcome_unknown
        allowed = policy.max_retries + (EXTRA_LOOKS if row.outcome_unknown else 0)
        if error.retryable and row.retries < allowed:
            delay = policy.delay_for(error, row.retries)
            row.retries += 1
            action, countdown = _schedule(row, delay, now, settings)
            log.info(
                "agent run %s: %s failed (%s), try again in %.1fs",
                row.id, claim.state, error.error_type, delay,
            )  # fmt: skip
            return Outcome(str(claim.run_id), action, countdown=countdown, reason=error.error_type)
        _end_attempt(session, row, claim, error.error_type, str(error), now, settings)
        return Outcome(str(claim.run_id), "done", reason=error.error_type)


@_durable
def _give_up(claim: _Claim, error_type: str, message: str, settings: Settings) -> Outcome:
    now = utcnow()
    with session_scope() as session:
        row = _locked(session, claim)
        if row is None:
            return Outcome(str(claim.run_id), "skipped", reason="claim lost")
        _end_attempt(session, row, claim, error_type, message, now, settings)
        return Outcome(str(claim.run_id), "done", reason=error_type)


def _end_attempt(
    session: Session,
    row: AgentRunRow,
    claim: _Claim,
    error_type: str,
    message: str,
    now: datetime,
    settings: Settings,
) -> None:
    message = redact(message, settings)  # the row, its event and the webhook: no secret
    if claim.state == AgentRunState.CREATING:
        notices = Notices()
        mark_create_failed(session, row, error_type, message, now, settings, notices)
        notices.emit_webhooks(session)
        return
    # A refused follow-up: the run goes back to being followed as before.
    row.pending_prompt = None
    row.images = None
    row.outcome_unknown = False
    row.retries = 0
    row.claim_token = None
    row.lease_expires_at = None
    row.next_attempt_at = None
    row.error_type = error_type
    row.error_message = message[:4000]
    row.updated_at = now
    if is_terminal(row.remote_status):
        row.state = AgentRunState.FINISHED
        row.next_poll_at = None
    else:
        row.state = AgentRunState.ACTIVE
        row.next_poll_at = now
    session.add(
        AgentRunEventRow(
            agent_run_id=row.id,
            kind=AgentRunEventKind.RESUME_FAILED,
            old_status=row.remote_status,
            new_status=row.remote_status,
            detail=f"{error_type}: {message}"[:4000],
            created_at=now,
        )
    )
    log.warning("agent run %s: follow-up prompt refused (%s)", row.id, error_type)


__all__ = ["Outcome", "create_run", "resume_run"]
