from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.ai.base import Usage
from app.ai.pricing import PriceTable, PricingError, get_price_table


def test_cost_uses_cached_price_for_cached_tokens() -> None:
    table = PriceTable()
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=400_000)
    # gpt-4o: 2.50 in, 1.25 cached in, 10.00 out (per million)
    assert table.cost("gpt-4o", usage) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 10.0)


def test_dated_model_uses_base_price_and_unknown_is_none() -> None:
    table = PriceTable()
    usage = Usage(prompt_tokens=1000, completion_tokens=0)
    assert table.cost("gpt-4o-mini-2024-07-18", usage) == pytest.approx(0.15 / 1000)
    assert table.cost("my-local-llama", usage) is None


def test_override_from_file(tmp_path: Path, env) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-local-llama": {"input": 1, "output": 2},
                                "gpt-4o": {"input": 5, "cached_input": 5, "output": 5}}))
    env(AIW_PRICING_FILE=str(path))
    from app.config import get_settings

    table = get_price_table(get_settings())
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert table.cost("my-local-llama", usage) == pytest.approx(3.0)
    assert table.cost("gpt-4o", usage) == pytest.approx(10.0)
    assert table.cost("gpt-4o-mini", usage) == pytest.approx(0.75)  # untouched default


@pytest.mark.parametrize(
    "content",
    ['{"m": {"input": 1}}', '{"m": {"input": "x", "output": 1}}', "[1, 2]", "not json",
     '{"m": {"input": -1, "output": 1}}'],
)
def test_bad_pricing_file_names_the_problem(tmp_path: Path, content: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(PricingError, match=r"prices\.json"):
        PriceTable().override_from_file(path)
