"""What a tracked run's news does: the one place that records a status, an end, a mark.

Every function here takes the caller's session and a row the caller has locked,
writes in that transaction and never commits. What a change announces is collected in
``Notices``: the caller emits the webhooks in the same transaction once all its rows
are written (``app.webhooks.emit`` writes the event and its deliveries and publishes
them after the commit), commits, and only then sends the status callbacks (Celery
tasks named at submit): nothing announces a change that was rolled back.

On a status change (Codegen's status verbatim, ``old`` -> ``new``):

- an ``agent_run_events`` row (``status_changed``, old, new, time);
- each status callback is sent ``(run_id, old, new)``;
- the webhook ``agent_run.status_changed``;
- at the end (a terminal status): ``agent_run.completed`` (``COMPLETE``) or
  ``agent_run.failed`` (any other terminal status) with result, summary, web_url and
  pull requests, and the result, summary and pull requests stored as artifacts
  (looked up first: seeing the same end twice never duplicates them). The logs are
  fetched afterwards by the poller (``store_logs``), with budget left over from polls.

Every error text recorded here (``error_message``, ``last_poll_error``, an event's
``detail``, the ``agent_run.failed`` payload) is redacted first (``app.core.redact``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.codegen import AgentRun, AgentRunLog, PullRequest, is_success, is_terminal
from app.core.publisher import get_publisher
from app.core.redact import redact
from app.db.agent_run_models import AgentRunEventKind, AgentRunEventRow, AgentRunRow, AgentRunState
from app.db.models import ArtifactRow
from app.jobs import remote
from app.jobs.agent_runs.schedule import interval_for
from app.webhooks.events import emit

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

EVENT_STATUS_CHANGED = "agent_run.status_changed"
EVENT_COMPLETED = "agent_run.completed"
EVENT_FAILED = "agent_run.failed"
EVENT_STUCK = "agent_run.stuck"

ARTIFACT_RESULT = "result"
ARTIFACT_SUMMARY = "summary"
ARTIFACT_PULL_REQUEST = "pull_request"
ARTIFACT_LOGS = "logs"
ARTIFACT_PROMPT = "prompt"  # a follow-up prompt (name: resume-<n>)


@dataclass
class Notices:
    """What a change announces: webhooks and status callbacks.

    The functions below only collect them. The caller emits the webhooks in its
    transaction once every row is written (``emit_webhooks(session)``: one flush for
    the whole batch instead of one per event), commits, then sends the callbacks
    (``send_callbacks()``), so a callback never announces a change that was rolled back.
    """

    webhooks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    callbacks: list[tuple[str, list[Any]]] = field(default_factory=list)

    def status_changed(self, row: AgentRunRow, old: str | None, new: str | None) -> None:
        self.callbacks.extend((name, [row.id, old, new]) for name in row.callbacks)

    def webhook(self, row: AgentRunRow, event_type: str, payload: dict[str, Any]) -> None:
        if row.webhook:
            self.webhooks.append((event_type, payload))

    def emit_webhooks(self, session: Session) -> int:
        """Hand the webhooks to ``app.webhooks`` in ``session``'s transaction."""
        count = len(self.webhooks)
        for event_type, payload in self.webhooks:
            emit(session, event_type, payload)
        self.webhooks.clear()
        return count

    def send_callbacks(self) -> int:
        """Send the callbacks, in order (after the commit); a failure is logged only."""
        if not self.callbacks:
            return 0
        sent = 0
        publisher = get_publisher()
        for name, args in self.callbacks:
            try:
                publisher.send_callback(name, args)
                sent += 1
            except Exception as exc:  # noqa: BLE001 - the change is committed; report, go on
                log.warning("agent run %s: callback %s not sent (%s)", args[0], name, exc)
        self.callbacks.clear()
        return sent


# --- payloads ------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def run_payload(row: AgentRunRow) -> dict[str, Any]:
    """What every ``agent_run.*`` webhook says of the run."""
    return {
        "agent_run_id": row.id,
        "remote_id": row.remote_id,
        "status": row.remote_status,
        "state": row.state,
        "web_url": row.web_url,
        "tags": list(row.tags or []),
        "metadata": row.run_metadata,
    }


def _pull_request_data(pr: PullRequest) -> dict[str, Any]:
    return pr.model_dump(mode="json", exclude_unset=False)


# --- artifacts -----------------------------------------------------------------------


def _upsert_artifact(
    session: Session,
    run_id: int,
    kind: str,
    name: str | None,
    *,
    content: str | None = None,
    data: Any = None,
    now: datetime,
) -> None:
    """One artifact per (run, kind, name): updated in place when seen again."""
    query = select(ArtifactRow).where(ArtifactRow.agent_run_id == run_id, ArtifactRow.kind == kind)
    query = query.where(ArtifactRow.name.is_(None) if name is None else ArtifactRow.name == name)
    existing = session.scalars(query.order_by(ArtifactRow.id).limit(1)).first()
    if existing is None:
        session.add(
            ArtifactRow(
                agent_run_id=run_id, kind=kind, name=name, content=content, data=data,
                created_at=now,
            )
        )  # fmt: skip
        return
    if existing.content != content:
        existing.content = content
    if existing.data != data:
        existing.data = data


def store_outcome(session: Session, row: AgentRunRow, run: AgentRun, now: datetime) -> None:
    """Result, summary and pull requests of an ended run as artifacts (idempotent)."""
    if run.result is not None:
        _upsert_artifact(session, row.id, ARTIFACT_RESULT, None, content=run.result, now=now)
    if run.summary is not None:
        _upsert_artifact(session, row.id, ARTIFACT_SUMMARY, None, content=run.summary, now=now)
    for pr in run.github_pull_requests:
        _upsert_artifact(
            session, row.id, ARTIFACT_PULL_REQUEST, str(pr.id),
            content=pr.url, data=_pull_request_data(pr), now=now,
        )  # fmt: skip


