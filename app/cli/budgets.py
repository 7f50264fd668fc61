"""``aiw budgets``: spend budgets from the command line (registered by ``app.cli``).

``aiw budgets`` lists each budget's spend, reservations and cap in its current UTC
window; ``aiw budgets set --tag team-a --usd 50 --per day`` (or ``--global``) sets one;
``aiw budgets delete --tag team-a --per day`` removes it. The work is in
``app.jobs.budget_admin``, imported when a command runs.
"""

from __future__ import annotations

import json

import click

from app.cli.boundary import friendly


def _scope(tag: str | None, everything: bool) -> str | None:
    if (tag is None) == (not everything):
        raise click.UsageError("name the budget: --tag TAG, or --global for every job")
    return tag


def _money(value: float) -> str:
    return f"{value:.4f}" if value < 100 else f"{value:,.2f}"


@click.group("budgets", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@friendly
def budgets_group(ctx: click.Context, as_json: bool) -> None:
    """Spend budgets (USD per UTC day or month, global or per tag): spend against each cap."""
    if ctx.invoked_subcommand is not None:
        return
    from app.jobs import budgets

    found = budgets()
    if as_json:
        click.echo(json.dumps([b.to_dict() for b in found], indent=2))
        return
    if not found:
        click.echo("no budgets (aiw budgets set --global --usd 50 --per day)")
        return
    click.echo(
        f"{'budget':<32} {'policy':<6} {'spent':>12} {'reserved':>12} {'cap':>12}  window (UTC)"
    )
    for b in found:
        share = f" ({b.spent_usd / b.cap_usd:.0%})"
        click.echo(
            f"{b.name:<32} {b.policy:<6} {_money(b.spent_usd):>12} {_money(b.reserved_usd):>12} "
            f"{_money(b.cap_usd):>12}  {b.window_start:%Y-%m-%d %H:%M} .. "
            f"{b.window_end:%Y-%m-%d %H:%M}{share}"
        )


@budgets_group.command("set")
@click.option("--tag", help="The jobs carrying this tag.")
@click.option("--global", "everything", is_flag=True, help="Every job.")
@click.option("--usd", type=float, required=True, help="The cap, USD per window.")
@click.option("--per", default="day", show_default=True, help="day or month (UTC).")
@click.option(
    "--policy",
    default="wait",
    show_default=True,
    help="A job that would exceed: wait (for the next window) or fail (BudgetExceededError).",
)
@click.option("--json", "as_json", is_flag=True)
@friendly
def budgets_set(
    tag: str | None, everything: bool, usd: float, per: str, policy: str, as_json: bool
) -> None:
    """Set (create or change) a budget; what its window spent is kept."""
    from app.jobs import set_budget

    budget = set_budget(usd, per=per, tag=_scope(tag, everything), policy=policy)
    if as_json:
        click.echo(json.dumps(budget.to_dict(), indent=2))
        return
    click.echo(
        f"budget {budget.name}: {_money(budget.cap_usd)} USD per {budget.period} (UTC), "
        f"policy {budget.policy}; spent {_money(budget.spent_usd)} this window"
    )
    if budget.note:
        click.echo(f"note: {budget.note}")


@budgets_group.command("delete")
@click.option("--tag", help="The budget of this tag.")
@click.option("--global", "everything", is_flag=True, help="The global budget.")
@click.option("--per", default="day", show_default=True, help="day or month.")
@friendly
def budgets_delete(tag: str | None, everything: bool, per: str) -> None:
    """Delete a budget (calls in flight are no longer held to it)."""
    from app.jobs import delete_budget
    from app.jobs.budget_admin import budget_name

    scope = _scope(tag, everything)
    if not delete_budget(per=per, tag=scope):
        raise click.ClickException(f"no budget {budget_name(scope, per)}")
    click.echo(f"deleted budget {budget_name(scope, per)}")


COMMANDS = (budgets_group,)
