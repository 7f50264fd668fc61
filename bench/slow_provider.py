"""A provider that takes 1 s per answer, worker threads 200: ai-worker's whole path
against what a user would write by hand and against raw Celery, one after the other in
the same run (same Redis, PostgreSQL and fake OpenAI server).

The ideal is threads / latency completions per second (each slot busy ``latency`` per
job). In each case the N jobs are queued first (no worker running), then fresh worker
process(es) with a threads pool of the given total concurrency drain them; the rate is
measured between 10% and 90% of completions ("seconds": first worker ready to the last
one). Cases:

- noop: raw Celery no-op tasks (ai-worker's Celery app) counting in Redis; they call
  no provider, so there is no ideal: the ceiling of the queue itself.
- handwritten: a plain Celery app of its own (``bench.handwritten``: openai SDK call,
  one INSERT), jobs sent with ``send_task`` and a prompt; done = rows in its table.
- aiworker: ``app.jobs.submit``; done = answers recorded (``harness.answers_recorded``),
  and every job checked succeeded at the end.

CPU ms/job is the worker process(es)' utime+stime (with children, from /proc) from
"ready" to the last completion, over N; "machine ms/job" the whole machine's busy CPU
over the same time (quiet machine only); peak RSS is the largest VmHWM of one worker.

    .venv/bin/python -m bench.slow_provider --jobs 2000 --concurrency 200 --latency 1.0
    .venv/bin/python -m bench.slow_provider --cases handwritten,aiworker --workers 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

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
)
from bench.noop_tasks import COUNTER

POLL = 0.05  # seconds between checks of the done count (a count query)
POLL_NOOP = 0.005  # the no-op count is one Redis GET; its drain takes a second or two
TIMEOUT = 900


def drain(
    b: Bed, case: str, n: int, workers: int, per: int, ideal: float | None,
    done: Callable[[], int], poll: float = POLL, **worker_kwargs: Any,
) -> CaseResult:
    """Start the worker(s) on the queued jobs; time 10%, 90% and 100% of completions
    from the first worker ready."""
    start = done()
    with Workers(b, workers, wait=False, concurrency=per, name=case, **worker_kwargs) as w:
        marks: dict[float, float] = {}
        while True:
            if not w.all_ready:
                w.poll_ready()
            if w.ready_at is None:
                time.sleep(0.01)
                continue
            finished = done() - start
            elapsed = time.perf_counter() - w.ready_at
            for q in (0.1, 0.9, 1.0):
                if q not in marks and finished >= q * n:
                    marks[q] = elapsed
            if finished >= n:
                break
            if elapsed > TIMEOUT:
                raise TimeoutError(f"{finished}/{n} done after {TIMEOUT}s")
            time.sleep(poll)
        while not w.poll_ready():  # a worker that came up after the last job
            time.sleep(0.01)
        cpu, machine, others = w.cpu(), w.machine_cpu(), w.others_cpu()
        rss = w.rss_mb()
    window = marks[0.9] - marks[0.1]
    rate = 0.8 * n / window if window > 0 else n / marks[1.0]
    return CaseResult(case, n, marks[1.0], rate, ideal, cpu, rss, machine_cpu_s=machine,
                      others_cpu_s=others)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200, help="worker threads in all")
    parser.add_argument("--latency", type=float, default=1.0, help="provider seconds per answer")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (scale-out)")
    parser.add_argument("--cases", type=parse_cases, default=list(CASES),
                        help=f"comma list of {','.join(CASES)} (default: all)")
    args = parser.parse_args()
    n = args.jobs
    per = max(1, args.concurrency // args.workers)
    threads = per * args.workers
    ideal = threads / args.latency if args.latency > 0 else None
    print_load()

    def noop(b: Bed) -> CaseResult:
        from workers.celery_app import create_celery_app

        app = create_celery_app()
        try:
            b.redis.set(COUNTER, 0)
            with app.producer_or_acquire() as producer:
                for i in range(n):
                    app.send_task("bench.noop", args=[i], producer=producer)
            return drain(b, "noop", n, args.workers, per, None,
                         lambda: int(b.redis.get(COUNTER) or 0), poll=POLL_NOOP,
                         queues="ai_requests")
        finally:
            app.close()

    def hand(b: Bed) -> CaseResult:
        app = handwritten.create_app(b.broker_url)
        db = create_engine(b.db_url, pool_size=2)
        try:
            handwritten.create_table(db)
            for i in range(n):
                app.send_task(handwritten.TASK, args=[f"slow {i}"])
            return drain(b, "handwritten", n, args.workers, per, ideal,
                         lambda: handwritten.count_answers(db),
                         app="bench.handwritten", queues=handwritten.QUEUE)
        finally:
            app.close()
            db.dispose()

    def aiworker(b: Bed) -> CaseResult:
        # Imported here: a broken whole path fails this case only.
        from app.jobs import submit

        for i in range(n):
            submit(f"slow {i}")
        result = drain(b, "aiworker", n, args.workers, per, ideal, answers_recorded,
                       queues="ai_requests")
        if jobs_succeeded() != n:
            raise RuntimeError(f"{jobs_succeeded()} jobs succeeded, not {n}")
        return result

    cases = {"noop": noop, "handwritten": hand, "aiworker": aiworker}
    results = []
    for c in args.cases:  # each case on a fresh bed: its own database, Redis db and fake
        with bed(openai_latency=args.latency, OPENAI_TIMEOUT="30") as b:
            results.append(run_case(c, partial(cases[c], b)))

    print()
    print(f"jobs {n}; each case: fresh worker(s), {args.workers} process(es), threads pool, "
          f"{threads} threads in all; provider latency {args.latency:g} s; jobs queued "
          f"first, then drained; jobs/s = steady rate 10%..90%; ideal = threads / latency"
          + (f" = {ideal:.0f}/s" if ideal else ""))
    # The no-op calls no provider: no ai-worker / no-op ratio here.
    print_table(results, noop_ratio=False)
    for r in results:
        if r.error is None and r.ideal:
            rate_ok = "met" if r.rate >= 0.75 * r.ideal else "NOT met"
            rss_ok = "met" if r.rss_mb < 500 else "NOT met"
            print(f"goal {r.case}: >= 75% of ideal: {rate_ok}; "
                  f"peak RSS < 500 MB per process: {rss_ok}")


if __name__ == "__main__":
    main()
