"""One worker process, a provider that takes 1 s per answer, concurrency 200.

The ideal is 200 completions per second (each slot busy 1 s per job). Jobs are
submitted first (the worker is stopped meanwhile), then one worker with a threads
pool of the given concurrency drains them; the rate is measured between 10% and
90% of completions, and the worker's peak resident memory (VmHWM) is read from
/proc at the end.

    .venv/bin/python -m bench.slow_provider --jobs 2000 --concurrency 200 --latency 1.0
"""

from __future__ import annotations

import argparse
import time

from sqlalchemy import func, select

from app.db.models import AIRequestRow, JobStatus
from app.db.session import session_scope
from app.jobs import submit
from bench.harness import bed, peak_rss_mb


def succeeded() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(AIRequestRow)
                        .where(AIRequestRow.status == JobStatus.SUCCEEDED)) or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (scale-out)")
    args = parser.parse_args()
    n = args.jobs
    with bed(openai_latency=args.latency, OPENAI_TIMEOUT="30") as b:
        for i in range(n):
            submit(f"slow {i}")
        per = max(1, args.concurrency // args.workers)
        workers = [
            b.worker(concurrency=per, queues="ai_requests", ready_timeout=60)
            for _ in range(args.workers)
        ]
        marks: dict[float, float] = {}
        start = time.perf_counter()
        while True:
            done = succeeded()
            for q in (0.1, 0.9, 1.0):
                if q not in marks and done >= q * n:
                    marks[q] = time.perf_counter() - start
            if done >= n or time.perf_counter() - start > 900:
                break
            time.sleep(0.1)
        rss = max(peak_rss_mb(w.proc.pid) for w in workers)
    window = marks.get(0.9, float("nan")) - marks.get(0.1, float("nan"))
    rate = 0.8 * n / window
    ideal = args.concurrency / args.latency
    print(f"jobs {n}, {args.workers} worker process(es), threads pool, total concurrency "
          f"{args.concurrency}, "
          f"provider latency {args.latency:.1f}s")
    print(f"steady rate (10%..90%): {rate:.1f} jobs/s; ideal {ideal:.0f}/s -> "
          f"{100 * rate / ideal:.0f}% of ideal (goal >= 75%)")
    print(f"all done in {marks.get(1.0, float('nan')):.1f}s; worker peak RSS {rss:.0f} MB "
          f"per process (goal < 500 MB)")


if __name__ == "__main__":
    main()
