"""Signed webhook deliveries per second, through real workers, to a local receiver that
verifies every signature with the standardwebhooks library.

Two figures, each next to a baseline measured the same way in the same run:

- drain: N deliveries already queued (emitted while no worker ran), then the
  worker(s) start; first to last verified receipt. This is the delivery machinery:
  the aiw.webhook.deliver task (claim, sign, POST through the URL guard, record the
  attempt). Baseline: N raw Celery no-op tasks queued the same way, first to last.
- end to end: N events emitted (one endpoint each, --batch events per transaction,
  from producer threads, each published to Redis after its commit) while the
  worker(s) run; first emit to N-th verified receipt. Baseline: N no-op tasks sent
  from the same threads, first send to the N-th run.

A third baseline, raw signed requests POSTs from a thread pool of the worker's size to
the same receiver, shows what HTTP, signing and verification alone cost here.

    AIW_BENCH_REDIS_DB=6 .venv/bin/python -m bench.webhook_throughput --deliveries 2000
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import redis
import requests
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from app.db.session import session_scope
from app.db.webhook_models import WebhookDeliveryRow
from app.sandbox.webhook_receiver import Received, WebhookReceiver
from app.webhooks import emit, register_endpoint
from app.webhooks.signing import event_body, sign_headers
from bench.harness import Bed, bed, percentile, wait_until
from bench.noop_tasks import COUNTER


def delivery_statuses() -> Counter[str]:
    with session_scope() as s:
        rows = s.execute(
            select(WebhookDeliveryRow.status, func.count()).group_by(WebhookDeliveryRow.status)
        ).all()
    return Counter({status: count for status, count in rows})


def raw_posts(url: str, secret: str, n: int, threads: int) -> float:
    """Signed POSTs straight from a thread pool (one keep-alive session per thread)."""
    local = threading.local()
    created = datetime.now().astimezone()

    def post(i: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        body = event_body("webhook.test", {"n": i}, created)
        response = session.post(
            url, data=body.encode(), headers=sign_headers(secret, f"msg_raw{i}", body), timeout=10
        )
        response.raise_for_status()

    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(post, range(n)))
        return time.perf_counter() - t0


def counter_span(client: redis.Redis, n: int) -> float:
    """Seconds from the first no-op run to the n-th (polled every 5 ms)."""
    wait_until(lambda: int(client.get(COUNTER) or 0) >= 1, 120, interval=0.005)
    t0 = time.perf_counter()
    wait_until(lambda: int(client.get(COUNTER) or 0) >= n, 900, interval=0.005)
    return time.perf_counter() - t0


def receipt_span(received: list[Received]) -> float:
    return received[-1].at - received[0].at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16, help="threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--producers", type=int, default=4, help="threads emitting")
    parser.add_argument("--batch", type=int, default=50, help="events per transaction")
    args = parser.parse_args()
    n = args.deliveries
    extra = {
        "AIW_SECRET_KEY": Fernet.generate_key().decode(),
        "AIW_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "AIW_WEBHOOK_RETRY_SCHEDULE": "1,1,1",
    }
    receiver = WebhookReceiver().start()
    pool = ThreadPoolExecutor(args.producers)

    def emit_events(count: int) -> None:
        def emit_batch(start: int) -> None:
            with session_scope() as s:
                for i in range(start, min(start + args.batch, count)):
                    emit(s, "agent_run.completed", {"n": i, "result": "done " * 20})

        list(pool.map(emit_batch, range(0, count, args.batch)))

    unverified = 0

    def fresh() -> None:
        nonlocal unverified
        unverified += sum(not r.verified for r in receiver.received)
        receiver.received.clear()
        receiver.requests.clear()

    try:
        with bed(**extra) as b:
            _, secret = register_endpoint(receiver.url, ["agent_run.*"])
            receiver.secret = secret
            from workers.celery_app import create_celery_app

            app = create_celery_app()

            def send_noops() -> None:
                list(pool.map(lambda i: app.send_task("bench.noop", args=[i]), range(n)))

            def start_workers(b: Bed) -> None:
                for i in range(args.workers):
                    b.worker(concurrency=args.concurrency, name=f"bench{i}@%h")

            # Drain: queued with no worker running, then the worker(s) start.
            send_noops()
            start_workers(b)
            noop_drain = counter_span(b.redis, n)
            b.launcher.stop_all()
            b.redis.set(COUNTER, 0)
            emit_events(n)
            start_workers(b)
            drained = receiver.wait_for(n, timeout=900)
            webhook_drain = receipt_span(drained)
            check = list(drained)
            fresh()

            # End to end, the worker(s) running.
            b.redis.set(COUNTER, 0)
            t0 = time.perf_counter()
            send_noops()
            wait_until(lambda: int(b.redis.get(COUNTER) or 0) >= n, 900, interval=0.005)
            noop_e2e = time.perf_counter() - t0
            t0 = time.perf_counter()
            emit_events(n)
            emitting = time.perf_counter() - t0
            got = receiver.wait_for(n, timeout=900)
            webhook_e2e = time.perf_counter() - t0
            check += got
            fresh()

            raw_http = raw_posts(receiver.url, secret, n, args.concurrency * args.workers)
            app.close()
            wait_until(lambda: delivery_statuses().get("succeeded", 0) >= 2 * n, 120)
            statuses = delivery_statuses()
    finally:
        pool.shutdown()
        receiver.stop()

    ids = Counter(r.webhook_id for r in check)
    lags = [r.at - datetime.fromisoformat(json.loads(r.body)["timestamp"]).timestamp() for r in got]
    rates = {
        "noop_drain": (n - 1) / noop_drain,
        "drain": (n - 1) / webhook_drain,
        "noop_e2e": n / noop_e2e,
        "e2e": n / webhook_e2e,
        "http": n / raw_http,
    }
    print(
        f"N = {n}; worker(s): {args.workers} process(es), threads pool, concurrency "
        f"{args.concurrency}; end to end: {args.producers} producer threads, "
        f"{args.batch} events per commit"
    )
    print(f"drain       raw Celery no-op : {rates['noop_drain']:7.1f} tasks/s")
    print(
        f"drain       signed deliveries: {rates['drain']:7.1f} deliveries/s   "
        f"ratio {rates['drain'] / rates['noop_drain']:.2f}"
    )
    print(f"end to end  raw Celery no-op : {rates['noop_e2e']:7.1f} tasks/s")
    print(
        f"end to end  signed deliveries: {rates['e2e']:7.1f} deliveries/s   "
        f"ratio {rates['e2e'] / rates['noop_e2e']:.2f}   (emitting {n / emitting:.0f} events/s)"
    )
    print(f"raw signed POSTs, no queue   : {rates['http']:7.1f} requests/s")
    print(
        f"end to end, commit -> verified receipt: p50 {percentile(lags, 0.5) * 1000:.0f} ms, "
        f"p95 {percentile(lags, 0.95) * 1000:.0f} ms (everything queued at once)"
    )
    duplicates = sum(c - 1 for c in ids.values())
    print(
        f"verified {len(check)} / {2 * n}, unverified {unverified}, duplicate ids {duplicates}, "
        f"delivery rows {dict(statuses)}"
    )
    print(f"goal >= 300 deliveries/s (drain): {'met' if rates['drain'] >= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
