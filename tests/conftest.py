"""Shared test setup.

Every test starts from a clean environment: the variables ai-worker reads are
removed and the cached Settings are dropped, so a developer's own OPENAI_API_KEY
never leaks into a test. Fixture modules live in tests/plugins/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from app.config import Settings, get_settings

pytest_plugins = [
    "tests.plugins.openai_fake",
    "tests.plugins.codegen_fake",
    "tests.plugins.database",
    "tests.plugins.services",
    "tests.plugins.webhooks",
    "tests.plugins.queue",
    "tests.plugins.cli",
]

_OUR_VARS = {name.upper() for name in Settings.model_fields}


@pytest.fixture(autouse=True)
def clean_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper() in _OUR_VARS:
            monkeypatch.delenv(name)
    # No stray .env file from the developer's checkout is read during tests.
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set environment variables for one test: ``env(OPENAI_API_KEY="sk-...")``."""

    def setter(**values: object) -> None:
        for key, value in values.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, str(value))
        get_settings.cache_clear()

    return setter