def store_logs(
    session: Session, row: AgentRunRow, logs: Sequence[AgentRunLog], now: datetime
) -> None:
    """Every log entry of the run as one ``logs`` artifact (replaced if fetched again)."""
    entries = [entry.model_dump(mode="json") for entry in logs]
    _upsert_artifact(session, row.id, ARTIFACT_LOGS, None, data=entries, now=now)
    row.logs_fetched_at = now
    row.next_poll_at = None
    row.claim_token = None
    row.poll_failures = 0
    row.last_poll_error = None
    row.updated_at = now


# --- news ----------------------------------------------------------------------------


def _event(
    session: Session,
    row: AgentRunRow,
    kind: AgentRunEventKind,
    old: str | None,
    new: str | None,
    now: datetime,
    detail: str | None = None,
) -> None:
    session.add(
        AgentRunEventRow(
            agent_run_id=row.id, kind=kind, old_status=old, new_status=new,
            detail=redact(detail),
            created_at=now,
        )
    )  # fmt: skip


def observe(
    session: Session,
    row: AgentRunRow,
    run: AgentRun,
    now: datetime,
    settings: Settings,
    notices: Notices,
) -> bool:
    """Record what Codegen said of the run (the row is locked by the caller).

    Returns True when the status changed. Schedules the next poll (or, at the end, the
    logs) and gives up any claim on the row. Webhooks and callbacks go to ``notices``.
    """
    old, new = row.remote_status, run.status
    changed = new != old
    if run.web_url:
        row.web_url = run.web_url
    if run.result is not None:
        row.result = run.result
    if run.summary is not None:
        row.summary = run.summary
    row.last_polled_at = now
    row.poll_failures = 0
    row.last_poll_error = None
    row.claim_token = None
    row.updated_at = now
    if changed:
        row.remote_status = new
        row.last_status_change_at = now
        row.polls_since_change = 0
        row.poll_interval = settings.aiw_agent_poll_interval
    else:
        row.polls_since_change += 1
        row.poll_interval = interval_for(settings, row.polls_since_change)
    ends = is_terminal(new) and row.state != AgentRunState.FINISHED
    if ends:
        row.state = AgentRunState.FINISHED
        row.finished_at = now
        row.logs_fetched_at = None
        wants_logs = settings.aiw_agent_run_logs and row.remote_id is not None
        row.next_poll_at = now if wants_logs else None
        store_outcome(session, row, run, now)
        remote.run_ended(session, row, run, now, settings)
    elif not is_terminal(new):
        row.state = AgentRunState.ACTIVE
        row.finished_at = None
        row.next_poll_at = now + timedelta(seconds=row.poll_interval)
    if changed:
        _event(session, row, AgentRunEventKind.STATUS_CHANGED, old, new, now)
        notices.status_changed(row, old, new)
        notices.webhook(
            row,
            EVENT_STATUS_CHANGED,
            {**run_payload(row), "old_status": old, "new_status": new, "changed_at": _iso(now)},
        )
    if ends:
        notices.webhook(
            row,
            EVENT_COMPLETED if is_success(new) else EVENT_FAILED,
            {
                **run_payload(row),
                "result": run.result,
                "summary": run.summary,
                "pull_requests": [_pull_request_data(pr) for pr in run.github_pull_requests],
                "finished_at": _iso(now),
            },
        )
    return changed


def poll_failed(row: AgentRunRow, error: str, delay: float, now: datetime) -> None:
    """Codegen gave no usable answer: keep the last known status, try again later."""
    row.poll_failures += 1
    row.last_poll_error = redact(error)[:2000]
    row.claim_token = None
    row.next_poll_at = now + timedelta(seconds=delay)
    row.updated_at = now


def mark_stuck(
    session: Session, row: AgentRunRow, now: datetime, settings: Settings, notices: Notices
) -> None:
    """The run is past its deadline without ending: stop polling it and say so (the job
    it answers, if any, fails or falls back)."""
    row.state = AgentRunState.STUCK
    row.stuck_at = now
    row.next_poll_at = None
    row.claim_token = None
    row.updated_at = now
    remote.run_ended(session, row, None, now, settings)
    detail = f"not ended by its deadline {_iso(row.deadline_at)}"
    _event(session, row, AgentRunEventKind.STUCK, row.remote_status, row.remote_status, now, detail)
    notices.webhook(
        row,
        EVENT_STUCK,
        {
            **run_payload(row),
            "deadline_at": _iso(row.deadline_at),
            "last_status_change_at": _iso(row.last_status_change_at),
            "stuck_at": _iso(now),
        },
    )


def mark_create_failed(
    session: Session,
    row: AgentRunRow,
    error_type: str,
    message: str,
    now: datetime,
    settings: Settings,
    notices: Notices,
) -> None:
    """Codegen refused the creation (or the retries ran out): the run never started (the
    job it answers, if any, fails or falls back)."""
    message = redact(message, settings)
    row.state = AgentRunState.CREATE_FAILED
    row.error_type = error_type
    row.error_message = message[:4000]
    row.finished_at = now
    row.images = None
    row.claim_token = None
    row.lease_expires_at = None
    row.next_attempt_at = None
    row.updated_at = now
    remote.run_ended(session, row, None, now, settings)
    _event(
        session, row, AgentRunEventKind.CREATE_FAILED, None, None, now, f"{error_type}: {message}"
    )
    notices.webhook(
        row,
        EVENT_FAILED,
        {
            **run_payload(row),
            "result": None,
            "summary": None,
            "pull_requests": [],
            "error_type": error_type,
            "error_message": message,
            "finished_at": _iso(now),
        },
    )
