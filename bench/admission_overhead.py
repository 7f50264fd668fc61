"""What admission costs a job: the reservation before the call and the settling after
(``app.jobs.admission.admit_job`` / ``settle_job``, exactly what the runner does), per
job, in wall time and CPU time, against a real Redis (and the in-process store).

The limits are set high enough that nothing ever waits: what is measured is the
overhead of asking, not the waiting the limits impose. Cases:

- ``off``: no ``AIW_RATE_LIMITS`` and ``AIW_RATE_LEARN=false`` (nothing is asked);
- ``learn``: no limits, learning on (the default): one script call before, one after;
- ``limits``: ``AIW_RATE_LIMITS`` set: the same two calls, with the bucket arithmetic;
- ``limits, memory``: no Redis (the embedded mode: per process).

Run (it uses Redis db ``AIW_BENCH_REDIS_DB``, flushed before and after)::

    AIW_BENCH_REDIS_DB=4 nice .venv/bin/python -m bench.admission_overhead --jobs 3000
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import timedelta

import redis

from app.ai.base import AIRequest, AIResponse, Usage
from app.config import Settings, load_settings
from app.core.admission import reset_admission
from app.jobs.admission import admit_job, settle_job
from app.jobs.records import Try
from bench.harness import BENCH_REDIS_DB, percentile

HEADERS = {
    "limit_requests": 10_000_000, "remaining_requests": 9_999_000,
    "limit_tokens": 10**12, "remaining_tokens": 10**12 - 10**6,
}  # fmt: skip


class _Provider:
    default_model = "gpt-4o-mini"


def _run(settings: Settings, jobs: int, threads: int) -> tuple[list[float], float]:
    request = AIRequest(prompt="word " * 150, max_tokens=160)
    response = AIResponse(
        content="x", provider_name="openai", model="gpt-4o-mini",
        usage=Usage(prompt_tokens=150, completion_tokens=151),
        response_time=timedelta(0), metadata={"rate_limit": HEADERS},
    )  # fmt: skip
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = jobs // threads

    def work() -> None:
        mine = []
        for _ in range(per_thread):
            jid = uuid.uuid4()
            tried = Try(jid, 1, "openai", ["openai"], 0, 0, None, None)
            t0 = time.perf_counter()
            ticket = admit_job(tried, request, "openai:bench:gpt-4o-mini", _Provider(), settings)  # type: ignore[arg-type]
            assert ticket.wait == 0, "the bench's limits are meant never to wait"
            settle_job(ticket, response, settings)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    cpu0 = time.process_time()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies, (time.process_time() - cpu0) / max(1, len(latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    url = f"redis://127.0.0.1:6379/{BENCH_REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    huge = "openai=100000000rpm,1000000000000tpm"
    cases = {
        "off": load_settings(redis_url=url, aiw_rate_learn=False),
        "learn": load_settings(redis_url=url),
        "limits": load_settings(redis_url=url, aiw_rate_limits=huge),
        "limits, memory": load_settings(aiw_rate_limits=huge),
    }
    print(f"admission overhead per job ({args.jobs} jobs, {args.threads} threads; "
          "admit + settle; noisy figures)")  # fmt: skip
    print(f"{'case':<16}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'CPU ms/job':>12}")
    try:
        for name, settings in cases.items():
            reset_admission()
            _run(settings, min(200, args.jobs), 1)  # warm up: connections, scripts
            latencies, cpu = _run(settings, args.jobs, args.threads)
            print(
                f"{name:<16}{percentile(latencies, 0.5) * 1e3:>9.3f}"
                f"{percentile(latencies, 0.95) * 1e3:>9.3f}"
                f"{statistics.fmean(latencies) * 1e3:>9.3f}{cpu * 1e3:>12.3f}"
            )
    finally:
        reset_admission()
        client.flushdb()


if __name__ == "__main__":
    main()
