"""The ``aiw`` command line run as a user runs it (subprocess): help everywhere, one
clear line and a non-zero status for every mistake, the broker-down submit, the
webhook commands against a real receiver, Flower's login rules.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import pytest

from app.cli import main
from tests.plugins.cli import Result, clean_env, run_aiw

pytestmark = pytest.mark.integration

UNREACHABLE_PG = "postgresql+psycopg://nobody@127.0.0.1:1/none"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a migrated embedded database."""
    path = tmp_path_factory.mktemp("aiw-home")
    r = run_aiw("migrate", env=clean_env(AIW_DATA_DIR=path / "data"), cwd=path)
    assert r.code == 0, r.err
    return path


def aiw(home: Path, *args: str, **env: object) -> Result:
    return run_aiw(*args, env=clean_env(AIW_DATA_DIR=home / "data", **env), cwd=home)


def one_line_error(r: Result, code: int | None = None) -> str:
    assert r.code != 0, (r.out, r.err)
    if code is not None:
        assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.out + r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    return lines[0]


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command under ``group``, asked as click asks (``aiw`` loads its command
    modules on first look-up: ``group.commands`` alone may still be empty)."""
    paths = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def test_help_on_every_command(home: Path) -> None:
    paths = [(), *command_paths(main)]
    assert ("webhooks", "redeliver") in paths and ("up",) in paths and ("sandbox",) in paths
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda p: aiw(home, *p, "--help"), paths))
    for path, r in zip(paths, results, strict=True):
        assert r.code == 0, (path, r.err)
        assert r.out.startswith("Usage: "), path


NO_SUCH = str(uuid.UUID(int=1))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["show"], "aiw show: Missing argument 'JOB_ID' (see 'aiw show --help')"),
        (["show", "not-an-id"], "aiw: no job 'not-an-id': not an id (a UUID or its first 4+"),
        (["show", NO_SUCH], f"aiw: no job {NO_SUCH}"),
        (["watch", NO_SUCH], f"aiw: no job {NO_SUCH}"),
        (["cancel", NO_SUCH], f"aiw: no job {NO_SUCH}"),
        (["nosuchcommand"], "aiw: No such command 'nosuchcommand' (see 'aiw --help')"),
        (["submit", "--provider", "nope", "hi"], "aiw: unknown provider 'nope'"),
        (["submit", "--max-tokens", "x", "hi"], "aiw submit: Invalid value for '--max-tokens'"),
        (["jobs", "--status", "lost"], "aiw: unknown status 'lost'"),
        (["stats", "--group-by", "colour"], "aiw: cannot group by 'colour'"),
        (["webhooks", "add", "not a url"], "aiw: "),
        (["webhooks", "add", "http://127.0.0.1:9/hook"], "aiw: "),  # loopback refused
        (
            ["webhooks", "test", "nope"],
            "aiw: no webhook endpoint 'nope': not an id (a UUID or its first 4+ digits)",
        ),
        (["webhooks", "redeliver", NO_SUCH], f"aiw: no webhook delivery {NO_SUCH}"),
        (["webhooks", "disable"], "aiw webhooks disable: Missing argument 'ENDPOINT_ID'"),
        (["flower"], "aiw: Flower needs a login: set FLOWER_BASIC_AUTH=user:password"),
        (
            ["flower", "--unauthenticated", "--address", "0.0.0.0"],
            "aiw: refusing to serve Flower without a login on 0.0.0.0",
        ),
    ],
)
def test_mistakes_are_one_line_and_non_zero(home: Path, args: list[str], expected: str) -> None:
    line = one_line_error(aiw(home, *args))
    assert line.startswith(expected), line


@pytest.mark.parametrize("args", [["jobs"], ["stats"], ["show", NO_SUCH], ["submit", "hi"]])
def test_unreachable_database_is_one_line(home: Path, args: list[str]) -> None:
    line = one_line_error(aiw(home, *args, DATABASE_URL=UNREACHABLE_PG))
    assert line.startswith(
        "aiw: database unreachable at postgresql+psycopg://nobody@127.0.0.1:1/none: "
        "OperationalError: connection"
    ), line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "not a url"}, "aiw: bad database URL (DATABASE_URL)"),
        ({"OPENAI_TIMEOUT": "soon"}, "aiw: invalid configuration: OPENAI_TIMEOUT"),
        ({"FLOWER_BASIC_AUTH": "no-colon"}, "aiw: invalid configuration: FLOWER_BASIC_AUTH"),
    ],
)
def test_bad_configuration_is_one_line(home: Path, env: dict[str, str], expected: str) -> None:
    line = one_line_error(aiw(home, "jobs", **env))
    assert line.startswith(expected), line
    assert "no-colon" not in line  # a secret is never echoed


def test_submit_with_the_broker_down_accepts_the_job_and_says_so(home: Path) -> None:
    broker = {"CELERY_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"}
    r = aiw(home, "submit", "kept for later", "--json", **broker)
    assert r.code == 3, r.err  # accepted, not queued
    job = r.json()
    assert job["status"] == "queued"
    (warning,) = r.err.strip().splitlines()
    assert warning.startswith("aiw: warning: broker unreachable at redis://:***@127.0.0.1:1/0")
    assert f"job {job['id']} is accepted" in warning
    assert "hunter2" not in r.out + r.err
    # The job is in the database: the sweep will publish it.
    assert aiw(home, "show", job["id"], "--json").json()["status"] == "queued"

    r = aiw(home, "submit", "do not wait for nothing", "--wait", "30", **broker)
    assert r.code == 3
    assert len(r.err.strip().splitlines()) == 1
    uuid.UUID(r.out.strip())  # the id, for a script to follow


def test_submit_reads_standard_input_and_cancel(home: Path) -> None:
    # No broker configured and no `aiw up` running: the job is accepted all the same.
    r = run_aiw(
        "submit", "--json", "--tag", "stdin",
        env=clean_env(AIW_DATA_DIR=home / "data"), cwd=home, stdin="a prompt from a pipe\n",
    )
    assert r.code == 3, r.err  # accepted, not queued
    socket = (home / "data" / "broker" / "valkey.sock").resolve()
    assert r.err.startswith(f"aiw: warning: broker unreachable at redis+socket://{socket}")
    job = r.json()
    assert job["prompt"].strip() == "a prompt from a pipe"
    r = aiw(home, "cancel", job["id"], "--json")
    assert r.json() == {"id": job["id"], "cancelled": True, "status": "cancelled"}
    r = aiw(home, "cancel", job["id"])
    assert r.code == 0 and "already cancelled" in r.out
    r = aiw(home, "watch", job["id"])
    assert r.code == 1  # ended, but not with an answer
    assert "cancelled" in r.out


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append({"headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.received
    server.shutdown()
    server.server_close()


def test_webhook_commands(home: Path, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = receiver
    allow = {"AIW_WEBHOOK_ALLOW_PRIVATE": "true"}
    r = aiw(home, "webhooks", "add", url, "--event", "ai_request.*", "--json", **allow)
    assert r.code == 0, r.err
    endpoint = r.json()
    assert endpoint["secret"].startswith("whsec_")

    listed = aiw(home, "webhooks", "list", "--json", **allow).json()
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert "secret" not in listed[0] and endpoint["secret"] not in json.dumps(listed)

    r = aiw(home, "webhooks", "test", endpoint["id"], **allow)
    assert r.code == 0, r.err
    assert r.out.startswith("delivered: HTTP 204")
    assert received[-1]["body"]["type"] == "webhook.test"
    assert {"webhook-id", "webhook-signature", "webhook-timestamp"} <= {
        k.lower() for k in received[-1]["headers"]
    }

    deliveries = aiw(home, "webhooks", "deliveries", "--json", **allow).json()
    test_delivery = next(d for d in deliveries if d["event_type"] == "webhook.test")
    r = aiw(home, "webhooks", "redeliver", test_delivery["id"], **allow)
    assert r.code == 0, r.err
    assert received[-1]["headers"]["webhook-id"] == received[-2]["headers"]["webhook-id"]
    assert aiw(home, "webhooks", "deliveries", **allow).code == 0

    r = aiw(home, "webhooks", "disable", endpoint["id"], **allow)
    assert r.code == 0 and "disabled" in r.out
    disabled = aiw(home, "webhooks", "list", "--disabled", "--json", **allow).json()
    assert disabled[0]["enabled"] is False
    assert aiw(home, "webhooks", "list", **allow).code == 0


def test_check_and_migrate_check(home: Path) -> None:
    # Embedded, with no `aiw up` running: the database is fine, the broker is not there.
    r = aiw(home, "check", "--json")
    assert r.code == 1
    assert r.json()["shape"] == "embedded" and r.json()["database"]["ok"] is True
    assert r.json()["broker"]["ok"] is False
    assert "the embedded broker runs while `aiw up` runs" in r.err
    assert aiw(home, "migrate", "--check").code == 0
    r = aiw(home, "check", CELERY_BROKER_URL="redis://127.0.0.1:1/0")
    assert r.code == 1 and "broker unreachable" in r.err


@pytest.mark.parametrize("command", [["worker"], ["worker", "--kind", "ai"], ["beat"]])
def test_embedded_processes_on_their_own_need_the_broker_of_aiw_up(
    home: Path, command: list[str]
) -> None:
    line = one_line_error(aiw(home, *command), code=1)
    assert line.startswith("aiw: broker unreachable: redis+socket://"), line
    assert line.endswith("the embedded broker runs while `aiw up` runs: start it, or set "
                         "CELERY_BROKER_URL")  # fmt: skip
