"""Prices per model (USD per million tokens) and the cost of one answer.

The built-in table covers common OpenAI models. A user overrides or extends it
with a JSON file named by ``AIW_PRICING_FILE``::

    {"my-model": {"input": 1.0, "cached_input": 0.5, "output": 2.0}}

A model with no known price gets ``cost_usd = None`` (unknown), never 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.ai.base import Usage
    from app.config import Settings


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None  # None: cached tokens cost the input price


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(input=2.50, cached_input=1.25, output=10.00),
    "gpt-4o-mini": Price(input=0.15, cached_input=0.075, output=0.60),
    "gpt-4.1": Price(input=2.00, cached_input=0.50, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, cached_input=0.10, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, cached_input=0.025, output=0.40),
    "gpt-5": Price(input=1.25, cached_input=0.125, output=10.00),
    "gpt-5-mini": Price(input=0.25, cached_input=0.025, output=2.00),
    "gpt-5-nano": Price(input=0.05, cached_input=0.005, output=0.40),
    "o3": Price(input=2.00, cached_input=0.50, output=8.00),
    "o3-mini": Price(input=1.10, cached_input=0.55, output=4.40),
    "o4-mini": Price(input=1.10, cached_input=0.275, output=4.40),
}

# "gpt-4o-2024-08-06" is priced as "gpt-4o".
_DATED = re.compile(r"^(?P<base>.+?)-\d{4}-\d{2}-\d{2}$")


class PricingError(ValueError):
    """The pricing file is unreadable or malformed; the message names the file and model."""


class PriceTable:
    def __init__(self, prices: dict[str, Price] | None = None) -> None:
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)

    def price_for(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        dated = _DATED.match(model)
        if dated and dated.group("base") in self.prices:
            return self.prices[dated.group("base")]
        return None

    def cost(self, model: str, usage: Usage) -> float | None:
        price = self.price_for(model)
        if price is None:
            return None
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_rate = price.input if price.cached_input is None else price.cached_input
        total = (
            (usage.prompt_tokens - cached) * price.input
            + cached * cached_rate
            + usage.completion_tokens * price.output
        )
        return round(total / 1_000_000, 10)

    def override_from_file(self, path: Path) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PricingError(f"pricing file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise PricingError(f"pricing file {path}: expected an object of model -> prices")
        for model, entry in data.items():
            if not isinstance(entry, dict):
                raise PricingError(f"pricing file {path}: {model}: expected an object")
            try:
                price = Price(
                    input=float(entry["input"]),
                    output=float(entry["output"]),
                    cached_input=None
                    if entry.get("cached_input") is None
                    else float(entry["cached_input"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise PricingError(
                    f"pricing file {path}: {model}: needs numbers 'input' and 'output' ({exc})"
                ) from exc
            if min(price.input, price.output, price.cached_input or 0.0) < 0:
                raise PricingError(f"pricing file {path}: {model}: prices must be >= 0")
            self.prices[model] = price


_tables: dict[Path | None, PriceTable] = {}


def get_price_table(settings: Settings) -> PriceTable:
    """The built-in table with ``AIW_PRICING_FILE`` applied (read once per file)."""
    key = settings.aiw_pricing_file
    table = _tables.get(key)
    if table is None:
        table = PriceTable()
        if key is not None:
            table.override_from_file(key)
        _tables[key] = table
    return table
