"""Usage and cost from the database (``provider.get_stats()`` is the in-process view).

Every provider call is an attempt row; tokens and cost come from the usage rows,
one per paid answer. ``requests`` counts the calls made: ``successes``, ``failures``
(an error answer, retried or not), ``lost`` (the worker died during the call: it may
have been billed), ``superseded`` (answered after the job was cancelled or taken over:
its cost is counted) and ``in_flight``. ``deferred`` counts tries not made because the
provider was cooling down (not calls). Figures are grouped by any of ``provider``, ``model``,
``day`` (UTC) and ``status`` of the attempt.

The rows of the period are read in one narrow query and added up here, so the
same code gives the same percentiles on PostgreSQL and SQLite. That is fine up
to a few hundred thousand attempts per call; past that, narrow the period.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.core.errors import InvalidRequestError
from app.db.models import AttemptOutcome, AttemptRow, UsageRow
from app.db.session import session_scope

GROUPS = ("provider", "model", "day", "outcome")

#: Which counter an attempt's outcome adds to (``failures`` for retry and failed).
_COUNTER = {
    AttemptOutcome.SUCCEEDED: "successes",
    AttemptOutcome.LOST: "lost",
    AttemptOutcome.SUPERSEDED: "superseded",
    AttemptOutcome.STARTED: "in_flight",
}


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[rank]


def usage_stats(
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Iterable[str] = ("provider", "model", "day"),
) -> list[dict[str, Any]]:
    """One dict per group: requests, successes, failures, success_rate, tokens, cost, p50/p95."""
    keys = tuple(group_by)
    unknown = [k for k in keys if k not in GROUPS]
    if unknown:
        raise InvalidRequestError(f"cannot group by {unknown[0]!r}; choose from {GROUPS}")
    query = select(
        AttemptRow.provider,
        AttemptRow.model,
        AttemptRow.started_at,
        AttemptRow.outcome,
        AttemptRow.latency_s,
        UsageRow.prompt_tokens,
        UsageRow.completion_tokens,
        UsageRow.cached_tokens,
        UsageRow.reasoning_tokens,
        UsageRow.cost_usd,
    ).outerjoin(UsageRow, UsageRow.attempt_id == AttemptRow.id)
    if since is not None:
        query = query.where(AttemptRow.started_at >= since)
    if until is not None:
        query = query.where(AttemptRow.started_at < until)

    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    latencies: dict[tuple[Any, ...], list[float]] = {}
    with session_scope() as session:
        for row in session.execute(query.execution_options(yield_per=5000)):
            values = {
                "provider": row.provider,
                "model": row.model,
                "day": row.started_at.date().isoformat(),
                "outcome": row.outcome,
            }
            key = tuple(values[k] for k in keys)
            g = groups.get(key)
            if g is None:
                g = groups[key] = {
                    **{k: values[k] for k in keys},
                    "requests": 0,
                    "successes": 0,
                    "failures": 0,
                    "lost": 0,
                    "superseded": 0,
                    "in_flight": 0,
                    "deferred": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "cached_tokens": 0,
                    "reasoning_tokens": 0,
                    "total_tokens": 0,
                    "cost_usd": 0.0,
                    "cost_unknown": 0,
                }
                latencies[key] = []
            if row.outcome == AttemptOutcome.DEFERRED:  # not called (a shared cooldown)
                g["deferred"] += 1
                continue
            g["requests"] += 1
            g[_COUNTER.get(row.outcome, "failures")] += 1
            if row.prompt_tokens is not None:  # a paid answer (a superseded one too)
                g["prompt_tokens"] += row.prompt_tokens or 0
                g["completion_tokens"] += row.completion_tokens or 0
                g["cached_tokens"] += row.cached_tokens or 0
                g["reasoning_tokens"] += row.reasoning_tokens or 0
                if row.cost_usd is None:
                    g["cost_unknown"] += 1  # answers whose price is not in the table
                else:
                    g["cost_usd"] += float(row.cost_usd)
            if row.latency_s is not None:
                latencies[key].append(row.latency_s)
    result = []
    for key, g in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        lat = sorted(latencies[key])
        g["total_tokens"] = g["prompt_tokens"] + g["completion_tokens"]
        g["success_rate"] = g["successes"] / g["requests"] if g["requests"] else None
        g["cost_usd"] = round(g["cost_usd"], 10)
        g["p50_latency_s"] = _percentile(lat, 0.50)
        g["p95_latency_s"] = _percentile(lat, 0.95)
        result.append(g)
    return result
