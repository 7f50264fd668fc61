"""The supervisor behind ``aiw up`` and ``aiw worker``: start children, stream their
output, stop them in order.

It starts each child in a process group of its own (so a Ctrl-C in the terminal
reaches ``aiw up`` alone, and stopping a child takes its pool processes with it),
prefixes and streams their output, and on SIGINT/SIGTERM stops them in order:

1. beat first (no new sweeps), Flower and the exporter with SIGTERM;
2. the worker with SIGTERM: Celery's warm shutdown takes no new message, lets
   the running tasks finish for up to ``grace`` seconds, and gives every message
   it holds but has not started (prefetched, countdowns) back to the broker;
3. past ``grace``, SIGQUIT: the cold shutdown gives running tasks
   ``worker_soft_shutdown_timeout`` (10 s) more, then stops them; their messages
   are not acknowledged (``task_acks_late``) and go back to the broker, and the
   job rows (the source of truth) are picked up again by the sweep in any case;
4. the children started ``first`` (the embedded broker) with SIGTERM, once every
   other child is gone, so the messages handed back above reach it;
5. last, SIGKILL to whatever is left in each child's process group.

A second Ctrl-C skips to step 3, a third to step 5. On Linux each child also
gets SIGTERM if ``aiw up`` itself dies (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the supervisor leaves no orphan for long. A child that exits on its
own is not restarted: the supervisor stops the others and exits 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO


class RuntimeStartError(RuntimeError):
    """A process cannot be started as asked (missing auth, unreachable broker, port...)."""


_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


COLORS = ("cyan", "magenta", "yellow", "green", "blue")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_marker: str | None = None  # a line fragment that says the process is ready
    first: bool = False  # started (and ready) before the others, stopped after them
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)


class Supervisor:
    """Start children, stream their output with a prefix, stop them all on a signal."""

    def __init__(
        self,
        out: IO[str] | None = None,
        *,
        grace: float = 30.0,
        color: bool | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.grace = grace
        self.children: list[Child] = []
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._signals = 0
        self._color = self.out.isatty() if color is None else color
        self._on_ready = on_ready
        self._width = 7

    # output ------------------------------------------------------------------------
    def _prefix(self, name: str, index: int) -> str:
        label = f"{name:<{self._width}}|"
        if not self._color:
            return label
        import click

        return click.style(label, fg=COLORS[index % len(COLORS)])

    def say(self, message: str) -> None:
        """A line of the supervisor's own, prefixed ``aiw``."""
        label = f"{'aiw':<{self._width}}|"
        if self._color:
            import click

            label = click.style(label, bold=True)
        with self._write_lock:
            for line in message.splitlines() or [""]:
                self.out.write(f"{label} {line}\n")
            self.out.flush()

    def _stream(self, child: Child, index: int) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        prefix = self._prefix(child.name, index)
        for raw in iter(child.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if child.ready_marker and not child.ready.is_set() and child.ready_marker in line:
                child.ready.set()
            with self._write_lock:
                self.out.write(f"{prefix} {line}\n")
                self.out.flush()
        child.proc.stdout.close()

    # lifecycle ---------------------------------------------------------------------
    def add(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        *,
        ready_marker: str | None = None,
        first: bool = False,
    ) -> Child:
        """A child to start; ``first`` ones start, and must be ready, before the others
        (within ``first_timeout`` seconds) and stop after them (the embedded broker)."""
        child = Child(name, argv, {**env, "PYTHONUNBUFFERED": "1"}, ready_marker, first)
        if ready_marker is None:
            child.ready.set()
        self.children.append(child)
        self._width = max(self._width, len(name) + 1)
        return child

    def start(self, first_timeout: float = 30.0) -> None:
        """Start the ``first`` children and wait until they are ready, then the others
        (all their forks first, then the reader threads)."""
        first = [c for c in self.children if c.first]
        self._spawn(first)
        deadline = time.monotonic() + first_timeout
        for child in first:
            while not child.ready.wait(0.1):
                if self._stop.is_set():
                    return  # a Ctrl-C meanwhile: wait() stops what started
                if not child.running or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeStartError(
                        f"{child.name} did not start (see its lines above)"
                    )
        self._spawn([c for c in self.children if not c.first])

    def _spawn(self, children: list[Child]) -> None:
        for child in children:
            try:
                child.proc = subprocess.Popen(
                    child.argv,
                    env=child.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    process_group=0,
                    preexec_fn=_die_with_parent if _libc is not None else None,
                )
            except OSError as exc:
                self.stop()
                raise RuntimeStartError(f"cannot start {child.name}: {exc}") from exc
        for child in children:
            index = self.children.index(child)
            child.reader = threading.Thread(
                target=self._stream, args=(child, index), name=f"log-{child.name}", daemon=True
            )
            child.reader.start()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: object) -> None:
            self._signals += 1
            self._stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def request_stop(self) -> None:
        self._signals += 1
        self._stop.set()

    def wait(self) -> int:
        """Block until a signal (0) or until a child exits on its own (1)."""
        announced = False
        while not self._stop.is_set():
            for child in self.children:
                if not child.running:
                    code = child.proc.returncode if child.proc else None
                    self.say(f"{child.name} exited on its own (status {code}); stopping the rest")
                    self.stop()
                    return 1
            if not announced and all(c.ready.is_set() for c in self.children):
                announced = True
                if self._on_ready is not None:
                    self._on_ready()
            self._stop.wait(0.2)
        self.stop()
        return 0

    def _wait_for(self, children: list[Child], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not any(c.running for c in children):
                return True
            time.sleep(0.1)
        return not any(c.running for c in children)

    def _escalations(self) -> int:
        """How many extra stop requests came after the first."""
        return max(0, self._signals - 1)

    def stop(self) -> None:
        """Stop every child in order (see the module docstring); leaves nothing running."""
        self._stop.set()
        worker = [c for c in self.children if c.name.startswith("worker") and c.running]
        first = [c for c in self.children if c.first and c.running]
        others = [
            c
            for c in self.children
            if not c.name.startswith("worker") and not c.first and c.running
        ]
        beat = [c for c in others if c.name == "beat"]
        for child in beat:
            child.signal_group(child.stop_signal)
        self._wait_for(beat, 5)
        for child in [*others, *worker]:
            child.signal_group(child.stop_signal)
        if worker:
            self.say(
                f"stopping: the worker finishes its running tasks (up to {self.grace:g}s) and "
                "hands every other message back to the broker; Ctrl-C again to hurry it"
            )
            if not self._wait_until(worker, self.grace, escalate_after=1):
                self.say("worker still busy: cold shutdown, running tasks go back to the broker")
                for child in worker:
                    child.signal_group(signal.SIGQUIT)
                self._wait_until(worker, 20, escalate_after=2)
        self._wait_for(others, 10)
        for child in first:  # the broker last: the messages handed back are in it
            child.signal_group(child.stop_signal)
        self._wait_for(first, 10)
        for child in self.children:
            if child.running:
                self.say(f"{child.name} did not stop: killing its process group")
            child.signal_group(signal.SIGKILL)  # stragglers of the group, if any
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=10)
        for child in self.children:
            if child.reader is not None:
                child.reader.join(timeout=5)

    def _wait_until(self, children: list[Child], seconds: float, *, escalate_after: int) -> bool:
        """Wait for ``children`` to exit; returns early (False) on an extra Ctrl-C."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not any(c.running for c in children):
                return True
            if self._escalations() >= escalate_after:
                return False
            time.sleep(0.1)
        return not any(c.running for c in children)
