"""What several ``aiw`` commands share: JSON and tables on standard output, a PROMPT
read from standard input, waiting for Ctrl-C."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click

from app.cli.boundary import EXIT_USAGE, fail


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def console() -> Any:
    from rich.console import Console

    return Console()


def read_prompt(prompt: str | None) -> str:
    if prompt in (None, "-"):
        if sys.stdin.isatty():
            fail("give a PROMPT argument or pipe one on standard input", EXIT_USAGE)
        return sys.stdin.read()
    return prompt


def block_until_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.is_set():
        stop.wait(0.5)
