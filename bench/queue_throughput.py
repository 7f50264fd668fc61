"""Throughput of ai-worker's whole path against what a user would write by hand and
against raw Celery, one after the other in the same run, same Redis, same PostgreSQL,
same fake OpenAI server (answering at once), same producer threads.

Three cases, each through its own fresh worker process (threads pool, same
concurrency), started and warmed up (one task) before the clock starts:

- noop: ``send_task`` of a no-op task (ai-worker's Celery app) that increments a Redis
  counter; from the first send to the counter reaching N.
- handwritten: ``send_task`` with a prompt to a plain Celery app of its own
  (``bench.handwritten``: openai SDK call, one INSERT); from the first send to the
  N-th row.
- aiworker: ``app.jobs.submit`` (row + publish), the task (claim, call over HTTP,
  record attempt + usage + job); from the first submit to the N-th answer recorded
  (``harness.answers_recorded``), and every job checked succeeded at the end.

CPU ms/job is the worker process(es)' utime+stime (with children, from /proc) over the
timed jobs; peak RSS is the worker's VmHWM. The producers' and the fake server's CPU
(this process) is not counted there; "machine ms/job" counts everything (the whole
machine's busy time from /proc/stat: workers, PostgreSQL, Redis, the fake server, the
producers), so it means something on a quiet machine only. With
``AIW_BENCH_PROFILE=<dir>`` each worker is recorded by py-spy (``--gil``, raw folded
stacks) over the timed jobs.

    .venv/bin/python -m bench.queue_throughput --jobs 1500 --concurrency 32 --producers 8
    .venv/bin/python -m bench.queue_throughput --cases handwritten,aiworker
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from sqlalchemy import create_engine

from bench import handwritten
from bench.harness import (
    CASES,
    Bed,
    CaseResult,
    Workers,
    answers_recorded,
    bed,
    jobs_succeeded,
    parse_cases,
    print_load,
    print_table,
    run_case,
    wait_until,
)
from bench.noop_tasks import COUNTER

POLL = 0.05  # seconds between checks of the done count (a count query on PostgreSQL)


def timed(
    case: str,
    n: int,
    workers: Workers,
    produce: Callable[[], object],
    done: Callable[[], int],
) -> CaseResult:
    """Produce n jobs from the producer threads; time first send to the n-th done."""
    start = done()
    workers.mark()
    t0 = time.perf_counter()
    produce()
    sending = time.perf_counter() - t0
    wait_until(lambda: done() >= start + n, 900, interval=POLL)
    elapsed = time.perf_counter() - t0
    cpu, machine = workers.cpu(), workers.machine_cpu()
    return CaseResult(case, n, elapsed, n / elapsed, None, cpu, workers.rss_mb(),
                      note=f"{n / sending:.0f}/s", machine_cpu_s=machine,
                      others_cpu_s=workers.others_cpu())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=32, help="worker threads")
    parser.add_argument("--producers", type=int, default=8, help="threads submitting")
    parser.add_argument("--cases", type=parse_cases, default=list(CASES),
                        help=f"comma list of {','.join(CASES)} (default: all)")
    args = parser.parse_args()
    n = args.jobs
    print_load()
    pool = ThreadPoolExecutor(args.producers)

    def noop(b: Bed) -> CaseResult:
        from workers.celery_app import create_celery_app

        app = create_celery_app()
        try:
            with Workers(b, concurrency=args.concurrency, name="noop",
                         queues="ai_requests,agent_runs,webhooks,maintenance") as w:
                b.redis.set(COUNTER, 0)
                app.send_task("bench.noop", args=[0])  # warm up
                wait_until(lambda: int(b.redis.get(COUNTER) or 0) >= 1, 60)
                return timed(
                    "noop", n, w,
                    lambda: list(pool.map(lambda i: app.send_task("bench.noop", args=[i]),
                                          range(n))),
                    lambda: int(b.redis.get(COUNTER) or 0),
                )
        finally:
            app.close()

    def hand(b: Bed) -> CaseResult:
        app = handwritten.create_app(b.broker_url)
        db = create_engine(b.db_url, pool_size=2)
        try:
            handwritten.create_table(db)
            with Workers(b, app="bench.handwritten", concurrency=args.concurrency,
                         name="handwritten", queues=handwritten.QUEUE) as w:
                before = handwritten.count_answers(db)
                app.send_task(handwritten.TASK, args=["warm up"])
                wait_until(lambda: handwritten.count_answers(db) > before, 60)
                return timed(
                    "handwritten", n, w,
                    lambda: list(pool.map(
                        lambda i: app.send_task(handwritten.TASK, args=[f"bench {i}"]),
                        range(n))),
                    lambda: handwritten.count_answers(db),
                )
        finally:
            app.close()
            db.dispose()

    def aiworker(b: Bed) -> CaseResult:
        # Imported here: a broken whole path fails this case only.
        from app.jobs import submit

        # The AI worker of ``aiw up`` and compose: the ai_requests queue alone (its
        # BRPOP names that queue's priority lists only).
        with Workers(b, concurrency=args.concurrency, name="aiworker",
                     queues="ai_requests") as w:
            job = submit("warm up").wait(timeout=60)
            if job.status != "succeeded":
                raise RuntimeError(f"warm-up job ended {job.status}")
            result = timed(
                "aiworker", n, w,
                lambda: list(pool.map(lambda i: submit(f"bench {i}"), range(n))),
                answers_recorded,
            )
        if jobs_succeeded() != n + 1:
            raise RuntimeError(f"{jobs_succeeded()} jobs succeeded, not {n + 1}")
        return result

    cases = {"noop": noop, "handwritten": hand, "aiworker": aiworker}
    try:
        results = []
        for c in args.cases:  # each case on a fresh bed: its own database, Redis db, fake
            with bed() as b:
                results.append(run_case(c, partial(cases[c], b)))
    finally:
        pool.shutdown()

    print()
    print(f"jobs {n}, {args.producers} producer threads; each case: a fresh worker, 1 "
          f"process, threads pool, concurrency {args.concurrency}; provider latency 0 s")
    print_table(results, note_header="sent/s")
    by = {r.case: r for r in results if r.error is None}
    if "aiworker" in by and "noop" in by:
        print(f"goal ai-worker / raw no-op >= 0.5: "
              f"{'met' if by['aiworker'].rate / by['noop'].rate >= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
