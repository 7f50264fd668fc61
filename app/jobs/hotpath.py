"""A job's claim and record on PostgreSQL: one statement each, on the hot engine.

The runner's steps are the same on every database (``app.jobs.runner``); this module
is how PostgreSQL does the two that every job takes, as one round trip each, with SQL
written once (psycopg prepares it on the server after a few runs), on a pooled psycopg
cursor (``app.db.hot``: no ORM, nor SQLAlchemy's Connection and result layers, on the way):

- **claim**: the conditional UPDATE of the claim machine (``app.db.claims.claimable``,
  written out), the provider chain fixed on the first claim, the earlier attempts still
  ``started`` marked ``lost``, and the new attempt row written before the call; all in
  one statement (data-modifying CTEs), so a claim never exists without its attempt.
  A job with a tag under a concurrency cap is left to the runner's locked claim
  (``app.jobs.tag_caps``).
- **record**: the job's next state fenced by the claim token (or by the run it waits
  for), the attempt closed (``superseded`` when the fence fails), the usage of a paid
  answer, and, when the job ends, its ``ai_request.*`` webhook event and one delivery
  per endpoint that wants it (the outbox, in the same statement); the deliveries are
  published once it returns (autocommit: it is durable then).

SQLite (the embedded mode) takes the portable multi-statement path in the runner.
Each statement is atomic by itself, so the autocommit engine needs no BEGIN/COMMIT.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from types import SimpleNamespace
from typing import Any

from psycopg import Cursor
from psycopg.rows import dict_row

from app.webhooks.events import ai_request_payload, new_event_id

#: The columns of a claimed job the runner needs.
CLAIMED = (
    "id", "kind", "attempt_count", "provider_chain", "provider_index", "retries_on_provider",
    "callback", "prompt", "system_prompt", "model", "parameters", "tags", "created_at",
    "started_at", "priority",
)  # fmt: skip

CLAIM_SQL = f"""
WITH claimed AS (
    UPDATE ai_requests SET
        status = 'running',
        claim_token = %(token)s,
        lease_expires_at = %(lease)s,
        attempt_count = attempt_count + 1,
        next_attempt_at = NULL,
        started_at = COALESCE(started_at, %(now)s),
        updated_at = %(now)s,
        provider_chain = CASE
            WHEN jsonb_array_length(provider_chain) > 0 THEN provider_chain
            WHEN provider_requested IS NOT NULL THEN jsonb_build_array(provider_requested)
            ELSE %(auto)s::jsonb END
    WHERE id = %(id)s
      AND status IN ('queued', 'waiting', 'running')
      AND (claim_token = %(token)s
           OR (claim_token IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s))
           OR (lease_expires_at < %(now)s
               AND (next_attempt_at IS NULL OR next_attempt_at <= %(now)s)))
      AND NOT (tags ?| %(capped)s::text[])
    RETURNING {", ".join(CLAIMED)}
), lost AS (
    UPDATE ai_attempts SET outcome = 'lost', finished_at = %(now)s, detail = %(lost)s
    WHERE request_id = %(id)s AND outcome = 'started'
      AND EXISTS (SELECT 1 FROM claimed WHERE attempt_count > 1)
), attempt AS (
    INSERT INTO ai_attempts (request_id, number, provider, model, outcome, started_at)
    SELECT id, attempt_count, provider_chain ->> provider_index,
           COALESCE(model, %(defaults)s::jsonb ->> (provider_chain ->> provider_index)),
           'started', %(now)s
    FROM claimed WHERE provider_index < jsonb_array_length(provider_chain)
    RETURNING id
)
SELECT claimed.*, (SELECT id FROM attempt) AS attempt_id FROM claimed
"""

#: Job columns a record may set, and the SQL cast of each value.
_JOB_CASTS = {
    "result": "::jsonb",
    "provider_chain": "::jsonb",
}
_ATTEMPT_COLUMNS = (
    "finished_at", "latency_s", "model", "http_status", "retry_after_s", "error_type",
    "error_message", "provider_request_id", "detail",
)  # fmt: skip
_USAGE_COLUMNS = (
    "request_id", "provider", "model", "prompt_tokens", "completion_tokens", "cached_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "latency_s", "created_at",
)  # fmt: skip


def claim(
    cur: Cursor[Any],
    job_id: uuid.UUID,
    token: str,
    *,
    now: datetime,
    lease: datetime,
    automatic: Sequence[str],
    default_models: Mapping[str, str],
    lost_detail: str,
    capped: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Claim the job and write its attempt; the claimed row (with ``attempt_id``, None
    when the chain has no provider left) or None when it is not claimable now, or has
    one of the ``capped`` tags (``app.jobs.tag_caps`` claims those)."""
    cur.row_factory = dict_row
    cur.execute(
        CLAIM_SQL,
        {
            "id": job_id,
            "token": token,
            "now": now,
            "lease": lease,
            "auto": json.dumps(list(automatic)),
            "defaults": json.dumps(dict(default_models)),
            "lost": lost_detail,
            "capped": list(capped),
        },
    )
    row: dict[str, Any] | None = cur.fetchone()
    return row


