"""``aiw webhooks add|list|test|deliveries|redeliver|disable|enable``: signed webhooks
(Standard Webhooks), their endpoints and deliveries."""

from __future__ import annotations

import sys
from typing import Any

import click

from app.cli.boundary import EXIT_ERROR, friendly
from app.cli.common import console, print_json


@click.group()
def webhooks() -> None:
    """Signed webhooks (Standard Webhooks): endpoints and their deliveries."""


def _endpoint_dict(endpoint: Any) -> dict[str, Any]:
    return dict(endpoint.model_dump(mode="json"))


def _attempt_line(attempt: Any) -> str:
    if attempt.ok:
        return f"delivered: HTTP {attempt.status_code} in {attempt.latency_s:.3f}s"
    answer = f"HTTP {attempt.status_code}" if attempt.status_code is not None else "no answer"
    return f"not delivered: {answer}" + (f" ({attempt.error})" if attempt.error else "")


@webhooks.command("add")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    help="An event type or group.* (repeatable); default: every event.",
)
@click.option("--secret", help="Signing secret (whsec_...); default: a new one.")
@click.option("--description")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_add(
    url: str, events: tuple[str, ...], secret: str | None, description: str | None, as_json: bool
) -> None:
    """Register an endpoint; prints its signing secret this once (it is stored encrypted)."""
    from app.webhooks import register_endpoint

    endpoint, signing_secret = register_endpoint(
        url, list(events) or None, secret=secret, description=description
    )
    if as_json:
        print_json({**_endpoint_dict(endpoint), "secret": signing_secret})
        return
    click.echo(f"endpoint {endpoint.id} -> {endpoint.url}")
    click.echo(f"events: {', '.join(endpoint.event_types) or 'all'}")
    click.echo(f"signing secret (shown once, give it to the receiver): {signing_secret}")


@webhooks.command("list")
@click.option("--enabled/--disabled", "enabled", default=None, help="Filter.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_list(enabled: bool | None, as_json: bool) -> None:
    """List endpoints (never their secrets)."""
    from app.shell.tables import endpoints_table
    from app.webhooks import list_endpoints

    found = list_endpoints(enabled=enabled)
    if as_json:
        print_json([_endpoint_dict(e) for e in found])
        return
    console().print(endpoints_table(found))


def _report_attempt(attempt: Any, as_json: bool) -> None:
    """Print one manual delivery attempt; exit 1 unless the receiver answered 2xx."""
    if as_json:
        print_json(attempt.model_dump(mode="json"))
    else:
        click.echo(_attempt_line(attempt))
    if not attempt.ok:
        sys.exit(EXIT_ERROR)


@webhooks.command("test")
@click.argument("endpoint_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_test(endpoint_id: str, as_json: bool) -> None:
    """Send a signed webhook.test event now and show the answer (exit 1 if not 2xx)."""
    from app.webhooks import send_test_event

    _report_attempt(send_test_event(endpoint_id), as_json)


@webhooks.command("deliveries")
@click.option("--endpoint", "endpoint_id", help="Only this endpoint's.")
@click.option("--status", type=click.Choice(["pending", "succeeded", "failed", "abandoned"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_deliveries(
    endpoint_id: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List deliveries (one event to one endpoint), newest first."""
    from app.shell.tables import deliveries_table
    from app.webhooks import list_deliveries

    found = list_deliveries(endpoint_id, status, limit=limit)
    if as_json:
        print_json([d.model_dump(mode="json") for d in found])
        return
    console().print(deliveries_table(found))


@webhooks.command("redeliver")
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True)
@friendly
def webhooks_redeliver(delivery_id: str, as_json: bool) -> None:
    """Send a delivery again now, same webhook-id (exit 1 if not 2xx)."""
    from app.webhooks import redeliver

    _report_attempt(redeliver(delivery_id), as_json)


@webhooks.command("disable")
@click.argument("endpoint_id")
@click.option("--reason", default="by the operator", show_default=True)
@friendly
def webhooks_disable(endpoint_id: str, reason: str) -> None:
    """Stop sending to an endpoint (its pending deliveries are abandoned)."""
    from app.webhooks import disable_endpoint

    endpoint = disable_endpoint(endpoint_id, reason)
    click.echo(f"endpoint {endpoint.id} disabled ({endpoint.disabled_reason})")


@webhooks.command("enable")
@click.argument("endpoint_id")
@friendly
def webhooks_enable(endpoint_id: str) -> None:
    """Send to a disabled endpoint again (new events only)."""
    from app.webhooks import enable_endpoint

    endpoint = enable_endpoint(endpoint_id)
    click.echo(f"endpoint {endpoint.id} enabled")


COMMANDS = (webhooks,)
