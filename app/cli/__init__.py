"""The ``aiw`` command line: the group ``main`` (console script ``aiw = app.cli:main``,
and ``python -m app.cli``) and the commands it registers, one module per group:

- ``jobs``: submit, watch, show, jobs, cancel, stats, providers;
- ``agents``: ``aiw agent ...`` (Codegen agent runs);
- ``webhooks``: ``aiw webhooks ...``;
- ``budgets``: ``aiw budgets ...``;
- ``ops``: migrate, check, up, worker, beat, flower, metrics;
- ``sandbox``: sandbox, demo (and the sandbox start-up of ``aiw up --sandbox``);
- ``aiw analyze``: ``app.integrations.analyze_cli``.

Every command prints one clear line and exits non-zero on a user error (bad id,
missing argument, bad URL, unreachable database or broker), never a traceback
(``aiw -v ...`` shows it); no secret in it, nor in a log line (``app.core.redact``: the
error lines and every log handler are redacted; what the database holds was redacted
before it was stored). The one error boundary and the exit statuses are in
``app.cli.boundary``: 0 done, 1 error, 2 usage error, 3 job accepted but the broker is
unreachable (``submit --wait`` only), 130 interrupted.

Commands that a script would read take ``--json``. Importing this package imports click
(and the error boundary) only: a command's module is imported when that command is looked
up (``AiwGroup.lazy``: ``aiw submit`` imports ``app.cli.jobs`` and not the other groups;
``aiw --help`` imports them all), and each command imports what it uses when it runs.
"""

from __future__ import annotations

import logging

import click

from app.cli.boundary import AiwGroup
from app.cli.sandbox import adopt_sandbox

__all__ = ["COMMAND_MODULES", "main"]

#: Where each command of ``aiw`` is: the module whose ``COMMANDS`` holds it (imported on
#: first look-up). ``tests/unit/test_cli_lazy.py`` checks that this is every command.
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(
        ("submit", "watch", "show", "jobs", "cancel", "stats", "providers"), "app.cli.jobs"
    ),
    "agent": "app.cli.agents",
    "webhooks": "app.cli.webhooks",
    "budgets": "app.cli.budgets",
    **dict.fromkeys(
        ("migrate", "check", "up", "worker", "beat", "flower", "metrics"), "app.cli.ops"
    ),
    **dict.fromkeys(("sandbox", "demo"), "app.cli.sandbox"),
    "analyze": "app.integrations.analyze_cli",  # `aiw analyze` (graph-sitter analysis)
}


@click.group(
    cls=AiwGroup,
    lazy=COMMAND_MODULES,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("-v", "--verbose", is_flag=True, help="Log more, and show tracebacks of errors.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """ai-worker: AI requests (OpenAI, Codegen agents) as background jobs.

    Start everything on this machine with `aiw up` (or `aiw up --sandbox` for fake
    providers and no keys), then `aiw submit "..." --wait 60`.
    """
    ctx.obj = {"verbose": verbose, "sandbox": adopt_sandbox(ctx.invoked_subcommand)}
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="aiw: %(levelname)s %(name)s: %(message)s",
    )
    from app.core.redact import install_log_redaction

    install_log_redaction()  # no secret in a log line (app.core.redact)

