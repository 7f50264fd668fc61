"""The pieces of ``aiw up`` that need no process: Flower's login rules, topology,
command lines, URLs without passwords, the supervisor on plain processes."""

from __future__ import annotations

import io
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings
from app.shell.runtime import (
    RuntimeStartError,
    Supervisor,
    beat_argv,
    check_port,
    flower_argv,
    flower_auth,
    worker_argv,
)
from app.shell.topology import QUEUES, is_loopback, safe_url, topology
from tests.plugins.cli import process_groups_alive


def test_queues_are_the_workers_queues() -> None:
    from workers.celery_app import ALL_QUEUES

    assert QUEUES == ALL_QUEUES


def test_flower_login_from_the_environment() -> None:
    auth = flower_auth(load_settings(flower_basic_auth="ops:pw"), "0.0.0.0")
    assert auth.user == "ops"
    assert auth.env() == {"FLOWER_BASIC_AUTH": "ops:pw"}
    assert "pw" not in auth.source


def test_flower_refuses_without_a_login() -> None:
    with pytest.raises(RuntimeStartError, match="Flower needs a login"):
        flower_auth(load_settings(), "127.0.0.1")


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.10", "example.invalid"])
def test_flower_never_unauthenticated_off_loopback(address: str) -> None:
    with pytest.raises(RuntimeStartError, match="not a loopback address"):
        flower_auth(load_settings(), address, unauthenticated=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
def test_flower_unauthenticated_on_loopback_on_purpose(address: str) -> None:
    auth = flower_auth(load_settings(), address, unauthenticated=True)
    assert auth.basic_auth is None
    assert auth.env() == {"FLOWER_UNAUTHENTICATED_API": "true"}


def test_aiw_up_makes_a_private_login_once(tmp_path: Path) -> None:
    first = flower_auth(load_settings(), "127.0.0.1", generate_in=tmp_path)
    again = flower_auth(load_settings(), "127.0.0.1", generate_in=tmp_path)
    assert first == again and first.user == "aiw"
    path = tmp_path / "flower-auth"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in first.source
    assert first.basic_auth is not None and first.basic_auth.split(":")[1] not in first.source


@pytest.mark.parametrize("value", ["nocolon", ":pw9", "alice:", "a:b,broken9"])
def test_flower_basic_auth_must_be_user_colon_password(value: str) -> None:
    with pytest.raises(ConfigError, match="FLOWER_BASIC_AUTH") as info:
        load_settings(flower_basic_auth=value)
    assert value not in str(info.value)


def test_safe_url_hides_passwords() -> None:
    assert safe_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert safe_url("postgresql+psycopg://u:p@db/x") == "postgresql+psycopg://u:***@db/x"
    assert safe_url("redis+socket:///tmp/d/valkey.sock") == "redis+socket:///tmp/d/valkey.sock"


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_topology_shapes(tmp_path: Path) -> None:
    embedded = topology(load_settings(aiw_data_dir=tmp_path))
    assert embedded.shape == "embedded"
    assert embedded.broker_url == f"redis+socket://{tmp_path / 'broker' / 'valkey.sock'}"
    assert embedded.shared_redis  # the embedded broker's server, while aiw up runs it
    limits = embedded.limits()
    assert any("listens on a unix socket" in limit for limit in limits)
    assert not any("Flower" in limit or "per worker process" in limit for limit in limits)
    production = topology(
        load_settings(
            aiw_data_dir=tmp_path,
            database_url="postgresql+psycopg://u@db/x",
            celery_broker_url="redis://r:6379/0",
        )
    )
    assert production.shape == "production" and production.limits() == []
    mixed = topology(load_settings(aiw_data_dir=tmp_path, celery_broker_url="redis://r/0"))
    assert mixed.shape == "mixed"


def test_command_lines(tmp_path: Path) -> None:
    settings = load_settings(aiw_data_dir=tmp_path)
    worker = worker_argv(settings, name="n@%h")
    assert worker[:5] == [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    assert "ai_requests,agent_runs,webhooks,maintenance" in worker
    assert "--without-gossip" not in worker  # the embedded broker carries broadcast too
    assert str(tmp_path / "celerybeat-schedule") in beat_argv(settings, tmp_path)
    flower = flower_argv("127.0.0.1", 5555)
    assert "--address=127.0.0.1" in flower and not any("auth" in a for a in flower)


def _sleeper(tag: str, *, trap_term: bool = False, child: bool = False) -> list[str]:
    code = [
        "import signal, subprocess, sys, time",
        f"print('{tag} up', flush=True)",
    ]
    if child:  # a grandchild in the same process group, like a prefork pool process
        code.append("subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])")
    if trap_term:  # ignores SIGTERM: only SIGKILL ends it
        code.append("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    code.append("time.sleep(60)")
    return [sys.executable, "-c", "; ".join(code)]


def test_supervisor_streams_output_and_stops_every_group() -> None:
    out = io.StringIO()
    sup = Supervisor(out, grace=0.5, color=False)
    sup.add("worker", _sleeper("w", trap_term=True), os.environ, ready_marker="w up")
    sup.add("beat", _sleeper("b", child=True), os.environ)
    sup.start()
    deadline = time.monotonic() + 20
    while "w up" not in out.getvalue() or "b up" not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.05)
    groups = {c.proc.pid for c in sup.children if c.proc}
    threading.Timer(0.2, sup.request_stop).start()
    assert sup.wait() == 0
    text = out.getvalue()
    assert "worker | w up" in text and "beat   | b up" in text
    assert process_groups_alive(groups) == set()  # grandchildren too (zombies aside)


def test_supervisor_stops_all_when_one_child_dies() -> None:
    out = io.StringIO()
    sup = Supervisor(out, grace=1, color=False)
    sup.add("worker", _sleeper("w"), os.environ)
    sup.add("flower", [sys.executable, "-c", "raise SystemExit(3)"], os.environ)
    sup.start()
    assert sup.wait() == 1
    assert "flower exited on its own (status 3)" in out.getvalue()
    assert not any(c.running for c in sup.children)


def test_signal_handlers_only_set_a_flag() -> None:
    sup = Supervisor(io.StringIO(), color=False)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        sup.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert sup._stop.is_set()
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _recorder(tag: str, record: Path, ready: Path, *, first: bool = False) -> list[str]:
    """A child that prints '<tag> up' and writes its tag to ``record`` on SIGTERM. The
    ``first`` one takes half a second to get ready and then creates ``ready``; the others
    say 'too early' if they start before it exists."""
    if first:
        start = f"time.sleep(0.5); open({str(ready)!r}, 'w').close(); early = ''"
    else:
        start = f"early = '' if os.path.exists({str(ready)!r}) else ' too early'"
    code = [
        "import os, signal, sys, time",
        start,
        f"print('{tag} up' + early, flush=True)",
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(record)!r}, 'a')"
        f".write('{tag} '), sys.exit(0)))",
        "time.sleep(60)",
    ]
    return [sys.executable, "-c", "; ".join(code)]


