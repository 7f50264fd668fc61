"""Following many Codegen agent runs at once under Codegen's rate limit.

N active runs (default 2,000) at the fake Codegen API, which enforces 60 requests per
30 s (429 past it) and ends each run at a random time (PENDING for a fifth of its
length, then ACTIVE, then COMPLETE). ai-worker follows them with one real worker and
one beat (PostgreSQL, Redis): the poll rounds, status callbacks (a Celery task
recording when it ran) and signed webhooks to a local receiver that verifies them.

Printed: the API calls used (list pages, GETs, logs), the 429s received (goal 0), the
most requests in any 30 s window, and the delay from a status change at the fake to
the callback running and to the webhook arriving (p50, p95, max; goal p95 within two
poll intervals).

Set-up: the runs are made with the fake's ``add_run`` and their rows written directly
(status PENDING, due now), as ``track_agent_run`` would leave them; tracking 2,000 runs
one by one would first cost 2,000 GETs. Only what happens after is measured.

    AIW_BENCH_REDIS_DB=6 .venv/bin/python -m bench.agent_poll --runs 2000
"""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from collections import Counter
from datetime import timedelta

from cryptography.fernet import Fernet
from sqlalchemy import func, select

from app.db.agent_run_models import AgentRunRow, AgentRunState
from app.db.base import utcnow
from app.db.session import session_scope
from app.sandbox.codegen_server import FakeCodegenServer
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks import register_endpoint
from bench.harness import bed, percentile
from tests.integration.agent_run_callbacks import CALLBACK, received


def states() -> Counter[str]:
    with session_scope() as s:
        rows = s.execute(select(AgentRunRow.state, func.count()).group_by(AgentRunRow.state))
        return Counter({state: count for state, count in rows})