@functools.cache
def _record_sql(job_columns: tuple[str, ...], with_usage: bool, event: bool, fence: str) -> str:
    sets = ", ".join(f"{c} = %(j_{c})s{_JOB_CASTS.get(c, '')}" for c in job_columns)
    attempt_sets = ", ".join(
        f"{c} = COALESCE(%(a_{c})s, {c})" if c in ("model", "detail") else f"{c} = %(a_{c})s"
        for c in _ATTEMPT_COLUMNS
    )
    parts = [
        f"WITH job AS (UPDATE ai_requests SET {sets} WHERE id = %(id)s AND {fence} RETURNING id)",
        "att AS (UPDATE ai_attempts SET "
        "outcome = CASE WHEN EXISTS (SELECT 1 FROM job) THEN %(a_outcome)s::text "
        f"ELSE 'superseded' END, {attempt_sets} WHERE id = %(attempt_id)s RETURNING id)",
    ]
    if with_usage:  # paid for: counted even when the fence fails
        columns = ", ".join(_USAGE_COLUMNS)
        values = ", ".join(f"%(u_{c})s" for c in _USAGE_COLUMNS)
        parts.append(
            f"usage AS (INSERT INTO ai_usage (attempt_id, {columns}) "
            f"SELECT %(attempt_id)s, {values} RETURNING id)"
        )
    if event:
        wants = (
            "e.enabled AND (jsonb_array_length(e.event_types) = 0 OR e.event_types ? '*' "
            "OR e.event_types ? %(e_type)s::text OR e.event_types ? %(e_group)s::text)"
        )
        parts.append(
            "ev AS (INSERT INTO webhook_events (id, type, payload, created_at) "
            "SELECT %(e_id)s, %(e_type)s::text, %(e_payload)s::jsonb, %(now)s "
            f"WHERE EXISTS (SELECT 1 FROM job) AND EXISTS "
            f"(SELECT 1 FROM webhook_endpoints e WHERE {wants}) RETURNING id)"
        )
        parts.append(
            "dl AS (INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, "
            "attempt_count, next_attempt_at, published_at, created_at, updated_at) "
            "SELECT gen_random_uuid(), ev.id, e.id, 'pending', 0, %(now)s, %(now)s, %(now)s, "
            f"%(now)s FROM ev, webhook_endpoints e WHERE {wants} RETURNING id)"
        )
        tail = "SELECT (SELECT count(*) FROM job) AS held, ARRAY(SELECT id FROM dl) AS deliveries"
    else:
        tail = "SELECT (SELECT count(*) FROM job) AS held, ARRAY[]::uuid[] AS deliveries"
    return ",\n".join(parts) + "\n" + tail


def _plain(value: Any, column: str) -> Any:
    """A job column's value as psycopg takes it (JSON columns as JSON text)."""
    if column in _JOB_CASTS and value is not None:
        return json.dumps(value)
    return value.value if isinstance(value, Enum) else value


def record(
    cur: Cursor[Any],
    job_id: uuid.UUID,
    *,
    fence: str,
    fence_params: Mapping[str, Any],
    values: Mapping[str, Any],
    attempt_id: int,
    attempt: Mapping[str, Any],
    usage: Mapping[str, Any] | None,
    finished: Mapping[str, Any] | None,
    now: datetime,
) -> tuple[bool, list[uuid.UUID]]:
    """Write a try's end (see the module docstring). ``fence`` is the SQL condition the
    job must still meet (with ``fence_params``); ``finished``: the job ends, its row as
    the webhook payload sees it. Returns (the fence held, the deliveries to publish)."""
    columns = tuple(sorted(values))
    params: dict[str, Any] = {"id": job_id, "attempt_id": attempt_id, "now": now}
    params.update(fence_params)
    params.update({f"j_{c}": _plain(values[c], c) for c in columns})
    params["a_outcome"] = str(attempt["outcome"])
    params.update({f"a_{c}": attempt.get(c) for c in _ATTEMPT_COLUMNS})
    if usage is not None:
        params.update({f"u_{c}": usage[c] for c in _USAGE_COLUMNS})
    if finished is not None:
        status = str(finished["status"])
        event_type = "ai_request.succeeded" if status == "succeeded" else "ai_request.failed"
        # The payload is JSON-safe already (ISO times, string ids): dumped once.
        payload = ai_request_payload(SimpleNamespace(**finished))  # type: ignore[arg-type]
        params.update(
            e_id=new_event_id(),
            e_type=event_type,
            e_group="ai_request.*",
            e_payload=json.dumps(payload, default=str, allow_nan=False),
        )
    sql = _record_sql(columns, usage is not None, finished is not None, fence)
    cur.execute(sql, params)
    row = cur.fetchone()
    assert row is not None  # the tail SELECT always answers one row
    held, deliveries = row
    return bool(held), list(deliveries or [])


FENCE_CLAIM = "claim_token = %(f_token)s"
FENCE_RUN = "status = 'awaiting_run' AND agent_run_id = %(f_run)s"

__all__ = ["CLAIMED", "FENCE_CLAIM", "FENCE_RUN", "claim", "record"]
