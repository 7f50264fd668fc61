"""Driving the real ``aiw`` command line: one-shot commands and a running ``aiw up``.

Every command runs as a subprocess in the test's own directory with a clean
environment (none of the developer's provider keys or ai-worker settings), so
what is tested is what a user types.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.plugins.services import REPO_ROOT

# The installed console script, as a user runs it (``python -m app.cli`` if not installed).
_SCRIPT = Path(sys.executable).with_name("aiw")
AIW = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "app.cli"]
_OUR_VARS = {name.upper() for name in Settings.model_fields}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: object) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in _OUR_VARS and not k.startswith(("OPENAI_", "CODEGEN_", "FLOWER_"))
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in values.items()})
    return env


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_aiw(
    *args: str, env: dict[str, str], cwd: Path, stdin: str | None = None, timeout: float = 90
) -> Result:
    proc = subprocess.run(
        [*AIW, *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def http(
    url: str, *, auth: str | None = None, data: Any = None, timeout: float = 10
) -> tuple[int, bytes]:
    """(status, body) of a GET, or a POST of ``data`` as JSON; no exception on 4xx/5xx."""
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def process_groups_alive(pgids: set[int]) -> set[int]:
    """Processes (other than zombies) whose process group is one of ``pgids``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids and fields[0] != "Z":
            found.add(int(entry))
    return found


@dataclass
class Up:
    """A running ``aiw up``: its output (collected in a thread), URLs and login."""

    proc: subprocess.Popen[str]
    env: dict[str, str]
    cwd: Path
    flower_url: str
    metrics_url: str
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        def read() -> None:
            assert self.proc.stdout is not None
            with self.proc.stdout:
                for line in self.proc.stdout:
                    self.lines.append(line.rstrip("\n"))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen in aiw up's output:\n{self.output[-6000:]}")

    def aiw(self, *args: str, **kwargs: Any) -> Result:
        return run_aiw(*args, env=self.env, cwd=self.cwd, **kwargs)

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C (SIGINT to aiw up alone, as a terminal's foreground group would get it)."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code


class UpLauncher:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[Up] = []

    def start(self, env: dict[str, str], *args: str, ready_timeout: float = 90) -> Up:
        flower_port, metrics_port = free_port(), free_port()
        proc = subprocess.Popen(
            [
                *AIW,
                "up",
                "--flower-port",
                str(flower_port),
                "--metrics-port",
                str(metrics_port),
                *args,
            ],
            env=env,
            cwd=self.tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        up = Up(
            proc,
            env,
            self.tmp_path,
            f"http://127.0.0.1:{flower_port}",
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
        up.start_reading()
        self.running.append(up)
        up.wait_for("| ready;", timeout=ready_timeout)
        return up

    def stop_all(self) -> None:
        for up in self.running:
            if up.proc.poll() is None:
                pids = descendants(up.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    up.proc.send_signal(signal.SIGINT)
                try:
                    up.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    for pid in [up.proc.pid, *pids]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    up.proc.wait(timeout=10)


@pytest.fixture
def aiw_up(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[UpLauncher]:
    launcher = UpLauncher(tmp_path)
    yield launcher
    launcher.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for up in launcher.running:
            sys.stderr.write(f"\n----- aiw up output -----\n{up.output[-8000:]}\n")