def most_in_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def figures(label: str, delays: list[float], goal: float) -> str:
    if not delays:
        return f"{label}: none"
    p50, p95 = percentile(delays, 0.50), percentile(delays, 0.95)
    verdict = "within" if p95 <= goal else "OVER"
    return (
        f"{label}: p50 {p50:.1f} s, p95 {p95:.1f} s, max {max(delays):.1f} s (n={len(delays)}); "
        f"p95 {verdict} two poll intervals ({goal:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--min-length", type=float, default=60.0, help="shortest run, s")
    parser.add_argument("--max-length", type=float, default=240.0, help="longest run, s")
    parser.add_argument("--poll-interval", type=float, default=15.0, help="per run, s")
    parser.add_argument("--sweep-interval", type=float, default=2.0, help="beat, s")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="threads of the callbacks/webhooks worker"
    )
    parser.add_argument("--logs", action="store_true", help="also fetch every run's logs")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    fake = FakeCodegenServer().start()  # 60 requests / 30 s, like Codegen
    receiver = WebhookReceiver().start()
    extra = {
        "CODEGEN_TOKEN": fake.token,
        "CODEGEN_ORG_ID": str(fake.org_id),
        "CODEGEN_BASE_URL": fake.url,
        "AIW_AGENT_POLL_INTERVAL": str(args.poll_interval),
        "AIW_AGENT_POLL_MAX_INTERVAL": str(args.poll_interval * 4),
        "AIW_AGENT_POLL_SWEEP_INTERVAL": str(args.sweep_interval),
        "AIW_AGENT_RUN_LOGS": "true" if args.logs else "false",
        "AIW_IMPORTS": "tests.integration.agent_run_callbacks",
        "AIW_SECRET_KEY": Fernet.generate_key().decode(),
        "AIW_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "AIW_WORKER_CONCURRENCY": str(args.concurrency),
    }
    try:
        with bed(**extra) as b:
            _, secret = register_endpoint(receiver.url, ["agent_run.*"])
            receiver.secret = secret

            # The workers and beat first: the clock starts with the runs, not before. The
            # poller has a worker of its own (as in production: -Q agent_runs), so that
            # thousands of callbacks and webhook deliveries never delay a poll round.
            b.worker(concurrency=4, queues="agent_runs")
            b.worker(concurrency=args.concurrency, queues="ai_requests,webhooks,maintenance")
            b.launcher.beat(dict(b.env))
            time.sleep(2)

            # Runs at the fake, and the rows following them (due now).
            changes: dict[tuple[int, str], float] = {}  # (remote id, status) -> wall time
            remote_ids = []
            first_run = time.time()
            for n in range(args.runs):
                length = rng.uniform(args.min_length, args.max_length)
                pending, active = length * 0.2, length * 0.8
                created = time.time()
                rid = fake.add_run(f"task {n}", pending_seconds=pending, active_seconds=active)
                changes[(rid, "ACTIVE")] = created + pending
                changes[(rid, "COMPLETE")] = created + length
                remote_ids.append(rid)
            now = utcnow()
            with session_scope() as s:
                s.add_all(
                    AgentRunRow(
                        remote_id=rid, state=AgentRunState.ACTIVE, source="tracked",
                        marker=uuid.uuid4(), remote_status="PENDING", callbacks=[CALLBACK],
                        poll_interval=args.poll_interval, next_poll_at=now,
                        last_status_change_at=now, deadline_at=now + timedelta(hours=1),
                    )
                    for rid in remote_ids
                )  # fmt: skip
            with session_scope() as s:
                row_of = dict(s.execute(select(AgentRunRow.id, AgentRunRow.remote_id)).all())
            print(f"{args.runs} runs at the fake, {args.min_length:g}-{args.max_length:g} s "
                  f"long; poll interval {args.poll_interval:g} s, beat every "
                  f"{args.sweep_interval:g} s; logs {'on' if args.logs else 'off'}")

            started = first_run
            deadline = started + args.max_length + 10 * args.poll_interval + 120
            while states().get("finished", 0) < args.runs:
                if time.time() > deadline:
                    print(f"NOT ALL FINISHED: {dict(states())}")
                    break
                time.sleep(1)
            if args.logs:
                while time.time() < deadline:
                    with session_scope() as s:
                        left = s.scalar(select(func.count()).where(
                            AgentRunRow.logs_fetched_at.is_(None)))  # fmt: skip
                    if not left:
                        break
                    time.sleep(1)
            elapsed = time.time() - started
            time.sleep(3)  # the last callbacks and webhooks

            # Calls and limits, as the fake saw them.
            calls = [r for r in fake.requests if r.at >= first_run]
            pages = sum(1 for r in calls if r.path.endswith("/agent/runs"))
            logs = sum(1 for r in calls if r.path.endswith("/logs"))
            gets = len(calls) - pages - logs
            print(f"finished {states().get('finished', 0)}/{args.runs} in {elapsed:.0f} s")
            print(f"API calls: {len(calls)} ({pages} list pages, {gets} GETs, {logs} logs) = "
                  f"{len(calls) / elapsed:.2f}/s; most in any 30 s window: "
                  f"{most_in_window([r.at for r in calls], 30.0)} (limit 60)")
            print(f"429s received: {fake.rate_limited_count}")
            print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
                  "(the poller, its callbacks and webhook deliveries share them)")

            # Delays: status change at the fake -> callback ran / webhook verified.
            goal = 2 * args.poll_interval
            cb_delays, skipped = [], 0
            for c in received(b.redis):
                rid = row_of[int(c["run_id"])]
                new = str(c["new"])
                cb_delays.append(float(c["at"]) - changes[(rid, new)])  # type: ignore[arg-type]
                if c["old"] == "PENDING" and new == "COMPLETE":
                    skipped += 1
            hook_delays = []
            for r in receiver.verified():
                if r.event_type == "agent_run.status_changed":
                    rid = int(r.data["remote_id"])
                    hook_delays.append(r.at - changes[(rid, r.data["new_status"])])
            print(figures("change -> callback", cb_delays, goal))
            print(figures("change -> webhook ", hook_delays, goal))
            print(f"runs seen going straight PENDING -> COMPLETE (ACTIVE missed): {skipped}")
            print(f"webhooks verified: {len(receiver.verified())}, refused: "
                  f"{len(receiver.received) - len(receiver.verified())}")
    finally:
        receiver.stop()
        fake.stop()


if __name__ == "__main__":
    main()
