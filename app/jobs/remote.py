"""AI requests answered by a Codegen agent run: a tracked run, not a waiting thread.

A remote agent run lasts minutes to hours, longer than any lease, so when a job's
chain reaches Codegen the runner does not call and wait. In the claim's transaction
(``start_run``) it writes a tracked agent run (``agent_runs``, state ``creating``,
``ai_request_id`` = the job), links the job to it (``ai_requests.agent_run_id``,
status ``awaiting_run``, no claim, no lease) and the attempt too, and once that
commits it publishes the run's creation task. From there the agent-run machinery does
the work: the creation pays from the shared budget and carries the marker that adopts
a run whose creation answer was lost (so one try never makes two runs), and the poller
follows the run.

When the run ends, whatever the way (Codegen's terminal status, never created, stuck
past ``AIW_AGENT_RUN_DEADLINE``), ``run_ended`` finishes the job in the same
transaction, fenced by the link (the job still ``awaiting_run`` on this very run):
the attempt is closed, the answer is the run's result (``metadata`` carries web_url,
pull requests and summary), a usage row records the paid try (Codegen reports no
tokens), the run's artifacts are linked to the job, and the ``ai_request.*`` webhook
and the job's callback fire after the commit. A run that did not succeed hands over
to the next provider of the chain, as any failed try does.

``cancel`` of such a job ends the job at once; Codegen has no cancel endpoint, so the
run goes on there and stays tracked as an agent run of its own (``aiw agent show``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.ai.base import AIProvider, AIRequest, AIResponse, Usage
from app.ai.codegen_provider import DEFAULT_MODEL, CodegenProvider
from app.codegen import RunInput
from app.core import errors
from app.core.errors import AgentRunFailedError, AgentRunTimeoutError, AIProviderError
from app.core.publisher import get_publisher
from app.core.retry import RetryPolicy
from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.db.claims import fenced
from app.db.models import AIRequestRow, ArtifactRow, AttemptRow, JobStatus
from app.db.session import after_commit
from app.jobs import records
from app.jobs.agent_runs.constants import SOURCE_AI_REQUEST, TASK_CREATE
from app.jobs.service import publish

if TYPE_CHECKING:
    from app.codegen import AgentRun
    from app.config import Settings

log = logging.getLogger(__name__)

#: The provider whose answers are tracked runs.
PROVIDER = "codegen"


def run_input(provider: AIProvider, request: AIRequest, tags: list[str]) -> RunInput:
    """What Codegen is asked for ``request`` (checked, no network): ``InvalidRequestError``
    for an option it refuses. The job's tags go into the run's metadata, as a
    ``CodegenProvider`` call's ``tags`` do. A ``repository`` is resolved by the creation
    task."""
    if not isinstance(provider, CodegenProvider):
        raise AIProviderError(f"{PROVIDER!r} is not the Codegen provider here")
    if tags and "tags" not in request.extra:
        request = request.model_copy(update={"extra": {**request.extra, "tags": list(tags)}})
    return provider.run_input(request)


def start_run(
    session: Session,
    tried: records.Try,
    token: str,
    spec: RunInput,
    tags: list[str],
    now: datetime,
    settings: Settings,
) -> int:
    """In the claim's transaction: the tracked run, the job waiting for it, the attempt
    linked; the creation task is published once this commits. Returns the run's id."""
    row = AgentRunRow(
        state=AgentRunState.CREATING,
        source=SOURCE_AI_REQUEST,
        marker=uuid.uuid4(),
        ai_request_id=tried.job_id,
        prompt=spec.prompt,
        repo_id=spec.repo_id,
        repository=spec.repository if spec.needs_resolution else None,
        run_metadata=spec.metadata,
        images=spec.images,
        model=spec.model,
        agent_type=spec.agent_type,
        tags=list(tags),
        callbacks=[],
        webhook=True,
        poll_interval=settings.aiw_agent_poll_interval,
        published_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    run_id = row.id
    session.execute(
        update(AIRequestRow)
        .where(fenced(AIRequestRow, tried.job_id, token))
        .values(
            status=JobStatus.AWAITING_RUN,
            agent_run_id=run_id,
            claim_token=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    records.update_attempt(
        session,
        tried.attempt_id,
        {"agent_run_id": run_id, "detail": f"answered by tracked agent run {run_id}"},
    )
    after_commit(session, lambda: _publish_creation(run_id))
    return run_id


def _publish_creation(run_id: int) -> None:
    try:
        get_publisher().send_callback(TASK_CREATE, [run_id])
    except Exception as exc:  # noqa: BLE001 - the row is safe: the poll sweep publishes it
        log.warning(
            "agent run %s: creation not published (%s); the poll sweep will",
            run_id,
            type(exc).__name__,
        )


def _response(row: AgentRunRow, run: AgentRun | None, latency: float) -> AIResponse:
    pulls = [pr.model_dump(mode="json") for pr in run.github_pull_requests] if run else []
    return AIResponse(
        content=row.result or row.summary or "",
        provider_name=PROVIDER,
        model=row.model or DEFAULT_MODEL,
        usage=Usage(),
        cost_usd=None,
        response_time=timedelta(seconds=latency),
        request_id=None if row.remote_id is None else str(row.remote_id),
        metadata={
            "agent_run_id": row.remote_id,
            "tracked_run_id": row.id,
            "status": row.remote_status,
            "web_url": row.web_url,
            "pull_requests": pulls,
            "summary": row.summary,
        },
    )


def ended_error(row: AgentRunRow) -> AIProviderError | None:
    """Why the run gave no answer (None: it completed)."""
    if row.state == AgentRunState.STUCK:
        return AgentRunTimeoutError(
            f"Codegen agent run {row.remote_id} did not end by its deadline "
            f"(still {row.remote_status}; AIW_AGENT_RUN_DEADLINE)",
            run_id=row.remote_id,
            last_status=row.remote_status,
            provider_name=PROVIDER,
            request_id=None if row.remote_id is None else str(row.remote_id),
        )
    if row.state == AgentRunState.CREATE_FAILED:
        # Codegen's own refusal keeps its class (a 403 is still an authentication error:
        # the chain falls back the same way as for any provider).
        cls = getattr(errors, row.error_type or "", None)
        if not (isinstance(cls, type) and issubclass(cls, AIProviderError)):
            cls = AgentRunFailedError
        return cls(
            f"the Codegen agent run could not be created: {row.error_message}",
            provider_name=PROVIDER,
        )
    if row.remote_status == "COMPLETE":
        return None
    detail = f": {row.summary}" if row.summary else ""
    return AgentRunFailedError(
        f"Codegen agent run {row.remote_id} ended {row.remote_status}{detail}",
        run_id=row.remote_id,
        run_status=row.remote_status,
        provider_name=PROVIDER,
        request_id=None if row.remote_id is None else str(row.remote_id),
    )


def run_ended(
    session: Session,
    row: AgentRunRow,
    run: AgentRun | None,
    now: datetime,
    settings: Settings,
) -> bool:
    """The tracked run ``row`` ended (in ``session``'s transaction, the row locked): finish
    the job it answers, if it still waits for it. True if a job was finished or moved on."""
    if row.ai_request_id is None:
        return False
    job_id = row.ai_request_id
    job = session.get(AIRequestRow, job_id, with_for_update=True)
    if job is None or job.status != JobStatus.AWAITING_RUN or job.agent_run_id != row.id:
        return False  # cancelled meanwhile: the run was followed for its own sake
    attempt = session.scalars(
        select(AttemptRow)
        .where(AttemptRow.request_id == job_id, AttemptRow.agent_run_id == row.id)
        .order_by(AttemptRow.number.desc())
        .limit(1)
    ).first()
    if attempt is None:
        log.error("job %s: no attempt links agent run %s; finishing without one", job_id, row.id)
        return False
    chain = list(job.provider_chain) or [PROVIDER]
    tried = records.Try(
        job_id,
        attempt.id,
        PROVIDER,
        chain,
        job.provider_index,
        job.retries_on_provider,
        job.callback,
        job.started_at,
    )
    latency = max(0.0, (now - attempt.started_at).total_seconds())
    error = ended_error(row)
    response = None if error is not None else _response(row, run, latency)
    policy = RetryPolicy.from_settings(settings, max_retries=settings.codegen_max_retries)
    decision = records.decide(tried, response, error, policy, now, settings)
    session.flush()  # the run's artifacts, stored just before, get their ids
    condition = (AIRequestRow.status == JobStatus.AWAITING_RUN) & (
        AIRequestRow.agent_run_id == row.id
    )
    records.apply(
        session,
        job_id,
        condition,
        decision,
        attempt.id,
        response=response,
        latency=latency,
        now=now,
    )
    session.execute(
        update(ArtifactRow)
        .where(ArtifactRow.agent_run_id == row.id, ArtifactRow.request_id.is_(None))
        .values(request_id=job_id)
        .execution_options(synchronize_session=False)
    )
    outcome = decision.outcome
    if outcome.action == "done" and outcome.callback:
        name = outcome.callback
        after_commit(session, lambda: _send_callback(name, str(job_id)))
    elif outcome.action == "retry":
        priority = job.priority
        after_commit(session, lambda: _publish_job(job_id, priority))
    log.info("job %s: agent run %s ended %s: %s", job_id, row.id, row.remote_status, outcome)
    return True


def _send_callback(name: str, job_id: str) -> None:
    try:
        get_publisher().send_callback(name, [job_id])
    except Exception as exc:  # noqa: BLE001 - the job is recorded; report and go on
        log.warning("job %s: callback %s not sent (%s)", job_id, name, exc)


def _publish_job(job_id: uuid.UUID, priority: str) -> None:
    publish(job_id, priority=priority)


__all__ = ["PROVIDER", "ended_error", "run_ended", "run_input", "start_run"]
