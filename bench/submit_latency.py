"""Latency of submit(): validate, INSERT + COMMIT in PostgreSQL, publish to Redis.

No worker runs, so nothing else competes for the database.

    .venv/bin/python -m bench.submit_latency --n 2000
"""

from __future__ import annotations

import argparse
import time

from app.jobs import submit
from bench.harness import bed, summary_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    with bed():
        for i in range(50):
            submit(f"warm {i}")
        timings = []
        for i in range(args.n):
            t0 = time.perf_counter()
            submit(f"latency {i}", tags=["bench"])
            timings.append(time.perf_counter() - t0)
    print(f"submit() against PostgreSQL + Redis: {summary_ms(timings)} (goal p50 < 5 ms)")


if __name__ == "__main__":
    main()
