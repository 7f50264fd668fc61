"""Fixtures for the fake OpenAI server.

- ``fake_openai``: a started ``FakeOpenAIServer`` on a free loopback port, stopped after
  the test. Script faults with ``fake_openai.faults.push(Fault....)``.
- ``openai_env``: the same server, with the environment pointing ai-worker at it
  (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, a 2 s ``OPENAI_TIMEOUT`` and tiny retry
  delays), so ``OpenAIProvider()`` built from the settings talks to the fake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from app.sandbox.openai_server import FakeOpenAIServer


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def openai_env(
    fake_openai: FakeOpenAIServer, env: Callable[..., None]
) -> FakeOpenAIServer:
    env(
        OPENAI_API_KEY=fake_openai.api_key,
        OPENAI_BASE_URL=fake_openai.url,
        OPENAI_TIMEOUT=2,
        RETRY_BASE_DELAY=0.01,
        RETRY_MAX_DELAY=0.05,
    )
    return fake_openai
