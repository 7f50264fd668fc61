"""The one error boundary of the ``aiw`` command line.

Every command is wrapped in ``friendly``: an error a user can cause (bad id, bad
configuration, unreachable database or broker, a database without its schema) becomes
one redacted line on standard error and exit status 1, never a traceback (``aiw -v``
logs it too); any other exception is "unexpected error: ..." with the same exit status.
Errors are told apart by their types only (``describe_error``; SQLite, which has no
type for a missing table, is asked whether it is migrated: ``_schema_missing``).
``AiwGroup`` makes a usage error one line with exit status 2.

Exit status: 0 done, 1 error (``EXIT_ERROR``), 2 usage error (``EXIT_USAGE``), 3 job
accepted but the broker is unreachable (``EXIT_NOT_PUBLISHED``), 130 interrupted
(``EXIT_INTERRUPTED``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click

from app.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_PUBLISHED = 3
EXIT_INTERRUPTED = 130

log = logging.getLogger("aiw")


def _redact(message: str) -> str:
    from app.core.redact import redact

    return redact(message)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"aiw: {_redact(message)}", err=True)
    sys.exit(code)


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


def describe_error(exc: BaseException) -> str | None:
    """One line for an error a user can cause, or None for a bug."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from app.core.errors import AIProviderError, JobError
    from app.shell.runtime import RuntimeStartError

    if isinstance(exc, ConfigError | AIProviderError | JobError | RuntimeStartError):
        return str(exc)
    from app.webhooks.errors import WebhookError

    if isinstance(exc, WebhookError):
        return str(exc)
    if isinstance(exc, DBAPIError):
        from app.shell.topology import safe_url

        where = ""
        try:
            from app.db.session import database_url

            where = f" at {safe_url(database_url())}"
        except Exception:  # noqa: BLE001 - the message must not fail on a bad URL
            pass
        orig = exc.orig if exc.orig is not None else exc
        text = _first_line(orig)
        if _schema_missing(orig):
            return f"the database{where} has no schema yet: run `aiw migrate` ({text})"
        return f"database unreachable{where}: {type(orig).__name__}: {text}"
    if isinstance(exc, ArgumentError):
        return f"bad database URL (DATABASE_URL): {_first_line(exc)}"
    try:
        import redis

        if isinstance(exc, redis.RedisError):
            return f"Redis unreachable: {type(exc).__name__}: {_first_line(exc)}"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError):
        return f"{type(exc).__name__}: {exc}"
    return None


def _schema_missing(orig: BaseException) -> bool:
    """Whether a database error means the schema (or part of it) is not there yet.

    The one place that knows a dialect. PostgreSQL says so by type: psycopg's
    ``UndefinedTable`` (SQLSTATE 42P01). SQLite has no such type: a missing table is the
    same ``sqlite3.OperationalError`` (SQLITE_ERROR) as a locked or unreadable file, told
    apart only by its words. So on a SQLite error the database itself is asked, by
    Alembic: is it at the newest revision? (One more read of a local file, on the error
    path only; a database that cannot answer is not called unmigrated.)
    """
    import sqlite3

    from psycopg.errors import UndefinedTable

    if isinstance(orig, UndefinedTable):
        return True
    if not isinstance(orig, sqlite3.OperationalError):
        return False
    from app.db.migrate import current, head

    try:
        return current() != head()
    except Exception:  # noqa: BLE001 - cannot tell: the error is reported as it is
        return False


def friendly(fn: F) -> F:
    """Turn any error into one line and a non-zero exit status (``-v``: the traceback too)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:  # the command line is the outermost boundary
            if _verbose():
                log.exception("failed")
            message = describe_error(exc)
            if message is None:
                message = (
                    f"unexpected error: {type(exc).__name__}: {_first_line(exc)} "
                    "(run `aiw -v ...` for the traceback)"
                )
            fail(message)

    return wrapper  # type: ignore[return-value]


def _verbose() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("verbose"))


class AiwGroup(click.Group):
    """A click group whose usage errors are one line: ``aiw show: missing argument ...``.

    ``lazy`` maps command names to the module that defines them (in its ``COMMANDS``):
    a module is imported when one of its commands is looked up (click's "lazily loading
    subcommands"), so ``aiw submit`` does not import every command group.
    """

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            import importlib

            module = importlib.import_module(self.lazy[cmd_name])
            for command in getattr(module, "COMMANDS", ()):
                if command.name not in self.commands:
                    self.add_command(command)
        return self.commands.get(cmd_name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "aiw")  # also under `python -m app.cli`
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # `aiw` alone: the help text
            sys.exit(0)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "aiw"
            message = _redact(exc.format_message().rstrip("."))
            click.echo(f"{where}: {message} (see '{where} --help')", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"aiw: {_redact(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aiw: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(result if isinstance(result, int) else 0)
