"""Faults: 20% random 429s, and a webhook receiver that stalls; figures, no assertions.

``--scenario 429``: the fake OpenAI server answers a random 20% of chat completions 429
(``rate_limit_exceeded``, ``retry-after-ms: 1000`` and ``retry-after: 1``, its
``x-ratelimit-*`` headers), instantly otherwise. ``--jobs`` jobs are submitted from
producer threads to one warmed-up worker process (threads pool, ``--concurrency`` 32),
each case on a fresh bed; from the first submit to the last job done:

- handwritten: ``bench.handwritten`` with the SDK's default ``max_retries=2``
  (``HANDWRITTEN_SDK_RETRIES=2``): what ``OpenAI()`` gives a user who writes nothing
  more; the SDK waits out each 429's ``retry-after-ms`` in the thread that met it. A job
  meeting three 429s in a row is lost (the task fails; nothing retries it).
- aiworker: ``app.jobs.submit``; a 429 is retried after its Retry-After and starts a
  shared cooldown of that model, during which the model's other jobs are deferred.
- aiworker-2models: half the jobs on model A (``gpt-4o-mini``), half on B
  (``gpt-4.1-mini``), only A answered 429s: B's rate and latency beside A's.

"exactly once" counts jobs with one stored answer that the fake answered once (200s
the fake sent == answers stored == distinct prompts answered).

``--scenario bulkhead``: provider latency 1 s, a webhook endpoint for
``ai_request.succeeded`` on a loopback receiver. ``--ai-jobs`` jobs at ``--rate`` per
second, half with the receiver answering at once, then half with it stalling
``--stall`` s (``AIW_WEBHOOK_TIMEOUT`` above it). Job latency = ``created_at`` to
``finished_at`` in the database. Two layouts (``bench.faults_bulkhead``):

- bulkheads: ``aiw worker``'s layout (``app.shell.runtime.add_workers``: one process per
  kind, ``app.shell.topology.WORKER_KINDS`` and ``worker_concurrency``);
- one process: every queue (``topology.QUEUES``) on one process of
  ``AIW_WORKER_CONCURRENCY`` (32) shared threads, the old shape.

Run each under the benchmark lock (no two benchmarks at once on a shared machine). All
three 429 cases at 2,000 jobs take about 9 minutes on 2 cores (ai-worker alone about 6),
so they can be split with ``--cases``::

    AIW_BENCH_REDIS_DB=7 AIW_BENCH_DB_PREFIX=aiw_faults_ flock /tmp/aiw-bench.lock \\
        .venv/bin/python -m bench.faults --scenario 429 --jobs 2000
    AIW_BENCH_REDIS_DB=7 AIW_BENCH_DB_PREFIX=aiw_faults_ flock /tmp/aiw-bench.lock \\
        .venv/bin/python -m bench.faults --scenario 429 --cases handwritten,aiworker
    AIW_BENCH_REDIS_DB=7 AIW_BENCH_DB_PREFIX=aiw_faults_ flock /tmp/aiw-bench.lock \\
        .venv/bin/python -m bench.faults --scenario 429 --cases aiworker-2models
    AIW_BENCH_REDIS_DB=7 AIW_BENCH_DB_PREFIX=aiw_faults_ flock /tmp/aiw-bench.lock \\
        .venv/bin/python -m bench.faults --scenario bulkhead --ai-jobs 300 --stall 30
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from sqlalchemy import create_engine, func, select

from bench import handwritten
from bench.faults_bulkhead import run_bulkhead
from bench.harness import (
    CASE_LABELS,
    Bed,
    CaseResult,
    Workers,
    bed,
    percentile,
    print_load,
    print_table,
    run_case,
    wait_until,
)

MODEL_A, MODEL_B = "gpt-4o-mini", "gpt-4.1-mini"
CASES_429 = ("handwritten", "aiworker", "aiworker-2models")
POLL = 0.1
QUIET = 5.0  # seconds without progress or requests: the rest will not finish


def settle(t0: float, n: int, done: Callable[[], int], activity: Callable[[], int]) -> float:
    """Seconds from ``t0`` until ``done() >= n``, or until the last progress when nothing
    moved (no job done, no request to the fake) for ``QUIET`` seconds (lost jobs)."""
    last, changed = (done(), activity()), time.perf_counter()
    while last[0] < n:
        time.sleep(POLL)
        now, seen = time.perf_counter(), (done(), activity())
        if seen != last:
            last, changed = seen, now
        elif now - changed > QUIET:
            return changed - t0
        if now - t0 > 900:
            raise TimeoutError(f"{last[0]}/{n} done after 900 s")
    return time.perf_counter() - t0


def answered(b: Bed) -> int:
    """Chat completions the fake answered 200 since the requests were last cleared."""
    return len(b.openai.chat_requests()) - sum(b.openai.random_rate_limited.values())


def job_rows(skip: object) -> list[Any]:
    """The jobs but ``skip`` (the warm-up): model, status, created_at, finished_at."""
    from app.db.models import AIRequestRow as R
    from app.db.session import session_scope

    with session_scope() as s:
        query = select(R.model, R.status, R.created_at, R.finished_at).where(R.id != skip)
        return list(s.execute(query).all())


def attempt_outcomes(skip: object) -> Counter[str]:
    from app.db.models import AttemptRow as A
    from app.db.session import session_scope

    with session_scope() as s:
        query = select(A.outcome, func.count()).where(A.request_id != skip).group_by(A.outcome)
        return Counter({outcome: count for outcome, count in s.execute(query).all()})


def per_model(rows: list[Any], b: Bed) -> list[str]:
    """Per model: jobs, succeeded, 429s, jobs/s (first created to last finished), latency."""
    lines = []
    for model in sorted({r.model for r in rows}):
        mine = [r for r in rows if r.model == model]
        ok = [r for r in mine if r.status == "succeeded"]
        lat = [(r.finished_at - r.created_at).total_seconds() for r in ok]
        span = (max(r.finished_at for r in ok) - min(r.created_at for r in mine)).total_seconds()
        lines.append(
            f"  {model:<14} jobs {len(mine):>5}  succeeded {len(ok):>5}  429s "
            f"{b.openai.random_rate_limited.get(model, 0):>5}  {len(ok) / span:7.1f} jobs/s "
            f"over {span:6.2f} s  latency p50 {percentile(lat, 0.5):6.2f} s, "
            f"p95 {percentile(lat, 0.95):6.2f} s"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("429", "bulkhead", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=2000, help="429: jobs per case")
    parser.add_argument("--concurrency", type=int, default=32, help="429: worker threads")
    parser.add_argument("--rate-429", type=float, default=0.2, help="429: share answered 429")
    parser.add_argument("--producers", type=int, default=8, help="429: threads submitting")
    parser.add_argument("--cases", default=",".join(CASES_429),
                        help=f"429: comma list of {','.join(CASES_429)}")
    parser.add_argument("--ai-jobs", type=int, default=300, help="bulkhead: jobs in all")
    parser.add_argument("--rate", type=float, default=10.0, help="bulkhead: jobs per second")
    parser.add_argument("--stall", type=float, default=30.0, help="bulkhead: receiver stall, s")
    parser.add_argument("--layouts", default="bulkheads,one-process",
                        help="bulkhead: comma list of bulkheads,one-process")
    args = parser.parse_args()
    print_load()
    if args.scenario in ("429", "all"):
        cases = [c for c in CASES_429 if c in args.cases.split(",")]
        scenario_429(args, cases)
    if args.scenario in ("bulkhead", "all"):
        run_bulkhead(args.ai_jobs, args.rate, args.stall, args.layouts.split(","))
    print_load()


def scenario_429(args: argparse.Namespace, cases: list[str]) -> None:
    n = args.jobs
    pool = ThreadPoolExecutor(args.producers)
    extra: dict[str, list[str]] = {}

    def timed(b: Bed, w: Workers, produce: Callable[[int], object],
              done: Callable[[], int], models: list[str] | None) -> float:
        b.openai.requests.clear()
        b.openai.rate_limit_randomly(args.rate_429, retry_after=1.0, models=models, seed=1)
        w.mark()
        t0 = time.perf_counter()
        list(pool.map(produce, range(n)))
        return settle(t0, n, done, lambda: len(b.openai.requests))

    def result(b: Bed, case: str, w: Workers, seconds: float, ok: int, once: int,
               attempts: float, note: str = "") -> CaseResult:
        cpu = w.cpu()
        limited = sum(b.openai.random_rate_limited.values())
        return CaseResult(
            case, n, seconds, ok / seconds, None, cpu, w.rss_mb(),
            note=f"429s {limited:>5}  attempts/job {attempts:5.2f}  exactly once "
                 f"{once}/{n}{note}",
            machine_cpu_s=w.machine_cpu(), others_cpu_s=w.others_cpu(),
        )

    def hand(b: Bed) -> CaseResult:
        app = handwritten.create_app(b.broker_url)
        db = create_engine(b.db_url, pool_size=2)
        b.env["HANDWRITTEN_SDK_RETRIES"] = "2"
        try:
            handwritten.create_table(db)
            with Workers(b, app="bench.handwritten", concurrency=args.concurrency,
                         name="handwritten", queues=handwritten.QUEUE) as w:
                app.send_task(handwritten.TASK, args=["warm up"])
                wait_until(lambda: handwritten.count_answers(db) >= 1, 60)
                seconds = timed(
                    b, w,
                    lambda i: app.send_task(handwritten.TASK, args=[f"bench {i}"]),
                    lambda: handwritten.count_answers(db) - 1, None,
                )
                with db.connect() as conn:
                    rows, distinct = conn.execute(select(
                        func.count(), func.count(func.distinct(handwritten.answers.c.content))
                    ).where(handwritten.answers.c.content != "echo: warm up")).one()
                once = distinct if rows == distinct == answered(b) else 0
                return result(b, "handwritten", w, seconds, rows, once,
                              len(b.openai.chat_requests()) / n, f"  lost {n - rows}")
        finally:
            app.close()
            db.dispose()

    def aiworker(b: Bed, models: list[str]) -> CaseResult:
        from app.jobs import submit
        from app.shell.topology import WORKER_KINDS

        case = "aiworker" if len(models) == 1 else "aiworker-2models"
        with Workers(b, concurrency=args.concurrency, name="aiworker",
                     queues=",".join(WORKER_KINDS["ai"])) as w:
            handle = submit("warm up", model=MODEL_B)
            if (status := handle.wait(timeout=60).status) != "succeeded":
                raise RuntimeError(f"warm-up job ended {status}")
            skip = handle.id

            def terminal() -> int:
                from app.db.models import AIRequestRow as R
                from app.db.session import session_scope

                with session_scope() as s:
                    return s.scalar(select(func.count()).where(
                        R.id != skip, R.status.in_(("succeeded", "failed", "cancelled")))) or 0

            seconds = timed(b, w, lambda i: submit(f"bench {i}", model=models[i % len(models)]),
                            terminal, [MODEL_A])
            rows = job_rows(skip)
            ok = sum(r.status == "succeeded" for r in rows)
            outcomes = attempt_outcomes(skip)
            once = ok if outcomes["succeeded"] == ok == answered(b) else 0
            calls = sum(v for k, v in outcomes.items() if k != "deferred")
            extra[case] = per_model(rows, b)
            return result(b, case, w, seconds, ok, once, (calls + outcomes["deferred"]) / n,
                          f"  (calls {calls / n:.2f} + deferred {outcomes['deferred'] / n:.2f})")

    fns: dict[str, Callable[[Bed], CaseResult]] = {
        "handwritten": hand,
        "aiworker": partial(aiworker, models=[MODEL_A]),
        "aiworker-2models": partial(aiworker, models=[MODEL_A, MODEL_B]),
    }
    results = []
    try:
        for c in cases:  # each case on a fresh bed: its own database, Redis db and fake
            with bed(OPENAI_TIMEOUT="30") as b:
                results.append(run_case(c, partial(fns[c], b)))
    finally:
        pool.shutdown()
    print()
    print(f"jobs {n}; {args.rate_429:.0%} random 429s (retry-after 1 s), otherwise instant; "
          f"each case: a fresh warmed worker, 1 process, threads pool, {args.concurrency} "
          f"threads; {args.producers} producer threads; jobs/s = jobs succeeded / seconds")
    print_table(results, note_header="")
    for case, lines in extra.items():
        print(f"{CASE_LABELS[case]}, per model:")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
