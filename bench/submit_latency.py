"""Latency of submit(): validate, INSERT + COMMIT in PostgreSQL, publish to Redis.

No worker runs, so nothing else competes for the database. Two figures:

- in-process: ``submit()`` called again and again in one warm process;
- new process: ``aiw submit "hello"`` started as a new process each time (what a shell
  or a script pays: interpreter start, imports, one INSERT, one publish), the wall
  clock from spawn to exit.

    .venv/bin/python -m bench.submit_latency --n 2000 --processes 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from app.jobs import submit
from bench.harness import bed, print_load, summary_ms


def aiw_command() -> list[str]:
    """The ``aiw`` console script next to this interpreter (what a user runs), else
    ``python -m app.cli``."""
    script = Path(sys.executable).with_name("aiw")
    if script.exists():
        return [str(script)]
    found = shutil.which("aiw")
    return [found] if found else [sys.executable, "-m", "app.cli"]


def new_process_timings(env: dict[str, str], runs: int) -> list[float]:
    """Wall clock of ``aiw submit "hello"`` as a new process, ``runs`` times (after two
    unmeasured runs that warm the OS page cache and write any missing .pyc)."""
    command = [*aiw_command(), "submit", "hello"]
    child_env = {**os.environ, **env}
    timings = []
    for i in range(runs + 2):
        t0 = time.perf_counter()
        done = subprocess.run(command, env=child_env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0 or not done.stdout.strip().endswith("queued"):
            raise SystemExit(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        if i >= 2:
            timings.append(elapsed)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="in-process submits (0: none)")
    parser.add_argument(
        "--processes", type=int, default=20, help="new-process `aiw submit` runs (0: none)"
    )
    args = parser.parse_args()
    print_load()
    with bed() as b:
        if args.n:
            for i in range(50):
                submit(f"warm {i}")
            timings = []
            for i in range(args.n):
                t0 = time.perf_counter()
                submit(f"latency {i}", tags=["bench"])
                timings.append(time.perf_counter() - t0)
            print(f"submit() against PostgreSQL + Redis: {summary_ms(timings)} (goal p50 < 5 ms)")
        if args.processes:
            runs = new_process_timings(b.env, args.processes)
            print(
                f"`aiw submit \"hello\"` as a new process: median "
                f"{statistics.median(runs) * 1000:.0f} ms, min {min(runs) * 1000:.0f} ms, "
                f"max {max(runs) * 1000:.0f} ms (n={len(runs)}; goal < 400 ms)"
            )


if __name__ == "__main__":
    main()
