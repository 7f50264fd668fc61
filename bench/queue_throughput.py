"""Throughput of the whole path against raw Celery on the same Redis, same worker.

Whole path: submit() (row + publish), the task (claim, call the fake OpenAI server
with 0 ms latency over HTTP, record attempt + usage + job), measured from the first
submit to the last job succeeded in PostgreSQL. Baseline: send_task of a no-op task
that increments a Redis counter, from the first send to the counter reaching N.
Both from the same producer threads, through one worker process (threads pool), same
concurrency.

    .venv/bin/python -m bench.queue_throughput --jobs 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from app.db.models import AIRequestRow, JobStatus
from app.db.session import session_scope
from app.jobs import submit
from bench.harness import bed, wait_until
from bench.noop_tasks import COUNTER


def succeeded() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(AIRequestRow)
                        .where(AIRequestRow.status == JobStatus.SUCCEEDED)) or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--producers", type=int, default=8, help="threads submitting")
    args = parser.parse_args()
    n = args.jobs
    with bed() as b:
        b.worker(concurrency=args.concurrency)
        from workers.celery_app import create_celery_app

        app = create_celery_app()
        # Warm up both paths (connections, imports) before timing.
        app.send_task("bench.noop", args=[0])
        submit("warm up").wait(timeout=60)
        wait_until(lambda: int(b.redis.get(COUNTER) or 0) >= 1, 30)
        b.redis.set(COUNTER, 0)

        pool = ThreadPoolExecutor(args.producers)
        t0 = time.perf_counter()
        list(pool.map(lambda i: app.send_task("bench.noop", args=[i]), range(n)))
        raw_send = time.perf_counter() - t0
        wait_until(lambda: int(b.redis.get(COUNTER) or 0) >= n, 600, interval=0.01)
        raw = time.perf_counter() - t0

        before = succeeded()
        t0 = time.perf_counter()
        list(pool.map(lambda i: submit(f"bench {i}"), range(n)))
        full_submit = time.perf_counter() - t0
        wait_until(lambda: succeeded() >= before + n, 900, interval=0.05)
        full = time.perf_counter() - t0
        app.close()

    raw_rate, full_rate = n / raw, n / full
    print(f"jobs: {n}, {args.producers} producer threads, worker: 1 process, threads pool, "
          f"concurrency {args.concurrency}")
    print(f"raw Celery no-op : {raw_rate:8.1f} tasks/s  (sending {n / raw_send:.0f}/s)")
    print(f"whole path       : {full_rate:8.1f} jobs/s   (submitting {n / full_submit:.0f}/s)")
    print(f"ratio whole/raw  : {full_rate / raw_rate:.2f}  (goal >= 0.5)")


if __name__ == "__main__":
    main()