def test_a_first_child_is_ready_before_the_others_start_and_stops_after_them(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    record, ready = tmp_path / "stopped", tmp_path / "broker-ready"
    sup = Supervisor(out, grace=5, color=False)
    sup.add("broker", _recorder("broker", record, ready, first=True), os.environ,
            ready_marker="broker up", first=True)  # fmt: skip
    sup.add("worker", _recorder("worker", record, ready), os.environ, ready_marker="worker up")
    sup.add("beat", _recorder("beat", record, ready), os.environ)
    sup.start()
    deadline = time.monotonic() + 20
    while out.getvalue().count(" up") < 3:
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.05)
    threading.Timer(0.2, sup.request_stop).start()
    assert sup.wait() == 0
    assert "too early" not in out.getvalue()
    assert record.read_text().split() == ["beat", "worker", "broker"]


def test_a_first_child_that_dies_at_start_is_one_error() -> None:
    sup = Supervisor(io.StringIO(), color=False)
    sup.add("broker", [sys.executable, "-c", "raise SystemExit(1)"], os.environ,
            ready_marker="never", first=True)
    sup.add("worker", _sleeper("w"), os.environ)
    with pytest.raises(RuntimeStartError, match="broker did not start"):
        sup.start()
    assert all(c.proc is None for c in sup.children if c.name == "worker")


def _time_wait_port() -> int:
    """A port whose only socket is in TIME-WAIT: a server that closed its side first."""
    import socket

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end goes to TIME-WAIT
        client.recv(1)
        client.close()
    return port


def test_check_port_accepts_a_port_left_in_time_wait() -> None:
    import socket

    port = _time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what check_port did before: refused
    check_port("127.0.0.1", port, "Flower", "--flower-port")


def test_check_port_refuses_a_listening_port() -> None:
    import socket

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        with pytest.raises(RuntimeStartError, match=f"port {port} on 127.0.0.1 is in use"):
            check_port("127.0.0.1", port, "Flower", "--flower-port")
