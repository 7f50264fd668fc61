"""The sandbox: the fake OpenAI and Codegen servers (``app.sandbox``) for a machine
without keys. ``aiw sandbox`` runs them; ``aiw up --sandbox`` starts them
(``start_sandbox``) and writes their settings where every other ``aiw`` command of the
directory finds them (``adopt_sandbox``); ``aiw demo`` is the guided tour on them.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from app.cli.boundary import fail, friendly
from app.cli.common import block_until_signal


def adopt_sandbox(command: str | None) -> Any:
    """While ``aiw up --sandbox`` runs in this directory, every other command uses its
    settings (the fakes' URLs and keys): the second shell sees the first."""
    if command in ("up", "sandbox"):
        return None
    from app.config import ConfigError, get_settings
    from app.shell.topology import read_sandbox_env

    try:
        running = read_sandbox_env(get_settings())
    except (ConfigError, OSError):
        return None  # the command reports a bad configuration itself
    if running is not None:
        os.environ.update(running.values)
        get_settings.cache_clear()
    return running


def start_sandbox(openai_port: int, codegen_port: int) -> tuple[list[Any], dict[str, str]]:
    from app.sandbox.codegen_server import FakeCodegenServer
    from app.sandbox.openai_server import FakeOpenAIServer

    try:
        openai = FakeOpenAIServer(port=openai_port).start()
    except OSError as exc:
        fail(f"cannot start the fake OpenAI server on port {openai_port}: {exc.strerror}")
    try:
        codegen = FakeCodegenServer(port=codegen_port).start()
    except OSError as exc:
        openai.stop()
        fail(f"cannot start the fake Codegen server on port {codegen_port}: {exc.strerror}")
    env = {
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.url,
        "CODEGEN_TOKEN": codegen.token,
        "CODEGEN_ORG_ID": str(codegen.org_id),
        "CODEGEN_BASE_URL": codegen.url,
        "CODEGEN_POLL_INTERVAL": "1",
        # The fake's runs end in about a second: poll them often so the tour is quick
        # (rounds come only while runs are followed; beat's tick stays the minute).
        "AIW_AGENT_POLL_INTERVAL": "1",
        "PREFER_CODEGEN": "false",
        # A webhook receiver on this machine is what a sandbox tour has.
        "AIW_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    return [openai, codegen], env


@click.command()
@click.option("--openai-port", type=click.IntRange(0, 65535), default=8901, show_default=True)
@click.option("--codegen-port", type=click.IntRange(0, 65535), default=8902, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the environment as one JSON line.")
def sandbox(openai_port: int, codegen_port: int, as_json: bool) -> None:
    """Run the fake OpenAI and Codegen servers (the tests' fakes) on loopback until Ctrl-C,
    and print the environment that points ai-worker at them. No keys, no network."""
    servers, env = start_sandbox(openai_port, codegen_port)
    if as_json:
        click.echo(json.dumps(env))
    else:
        click.echo("# fake OpenAI and Codegen servers are running; in another shell:")
        for key, value in env.items():
            click.echo(f"export {key}={value}")
        click.echo("# then: aiw up   (or aiw worker), and aiw submit 'Hello' --wait 60")
        click.echo("# Ctrl-C stops the fakes.")
    sys.stdout.flush()
    try:
        block_until_signal()
    finally:
        for server in servers:
            server.stop()


@click.command()
@click.option("--jobs", "count", type=click.IntRange(1, 100), default=5, show_default=True)
@friendly
def demo(count: int) -> None:
    """A guided tour: fake providers, a worker, a few jobs (one meets a 429, one a 503),
    the usage table, and a fallback from a failing Codegen to OpenAI."""
    from app.shell.demo import run_demo

    run_demo(count)


COMMANDS = (sandbox, demo)
