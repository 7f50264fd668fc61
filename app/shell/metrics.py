"""The Prometheus exporter (``aiw metrics``; ``aiw up`` starts one).

Why one exporter reading the database, not counters inside each worker:

- The business figures (requests, failures by error type, retries, tokens, cost,
  agent runs, webhook deliveries) already are rows: one attempt row per provider
  call, one usage row per successful call (unique per attempt), one delivery row
  per webhook try. Counting rows gives exact totals whatever the number of
  workers, machines, pool processes or restarts, and they agree with
  ``aiw stats`` to the cent. In-process counters would need a scrape target per
  worker process (prefork children, ``--scale worker=N`` containers), Prometheus'
  multiprocess mode with its shared directory, and they reset on every restart.
- Counting is a handful of ``GROUP BY`` queries over indexed tables, run at most
  once per ``AIW_METRICS_CACHE`` seconds whatever the number of scrapers.
- Rows only ever grow (terminal states never change), so the ``*_total`` series
  are true counters; pruning old rows shows up as a counter reset, which
  Prometheus' ``rate()`` handles.

Run exactly one exporter per deployment (like beat): two would report the same
totals twice to a Prometheus that sums them.

Queue depth comes from the broker: ``LLEN`` of each queue (and its priority
lists) on Redis, visible rows of ``kombu_message`` on the embedded SQL
transport. Flower's own ``/metrics`` (task events per worker) stays where it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, inspect, select, text

from app.core.embedded_broker import client_url
from app.db.models import AIRequestRow, AttemptOutcome, AttemptRow, JobStatus, UsageRow
from app.db.session import session_scope
from app.jobs.budget_admin import read_all
from app.shell.topology import QUEUES, broker_url, is_redis_url

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

# Celery's Redis transport keeps a message with priority p in "<queue>\x06\x16<p>"
# (priority_steps 0, 3, 6, 9; step 0 is the bare queue name).
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_PRIORITY_STEPS = (3, 6, 9)

# agent_runs.state values after which nothing happens by itself (AgentRunState.ENDED).
# Read as plain SQL: the exporter works on any schema revision, with or without the
# agent-run and webhook tables.
AGENT_RUN_ENDED_STATES = frozenset({"finished", "stuck", "create_failed"})


@dataclass
class Snapshot:
    """Everything one scrape reports, read in one go."""

    database_up: bool = False
    broker_up: bool = False
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    jobs_submitted: int = 0
    jobs_finished: dict[tuple[str, str], int] = field(default_factory=dict)  # status, provider
    jobs_failed: dict[str, int] = field(default_factory=dict)  # error_type
    attempts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # prov, model, out
    attempt_failures: dict[tuple[str, str], int] = field(default_factory=dict)  # prov, error
    latency: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)  # prov, model, kind
    cost: dict[tuple[str, str], float] = field(default_factory=dict)
    cost_unknown: dict[tuple[str, str], int] = field(default_factory=dict)
    agent_runs_active: int | None = None
    agent_runs_by_state: dict[str, int] = field(default_factory=dict)
    webhook_deliveries: dict[str, int] | None = None  # by status
    webhook_attempts: dict[str, int] | None = None  # HTTP tries by outcome (2xx, 4xx, error...)
    budgets: dict[str, tuple[float, float, float]] | None = None  # name: spent, reserved, cap
    queue_depth: dict[str, int] = field(default_factory=dict)
    broker_unacked: int | None = None


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def read_database(snapshot: Snapshot) -> None:
    """Fill the business figures from the database (raises if it is unreachable)."""
    with session_scope() as s:
        for status, count in s.execute(
            select(AIRequestRow.status, func.count()).group_by(AIRequestRow.status)
        ):
            snapshot.jobs_by_status[status] = count
        snapshot.jobs_submitted = sum(snapshot.jobs_by_status.values())
        terminal = [st.value for st in JobStatus.TERMINAL]
        for status, provider, count in s.execute(
            select(AIRequestRow.status, AIRequestRow.provider_used, func.count())
            .where(AIRequestRow.status.in_(terminal))
            .group_by(AIRequestRow.status, AIRequestRow.provider_used)
        ):
            snapshot.jobs_finished[(status, _label(provider))] = count
        for error_type, count in s.execute(
            select(AIRequestRow.error_type, func.count())
            .where(AIRequestRow.status == JobStatus.FAILED)
            .group_by(AIRequestRow.error_type)
        ):
            snapshot.jobs_failed[_label(error_type)] = count
        for provider, model, outcome, count, n_lat, sum_lat in s.execute(
            select(
                AttemptRow.provider,
                AttemptRow.model,
                AttemptRow.outcome,
                func.count(),
                func.count(AttemptRow.latency_s),
                func.coalesce(func.sum(AttemptRow.latency_s), 0.0),
            ).group_by(AttemptRow.provider, AttemptRow.model, AttemptRow.outcome)
        ):
            key = (provider, _label(model))
            snapshot.attempts[(provider, _label(model), outcome)] = count
            if outcome != AttemptOutcome.DEFERRED:
                n, total = snapshot.latency.get(key, (0, 0.0))
                snapshot.latency[key] = (n + n_lat, total + float(sum_lat or 0.0))
        for provider, error_type, count in s.execute(
            select(AttemptRow.provider, AttemptRow.error_type, func.count())
            .where(AttemptRow.outcome.in_([AttemptOutcome.FAILED, AttemptOutcome.RETRY]))
            .group_by(AttemptRow.provider, AttemptRow.error_type)
        ):
            snapshot.attempt_failures[(provider, _label(error_type))] = count
        for row in s.execute(
            select(
                UsageRow.provider,
                UsageRow.model,
                func.sum(UsageRow.prompt_tokens),
                func.sum(UsageRow.completion_tokens),
                func.sum(UsageRow.cached_tokens),
                func.sum(UsageRow.reasoning_tokens),
                func.coalesce(func.sum(UsageRow.cost_usd), 0),
                func.sum(case((UsageRow.cost_usd.is_(None), 1), else_=0)),
            ).group_by(UsageRow.provider, UsageRow.model)
        ):
            provider, model, prompt, completion, cached, reasoning, cost, unknown = row
            for kind, value in (
                ("prompt", prompt),
                ("completion", completion),
                ("cached", cached),
                ("reasoning", reasoning),
            ):
                snapshot.tokens[(provider, model, kind)] = int(value or 0)
            snapshot.cost[(provider, model)] = float(cost or 0)
            snapshot.cost_unknown[(provider, model)] = int(unknown or 0)
        _read_optional_tables(s, snapshot)
    snapshot.database_up = True


def _read_optional_tables(s: Any, snapshot: Snapshot) -> None:
    """Agent runs and webhook deliveries, when their tables exist in this schema."""
    tables = set(inspect(s.connection()).get_table_names())
    if "agent_runs" in tables:
        rows = s.execute(text("SELECT state, COUNT(*) FROM agent_runs GROUP BY state"))
        snapshot.agent_runs_by_state = {_label(state): int(n) for state, n in rows}
        snapshot.agent_runs_active = sum(
            n for st, n in snapshot.agent_runs_by_state.items() if st not in AGENT_RUN_ENDED_STATES
        )
    if "webhook_deliveries" in tables:
        rows = s.execute(text("SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status"))
        snapshot.webhook_deliveries = {_label(status): int(n) for status, n in rows}
    if "webhook_attempts" in tables:
        rows = s.execute(
            text(
                "SELECT CASE WHEN status_code IS NULL THEN 'error'"
                " WHEN status_code BETWEEN 200 AND 299 THEN '2xx'"
                " WHEN status_code BETWEEN 300 AND 399 THEN '3xx'"
                " WHEN status_code BETWEEN 400 AND 499 THEN '4xx'"
                " ELSE '5xx' END AS outcome, COUNT(*) FROM webhook_attempts GROUP BY outcome"
            )
        )
        snapshot.webhook_attempts = {str(outcome): int(n) for outcome, n in rows}
    if "budgets" in tables:
        snapshot.budgets = {b.name: (b.spent_usd, b.reserved_usd, b.cap_usd) for b in read_all(s)}


def read_broker(snapshot: Snapshot, settings: Settings) -> None:
    url = broker_url(settings)
    if is_redis_url(url):
        import redis

        client = redis.Redis.from_url(
            client_url(url), socket_connect_timeout=3, socket_timeout=3
        )
        try:
            pipe = client.pipeline(transaction=False)
            for queue in QUEUES:
                pipe.llen(queue)
                for step in REDIS_PRIORITY_STEPS:
                    pipe.llen(f"{queue}{REDIS_PRIORITY_SEP}{step}")
            pipe.hlen("unacked")
            values = pipe.execute()
        finally:
            client.close()
        per_queue = 1 + len(REDIS_PRIORITY_STEPS)
        for i, queue in enumerate(QUEUES):
            snapshot.queue_depth[queue] = sum(values[i * per_queue : (i + 1) * per_queue])
        snapshot.broker_unacked = int(values[-1])
    else:
        return  # another transport: no depth reported
    snapshot.broker_up = True


class AIWorkerCollector(Collector):
    """A prometheus_client collector that reads a fresh ``Snapshot`` per scrape (cached)."""

    def __init__(self, settings: Settings, cache_seconds: float = 5.0) -> None:
        self.settings = settings
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken_at = 0.0
        self.scrape_errors: dict[str, int] = {"database": 0, "broker": 0}

    def snapshot(self) -> Snapshot:
        with self._lock:  # one reader at a time; concurrent scrapes share the result
            now = time.monotonic()
            if self._snapshot is not None and now - self._taken_at < self.cache_seconds:
                return self._snapshot
            snap = Snapshot()
            try:
                read_database(snap)
            except Exception as exc:  # noqa: BLE001 - report "down", never fail the scrape
                self.scrape_errors["database"] += 1
                log.warning("metrics: database unreachable (%s: %s)", type(exc).__name__, exc)
            try:
                read_broker(snap, self.settings)
            except Exception as exc:  # noqa: BLE001 - same
                self.scrape_errors["broker"] += 1
                log.warning("metrics: broker unreachable (%s: %s)", type(exc).__name__, exc)
            self._snapshot, self._taken_at = snap, now
            return snap

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no description scrape: collect() reads the database

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()

        up = GaugeMetricFamily("aiw_database_up", "1 if the last read of the database worked")
        up.add_metric([], 1.0 if snap.database_up else 0.0)
        yield up
        broker = GaugeMetricFamily("aiw_broker_up", "1 if the last read of the broker worked")
        broker.add_metric([], 1.0 if snap.broker_up else 0.0)
        yield broker
        errors = CounterMetricFamily(
            "aiw_exporter_read_errors", "Failed reads by this exporter", labels=["source"]
        )
        for source, n in self.scrape_errors.items():
            errors.add_metric([source], n)
        yield errors

        if snap.database_up:
            yield from self._business(snap)

        depth = GaugeMetricFamily(
            "aiw_queue_depth", "Messages waiting in the broker, per queue", labels=["queue"]
        )
        for queue, n in sorted(snap.queue_depth.items()):
            depth.add_metric([queue], n)
        yield depth
        if snap.broker_unacked is not None:
            unacked = GaugeMetricFamily(
                "aiw_broker_unacked_messages",
                "Messages delivered to workers and not yet acknowledged (Redis)",
            )
            unacked.add_metric([], snap.broker_unacked)
            yield unacked

    def _business(self, snap: Snapshot) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("aiw_jobs", "AI requests by current status", labels=["status"])
        for member in JobStatus:
            jobs.add_metric([member.value], snap.jobs_by_status.get(member.value, 0))
        yield jobs
        submitted = CounterMetricFamily("aiw_requests", "AI requests accepted (submitted)")
        submitted.add_metric([], snap.jobs_submitted)
        yield submitted
        finished = CounterMetricFamily(
            "aiw_requests_finished",
            "AI requests that ended, by final status and the provider that answered",
            labels=["status", "provider"],
        )
        for (status, provider), n in sorted(snap.jobs_finished.items()):
            finished.add_metric([status, provider], n)
        yield finished
        failed = CounterMetricFamily(
            "aiw_requests_failed", "AI requests that failed, by error type", labels=["error_type"]
        )
        for error_type, n in sorted(snap.jobs_failed.items()):
            failed.add_metric([error_type], n)
        yield failed
        attempts = CounterMetricFamily(
            "aiw_provider_calls",
            "Provider calls (attempts) by outcome: succeeded, retry, failed, superseded, deferred,"
            " started (in flight), lost (the worker died during the call: possibly billed)",
            labels=["provider", "model", "outcome"],
        )
        retries = CounterMetricFamily(
            "aiw_retries", "Provider calls that ended in a retry", labels=["provider", "model"]
        )
        retried: dict[tuple[str, str], int] = {}  # 0 before the first retry: rate() works
        for (provider, model, outcome), n in sorted(snap.attempts.items()):
            attempts.add_metric([provider, model, outcome], n)
            retried[(provider, model)] = retried.get((provider, model), 0) + (
                n if outcome == AttemptOutcome.RETRY else 0
            )
        for (provider, model), n in sorted(retried.items()):
            retries.add_metric([provider, model], n)
        yield attempts
        yield retries
        call_failures = CounterMetricFamily(
            "aiw_provider_call_failures",
            "Provider calls that failed (retried or not), by error type",
            labels=["provider", "error_type"],
        )
        for (provider, error_type), n in sorted(snap.attempt_failures.items()):
            call_failures.add_metric([provider, error_type], n)
        yield call_failures
        latency = SummaryMetricFamily(
            "aiw_provider_call_latency_seconds",
            "Time spent in provider calls",
            labels=["provider", "model"],
        )
        for (provider, model), (n, total) in sorted(snap.latency.items()):
            latency.add_metric([provider, model], count_value=n, sum_value=total)
        yield latency
        tokens = CounterMetricFamily(
            "aiw_tokens",
            "Tokens of successful calls (kind: prompt, completion, cached, reasoning)",
            labels=["provider", "model", "kind"],
        )
        for (provider, model, kind), n in sorted(snap.tokens.items()):
            tokens.add_metric([provider, model, kind], n)
        yield tokens
        cost = CounterMetricFamily(
            "aiw_cost_usd", "Cost of successful calls, USD", labels=["provider", "model"]
        )
        for (provider, model), usd in sorted(snap.cost.items()):
            cost.add_metric([provider, model], usd)
        yield cost
        unknown = CounterMetricFamily(
            "aiw_cost_unknown_calls",
            "Successful calls whose model has no price (not in the cost)",
            labels=["provider", "model"],
        )
        for (provider, model), n in sorted(snap.cost_unknown.items()):
            unknown.add_metric([provider, model], n)
        yield unknown
        if snap.agent_runs_active is not None:
            active = GaugeMetricFamily(
                "aiw_agent_runs_active", "Codegen agent runs being followed (not ended)"
            )
            active.add_metric([], snap.agent_runs_active)
            yield active
            runs = GaugeMetricFamily(
                "aiw_agent_runs", "Codegen agent runs by state on our side", labels=["state"]
            )
            for state, n in sorted(snap.agent_runs_by_state.items()):
                runs.add_metric([state], n)
            yield runs
        if snap.webhook_deliveries is not None:
            deliveries = GaugeMetricFamily(
                "aiw_webhook_deliveries",
                "Webhook deliveries (event x endpoint) by status: pending, succeeded, failed, "
                "abandoned",
                labels=["status"],
            )
            for status, n in sorted(snap.webhook_deliveries.items()):
                deliveries.add_metric([status], n)
            yield deliveries
        if snap.budgets is not None:
            yield from _budget_gauges(snap.budgets)
        if snap.webhook_attempts is not None:
            tries = CounterMetricFamily(
                "aiw_webhook_attempts",
                "Webhook HTTP tries by outcome (2xx, 3xx, 4xx, 5xx, error: no answer)",
                labels=["outcome"],
            )
            for outcome, n in sorted(snap.webhook_attempts.items()):
                tries.add_metric([outcome], n)
            yield tries


def _budget_gauges(budgets: dict[str, tuple[float, float, float]]) -> Iterator[Metric]:
    """Each spend budget in its current window (one that has passed counts as empty)."""
    help_texts = (
        ("aiw_budget_spent_usd", "Spend budget: USD spent in its current window (UTC)"),
        ("aiw_budget_reserved_usd", "Spend budget: USD held by calls in flight"),
        ("aiw_budget_cap_usd", "Spend budget: its cap, USD per window"),
    )
    for i, (name, help_text) in enumerate(help_texts):
        gauge = GaugeMetricFamily(name, help_text, labels=["budget"])
        for budget, values in sorted(budgets.items()):
            gauge.add_metric([budget], values[i])
        yield gauge


def registry(settings: Settings) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(AIWorkerCollector(settings, cache_seconds=settings.aiw_metrics_cache))
    return reg


def serve(settings: Settings, address: str, port: int) -> tuple[Any, threading.Thread]:
    """Start the HTTP endpoint (``/metrics``) in a thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=address, registry=registry(settings))
