"""The exporter's families from a snapshot (the database read: tests/integration/test_up.py)."""

from __future__ import annotations

from typing import Any

from app.config import load_settings
from app.shell.metrics import AIWorkerCollector, Snapshot


def _samples(snapshot: Snapshot, name: str) -> dict[tuple[Any, ...], float]:
    collector = AIWorkerCollector(load_settings())
    collector._snapshot, collector._taken_at = snapshot, float("inf")  # no read
    collector.cache_seconds = float("inf")
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in collector.collect()
        for s in family.samples
        if s.name == name
    }


def test_retries_total_is_zero_before_the_first_retry() -> None:
    snap = Snapshot(database_up=True)
    snap.attempts = {
        ("openai", "gpt-4o-mini", "succeeded"): 3,
        ("openai", "gpt-4o", "succeeded"): 1,
        ("openai", "gpt-4o", "retry"): 2,
    }
    assert _samples(snap, "aiw_retries_total") == {
        (("model", "gpt-4o"), ("provider", "openai")): 2.0,
        (("model", "gpt-4o-mini"), ("provider", "openai")): 0.0,
    }
