"""The bulkhead scenario of ``bench.faults``: AI job latency while a webhook receiver
stalls, with ``aiw worker``'s layout (a process per kind of work) and with one process
on every queue (shared threads). See ``bench.faults`` for the commands."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import func, select

from app.config import get_settings
from app.sandbox.webhook_receiver import WebhookReceiver
from bench.harness import Bed, bed, percentile

LAYOUTS = ("bulkheads", "one-process")


@contextlib.contextmanager
def layout(b: Bed, kind: str) -> Iterator[str]:
    """Start the worker processes of ``kind`` with the commands ``aiw worker`` runs; yields
    what they are; stops them at the end (their output goes to a log under the bed)."""
    from app.shell.runtime import Supervisor, add_workers, worker_argv
    from app.shell.topology import QUEUES, WORKER_KINDS, worker_concurrency

    settings = get_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEGEN_"))}
    env.update(b.env)
    log_path = Path(b.env["AIW_DATA_DIR"]).parent / f"supervisor-{kind}.log"
    with open(log_path, "w") as log:
        sup = Supervisor(log, grace=2, color=False)
        if kind == "bulkheads":
            add_workers(sup, settings, env)  # what `aiw worker` (and `aiw up`) start
            shape = ", ".join(f"{k} {worker_concurrency(k, settings)} threads ({','.join(q)})"
                              for k, q in WORKER_KINDS.items())
        else:
            threads = worker_concurrency("ai", settings)
            sup.add("worker-all", worker_argv(settings, queues=QUEUES, name="all@%h",
                                              extra=["--concurrency", str(threads)]),
                    env, ready_marker=" ready.")
            shape = f"one process, {threads} threads shared by {','.join(QUEUES)}"
        try:
            sup.start()
            deadline = time.monotonic() + 90
            for child in sup.children:
                while not child.ready.wait(0.2):
                    if not child.running or time.monotonic() > deadline:
                        raise RuntimeError(f"{child.name} did not start; see {log_path}")
            yield shape
        finally:
            sup.stop()


def latencies(ids: list[uuid.UUID]) -> tuple[list[float], Counter[str]]:
    from app.db.models import AIRequestRow as R
    from app.db.session import session_scope

    with session_scope() as s:
        rows = s.execute(select(R.status, R.created_at, R.finished_at).where(R.id.in_(ids)))
        found = rows.all()
    done = [(r.finished_at - r.created_at).total_seconds() for r in found
            if r.status == "succeeded"]
    return done, Counter(r.status for r in found)


def deliveries() -> Counter[str]:
    from app.db.session import session_scope
    from app.db.webhook_models import WebhookDeliveryRow as D

    with session_scope() as s:
        rows = s.execute(select(D.status, func.count()).group_by(D.status)).all()
    return Counter({status: count for status, count in rows})


def paced(n: int, rate: float, tag: str) -> list[uuid.UUID]:
    """Submit ``n`` jobs at ``rate`` per second (a steady pace, not a burst)."""
    from app.jobs import submit

    ids, t0 = [], time.perf_counter()
    for i in range(n):
        time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        ids.append(submit(f"{tag} {i}", tags=[tag]).id)
    return ids


def one_layout(kind: str, n: int, rate: float, stall: float) -> list[str]:
    extra = {
        "AIW_SECRET_KEY": Fernet.generate_key().decode(),
        "AIW_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "AIW_WEBHOOK_TIMEOUT": f"{stall + 30:g}",  # a stalled delivery still succeeds
        "AIW_SHUTDOWN_GRACE": "1",
        "OPENAI_TIMEOUT": "30",
    }
    lines = []
    receiver = WebhookReceiver()
    receiver.start()
    try:
        with bed(openai_latency=1.0, **extra) as b:
            from app.jobs import submit
            from app.webhooks import register_endpoint

            _, receiver.secret = register_endpoint(receiver.url, ["ai_request.succeeded"])
            with layout(b, kind) as shape:
                lines.append(f"{kind}: {shape}")
                if submit("warm up").wait(timeout=60).status != "succeeded":
                    raise RuntimeError("the warm-up job did not succeed")
                receiver.wait_for(1, 30)
                for phase, wait in (("receiver answers at once", 0.0),
                                    (f"receiver stalls {stall:g} s", stall)):
                    receiver.latency = wait
                    t0 = time.perf_counter()
                    ids = paced(n // 2, rate, "stall" if wait else "quick")
                    deadline = time.perf_counter() + 600
                    while True:
                        lat, statuses = latencies(ids)
                        if sum(statuses[s] for s in ("succeeded", "failed")) >= len(ids):
                            break
                        if time.perf_counter() > deadline:
                            break
                        time.sleep(0.2)
                    took = time.perf_counter() - t0
                    lines.append(
                        f"  {phase:<26} jobs {len(ids):>4}  succeeded {statuses['succeeded']:>4}"
                        f"  latency p50 {percentile(lat, 0.5):6.2f} s  p95 "
                        f"{percentile(lat, 0.95):6.2f} s  max {max(lat):6.2f} s  "
                        f"last done after {took:6.1f} s  deliveries {dict(deliveries())}"
                    )
                    print(lines[-1], flush=True)
    finally:
        receiver.stop()
    return lines


def run_bulkhead(n: int, rate: float, stall: float, kinds: list[str]) -> None:
    report = []
    for kind in [k for k in LAYOUTS if k in kinds]:
        print(f"-- {kind} ...", flush=True)
        try:
            report += one_layout(kind, n, rate, stall)
        except Exception as exc:
            report.append(f"{kind}: failed: {type(exc).__name__}: {str(exc)[:200]}")
            print(report[-1], flush=True)
    print()
    print(f"AI jobs {n} ({n // 2} per phase) at {rate:g}/s, provider latency 1 s, one webhook "
          f"endpoint for ai_request.succeeded; latency = created_at -> finished_at")
    print("\n".join(report))
