"""A client-side deadline on every wait for PostgreSQL's answer.

libpq bounds the connection (``connect_timeout``) and the kernel a peer that stops
acknowledging packets (``tcp_user_timeout``), and the server its own statements
(``statement_timeout``). None of them ends a wait on a server, or a middlebox, that
keeps the connection open and acknowledges every packet but never answers: psycopg
would wait forever. ``DeadlineConnection`` gives each wait for an answer a deadline
(the statement timeout plus ``AIW_READ_TIMEOUT``, so a statement the server may still
legitimately be running is never cut short); past it the connection is closed, which
SQLAlchemy sees as a disconnect (the pool drops it) and the caller as
``OperationalError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors


class DeadlineConnection(psycopg.Connection[Any]):
    """``psycopg.Connection`` whose waits end after ``aiw_deadline`` seconds."""

    aiw_deadline: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        deadline = timeout if timeout is not None else self.aiw_deadline
        try:
            return super().wait(gen, interval=interval, timeout=deadline)
        except errors._WaitTimeout as exc:
            self.close()  # mid-protocol: unusable; closed is what the pool looks for
            raise psycopg.OperationalError(
                f"no answer from PostgreSQL within {deadline:g} s (connection closed)"
            ) from exc


def connector(deadline: float | None) -> Callable[..., DeadlineConnection]:
    """What SQLAlchemy's ``do_connect`` event returns a connection from."""

    def connect(*cargs: Any, **cparams: Any) -> DeadlineConnection:
        conn = DeadlineConnection.connect(*cargs, **cparams)
        conn.aiw_deadline = deadline
        return conn

    return connect
