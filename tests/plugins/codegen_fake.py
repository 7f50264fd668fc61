"""Fixtures for the fake Codegen server.

- ``fake_codegen``: a started ``FakeCodegenServer`` on a free loopback port (runs last
  0.05 s PENDING + 0.15 s ACTIVE, rate limits on), stopped after the test. Script
  faults with ``fake_codegen.faults.push(Fault....)``, outcomes with
  ``set_outcome`` / ``set_status``.
- ``codegen_env``: the same server, with the environment pointing ai-worker at it
  (``CODEGEN_TOKEN``, ``CODEGEN_ORG_ID``, ``CODEGEN_BASE_URL``, a 2 s
  ``CODEGEN_TIMEOUT`` per request, a 0.05 s ``CODEGEN_POLL_INTERVAL``, a 10 s
  ``CODEGEN_RUN_TIMEOUT`` and tiny retry delays), so ``CodegenProvider()`` and
  ``Agent.from_settings()`` talk to the fake.
- ``manual_clock``: a ``ManualClock`` to share between a fake server (``clock=``) and
  an ``Agent`` (``clock=``, ``sleep=``): time moves only when the client sleeps, so
  lifecycles are instant and exact.
- ``fresh_codegen_budget`` (autouse): every test starts and ends with no in-process
  Codegen budget or cooldown. Every fake has the same token and organization, so
  without it one test's spent budget (or a 429's cooldown) would slow the next one
  down: an ``Agent`` waits for the shared budget of its token (``app.core.budget``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from app.core.budget import reset_budgets
from app.core.cooldown import reset_cooldowns
from app.sandbox.codegen_server import FakeCodegenServer


class ManualClock:
    """A monotonic clock that moves only by ``sleep``/``advance``; records the sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.sleeps.append(seconds)
        self.advance(seconds)


@pytest.fixture(autouse=True)
def fresh_codegen_budget() -> Iterator[None]:
    reset_budgets()
    reset_cooldowns()
    yield
    reset_budgets()
    reset_cooldowns()


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake_codegen() -> Iterator[FakeCodegenServer]:
    server = FakeCodegenServer(pending_seconds=0.05, active_seconds=0.15).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def codegen_env(
    fake_codegen: FakeCodegenServer, env: Callable[..., None]
) -> FakeCodegenServer:
    env(
        CODEGEN_TOKEN=fake_codegen.token,
        CODEGEN_ORG_ID=fake_codegen.org_id,
        CODEGEN_BASE_URL=fake_codegen.url,
        CODEGEN_TIMEOUT=2,
        CODEGEN_POLL_INTERVAL=0.05,
        CODEGEN_RUN_TIMEOUT=10,
        RETRY_BASE_DELAY=0.01,
        RETRY_MAX_DELAY=0.05,
    )
    return fake_codegen
