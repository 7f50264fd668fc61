"""Fair share per tag: caps on how many jobs with a tag run at once, across all workers.

``AIW_TAG_CONCURRENCY="bulk=4,team-a=8"``: at most 4 jobs tagged ``bulk`` are running
at any moment, whatever the number of workers and threads, so one tenant's bulk job
cannot take every worker thread. A job with several capped tags needs room under each.

What counts is the database's own truth: the jobs with the tag that are ``running``
under a live lease (a claim the heartbeat keeps renewing). Nothing else is kept, so
nothing leaks: a dead worker's claims stop counting when their lease runs out, a
stopping worker's when it hands them back, and a job that waits for a Codegen run or a
cooldown holds no thread and does not count.

The cap is part of the claim (``app.jobs.claim``): the claim's conditional UPDATE also
asks that each capped tag of the job has fewer than its cap of other running jobs. On
PostgreSQL two claims could each see room for one more under READ COMMITTED, so a
claim of a capped job first takes a transaction-level advisory lock per capped tag
(sorted, so never a deadlock) and then runs its UPDATE, whose snapshot sees every
claim committed before. The hot one-statement claim leaves such jobs to this path
(``NOT tags ?| <capped tags>``): jobs without a capped tag pay nothing. SQLite runs one
writer at a time: the UPDATE with its count is atomic there as it is.

A job over its cap is not claimed: no attempt is counted or written, its status stays
as it was (``queued``), and its message comes back after ``AIW_TAG_WAIT`` seconds
(plus up to as much again at random, so held-back jobs do not come back in a herd).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, column, exists, func, not_, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from app.db.claims import Outcome, due
from app.db.models import AIRequestRow, JobStatus

if TYPE_CHECKING:
    from app.config import Settings

#: The statuses a claim takes a job from.
_CLAIMABLE = (JobStatus.QUEUED, JobStatus.WAITING, JobStatus.RUNNING)


def capped_tags(tags: Iterable[str] | None, caps: Mapping[str, int]) -> list[str]:
    """The job's tags that have a cap, sorted (the order locks are taken in)."""
    return sorted({t for t in tags or () if t in caps})


def _has_tag(model: Any, tag: str, postgresql: bool) -> ColumnElement[bool]:
    if postgresql:
        return model.tags.op("?")(tag)  # type: ignore[no-any-return]
    values = func.json_each(model.tags).table_valued("value")
    return exists(select(1).select_from(values).where(column("value") == tag))


def under_caps(
    caps: Mapping[str, int], now: datetime, *, postgresql: bool
) -> ColumnElement[bool]:
    """The claim's condition: for every capped tag, the job has it not, or fewer than
    the cap of *other* jobs with it are running under a live lease."""
    conditions = []
    for tag, cap in sorted(caps.items()):
        other = aliased(AIRequestRow)
        running = (
            select(func.count())
            .select_from(other)
            .where(
                other.status == JobStatus.RUNNING,
                other.claim_token.is_not(None),
                other.lease_expires_at > now,
                other.id != AIRequestRow.id,
                _has_tag(other, tag, postgresql),
            )
            .correlate(AIRequestRow)
            .scalar_subquery()
        )
        conditions.append(or_(not_(_has_tag(AIRequestRow, tag, postgresql)), running < cap))
    return and_(*conditions)


def lock(session: Session, tags: list[str]) -> None:
    """PostgreSQL: take each tag's advisory lock until the transaction ends (``tags``
    sorted: every claim takes them in one order)."""
    for tag in tags:
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"aiw:tag-cap:{tag}"}
        )


def free_and_due(row: AIRequestRow, now: datetime) -> bool:
    """The job could be claimed by anyone but for its tags' caps."""
    lease = row.lease_expires_at
    return (
        JobStatus(row.status) in _CLAIMABLE
        and (row.claim_token is None or (lease is not None and lease < now))
        and (row.next_attempt_at is None or row.next_attempt_at <= now)
    )


def hold_back(
    session: Session, jid: uuid.UUID, tags: list[str], now: datetime, settings: Settings
) -> Outcome:
    """The job waits for room under its tags' caps: its message comes back soon. It is
    stamped published now, so the sweep does not send it a second message meanwhile."""
    session.execute(
        update(AIRequestRow)
        .where(AIRequestRow.id == jid, due(AIRequestRow, now))
        .values(published_at=now)
        .execution_options(synchronize_session=False)
    )
    wait = settings.aiw_tag_wait
    return Outcome(
        str(jid),
        "retry",
        countdown=random.uniform(wait, 2 * wait),
        reason=f"held back: {', '.join(tags)} at its cap of running jobs",
    )


__all__ = ["capped_tags", "free_and_due", "hold_back", "lock", "under_caps"]
