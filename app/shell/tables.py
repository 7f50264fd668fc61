"""The job and usage tables of ``aiw``, and the small formats they share with ``aiw show``.

At a narrow terminal (80 columns) a table prints the 8-character short id (it works
as an id: ``app.db.ids``) instead of folding a whole UUID over several lines, and
no figure is cut with an ellipsis: the text columns give way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from app.jobs import Job

STATUS_STYLE = {
    "queued": "yellow",
    "waiting": "yellow",
    "running": "cyan",
    "awaiting_run": "cyan",
    "started": "cyan",
    "lost": "red",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}
FULL_IDS_FROM = 120  # columns: below, tables print short ids
SHORT_ID = 8


def status_text(status: str) -> Text:
    return Text(status, style=f"bold {STATUS_STYLE.get(status, 'white')}")


def money(usd: float) -> str:
    """Dollars with three significant digits, never rounded to nothing: 0.000123, 0.0421, 1.50."""
    if usd == 0:
        return "0"
    if abs(usd) >= 1:
        return f"{usd:.2f}"
    decimals = min(10, max(2, 2 - math.floor(math.log10(abs(usd)))))
    text = f"{usd:.{decimals}f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.split(".")[1]))


def total_tokens(usage: dict[str, Any]) -> str:
    """A stored usage's total: its own, else prompt + completion (what providers send)."""
    if usage.get("total_tokens") is not None:
        return str(usage["total_tokens"])
    if usage.get("prompt_tokens") is None and usage.get("completion_tokens") is None:
        return "?"
    return str(int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0))


class ByWidth:
    """A table built when it is printed, for the width it is printed in."""

    def __init__(self, build: Callable[[int], Table]) -> None:
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.max_width)


def _table(title: str, width: int, **kwargs: Any) -> Table:
    if width >= FULL_IDS_FROM:
        return Table(title=title, title_justify="left", **kwargs)
    # Narrow: no vertical rules, one space between columns (a ruled box costs 3 a column).
    return Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
        collapse_padding=True, show_edge=False, **kwargs,
    )  # fmt: skip


def ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{moment:%Y-%m-%d %H:%M}"


def jobs_table(jobs: Sequence[Job]) -> ByWidth:
    def build(width: int) -> Table:
        full = width >= FULL_IDS_FROM
        table = _table(f"{len(jobs)} job(s), newest first", width)
        rows = [
            [
                str(j.id) if full else str(j.id)[:SHORT_ID],
                j.status,
                j.provider_used or "-",
                j.model or "-",
                str(j.attempt_count),
                f"{j.created_at:%Y-%m-%d %H:%M:%S}" if full else f"{j.created_at:%m-%d %H:%M}",
            ]
            for j in jobs
        ]
        headers = ("id", "status", "provider", "model", "tries", "created")
        widths = [max([len(h), *(len(r[n]) for r in rows)]) for n, h in enumerate(headers)]
        for header, w in zip(headers, widths, strict=True):
            table.add_column(header, no_wrap=True, min_width=w, justify="left")
        gaps = 3 * len(headers) + 4 if full else 2 * len(headers)
        table.add_column("prompt", no_wrap=True, max_width=max(8, width - sum(widths) - gaps))
        for j, r in zip(jobs, rows, strict=True):
            table.add_row(*r[:1], status_text(j.status), *r[2:], j.prompt[:40].replace("\n", " "))
        return table

    return ByWidth(build)


def _figures(table: Table, header: str, cells: Iterator[str], footer: str = "") -> None:
    """A right-aligned column as wide as its longest figure: never cut."""
    width = max([len(header), len(footer), *(len(c) for c in cells)])
    table.add_column(header, justify="right", no_wrap=True, min_width=width, footer=footer)


def stats_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> ByWidth:
    return ByWidth(lambda width: _stats_table(rows, keys, width))


def _stats_table(rows: Sequence[dict[str, Any]], keys: Sequence[str], width: int) -> Table:
    table = _table("usage (provider calls)", width, show_footer=len(rows) > 1)
    totals = {
        "requests": sum(r["requests"] for r in rows),
        "successes": sum(r["successes"] for r in rows),
        "lost": sum(r.get("lost", 0) for r in rows),
        "tokens": sum(r["total_tokens"] for r in rows),
        "cost": sum(r["cost_usd"] for r in rows),
    }
    for i, k in enumerate(keys):
        table.add_column(k, footer="total" if i == 0 else "", overflow="fold")
    rate = f"{100 * totals['successes'] / totals['requests']:.1f}" if totals["requests"] else "-"
    cells = [
        [
            str(r["requests"]),
            "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}",
            str(r.get("lost", 0)),
            str(r["total_tokens"]),
            money(r["cost_usd"])
            + (f" (+{r['cost_unknown']} unpriced)" if r.get("cost_unknown") else ""),
            "-" if r["p50_latency_s"] is None else f"{r['p50_latency_s']:.3f}",
            "-" if r["p95_latency_s"] is None else f"{r['p95_latency_s']:.3f}",
        ]
        for r in rows
    ]
    footers = [
        str(totals["requests"]),
        rate,
        str(totals["lost"]),
        str(totals["tokens"]),
        money(totals["cost"]),
        "",
        "",
    ]
    headers = ("calls", "ok %", "lost", "tokens", "cost $", "p50 s", "p95 s")
    for n, (header, footer) in enumerate(zip(headers, footers, strict=True)):
        _figures(table, header, (c[n] for c in cells), footer)
    for r, figures in zip(rows, cells, strict=True):
        table.add_row(*[str(r[k]) for k in keys], *figures)
    if not rows:
        table.caption = "no provider calls recorded yet"
    return table


def endpoints_table(endpoints: Sequence[Any]) -> ByWidth:
    def build(width: int) -> Table:
        full = width >= FULL_IDS_FROM
        table = Table(title=f"{len(endpoints)} webhook endpoint(s)", title_justify="left")
        table.add_column("id", no_wrap=True)
        for column in ("url", "events", "enabled", "failing since"):
            table.add_column(column, overflow="fold")
        for e in endpoints:
            table.add_row(
                str(e.id) if full else str(e.id)[:SHORT_ID],
                e.url,
                ", ".join(e.event_types) or "all",
                Text("yes", style="green")
                if e.enabled
                else Text(f"no ({e.disabled_reason or '-'})", style="red"),
                ago(e.failing_since) if e.failing_since else "-",
            )
        return table

    return ByWidth(build)


def deliveries_table(deliveries: Sequence[Any]) -> ByWidth:
    def build(width: int) -> Table:
        full = width >= FULL_IDS_FROM
        table = Table(title=f"{len(deliveries)} deliveries, newest first", title_justify="left")
        table.add_column("id", no_wrap=True)
        for column in ("event", "endpoint", "status", "tries", "last answer", "next try"):
            table.add_column(column, overflow="fold")
        styles = {
            "succeeded": "green",
            "pending": "yellow",
            "failed": "red",
            "abandoned": "magenta",
        }
        for d in deliveries:
            last = str(d.last_status_code) if d.last_status_code is not None else d.last_error
            table.add_row(
                str(d.id) if full else str(d.id)[:SHORT_ID],
                d.event_type,
                str(d.endpoint_id)[:SHORT_ID],
                Text(d.status, style=styles.get(d.status, "white")),
                str(d.attempt_count),
                (last or "-")[:60],
                f"{d.next_attempt_at:%H:%M:%S}" if d.next_attempt_at else "-",
            )
        return table

    return ByWidth(build)
