"""The Codegen API as tracked runs use it: every request is paid from the shared budget.

``CodegenGateway`` wraps one ``CodegenClient`` (one per process and configuration,
made on first use) and, before each request, checks the cooldown that a 429 starts
and takes a token from the budget (``app.core.budget``): the standard bucket for
get/list/logs/resume, the creation bucket for creating a run. No token, no request:
``BudgetExhausted`` says how long to wait, and the caller defers (a task publishes
itself again with a countdown; it never sleeps in a worker slot).

A 429 (someone else spends the same token's budget, or the limits are set too high)
starts a cooldown shared by all workers (``app.core.cooldown``) for the server's
Retry-After, else for the time the bucket takes to fill up again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from app.codegen import AgentRun, AgentRunLogs, AgentRunPage, CodegenClient, RepoPage, RepoResolver
from app.codegen.client import MAX_PAGE_SIZE
from app.core.budget import BudgetExhausted, CodegenBudget, TokenBucket, get_codegen_budget
from app.core.cooldown import CooldownStore, credential_digest, get_cooldowns
from app.core.errors import ProviderNotConfiguredError, ProviderRateLimitError
from app.jobs.agent_runs.schedule import ListPositions

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

COOLDOWN_STANDARD = "codegen-runs"
COOLDOWN_CREATE = "codegen-create"


class CodegenGateway:
    """Budgeted calls to Codegen for one organization (thread-safe)."""

    def __init__(
        self,
        client: CodegenClient,
        budget: CodegenBudget,
        cooldowns: CooldownStore,
        digest: str,
        retry_after_max: float = 600.0,
    ) -> None:
        self.client = client
        self.budget = budget
        #: Where this process saw runs in the list (see ``schedule.ListPositions``).
        self.positions = ListPositions()
        #: ``owner/repo`` -> ``repo_id``, its pages paid from the standard budget.
        self.repos = RepoResolver(self.list_repos)
        self._cooldowns = cooldowns
        self._standard_name = f"{COOLDOWN_STANDARD}:{digest}"
        self._create_name = f"{COOLDOWN_CREATE}:{digest}"
        self._retry_after_max = retry_after_max

    # --- standard endpoints -----------------------------------------------------------
    def get_run(self, remote_id: int) -> AgentRun:
        return self._standard(lambda: self.client.get_run(remote_id))

    def list_runs(self, skip: int = 0, limit: int = MAX_PAGE_SIZE) -> AgentRunPage:
        return self._standard(lambda: self.client.list_runs(skip=skip, limit=limit))

    def get_logs(
        self, remote_id: int, skip: int = 0, limit: int = MAX_PAGE_SIZE, *, reserve: float = 0.0
    ) -> AgentRunLogs:
        """One page of a run's logs; ``reserve``: only if that many tokens stay for polls."""
        return self._standard(
            lambda: self.client.get_logs(remote_id, skip=skip, limit=limit), reserve=reserve
        )

    def list_repos(self, skip: int = 0, limit: int = MAX_PAGE_SIZE) -> RepoPage:
        return self._standard(lambda: self.client.list_repos(skip=skip, limit=limit))

    def resume_run(self, remote_id: int, prompt: str, images: Sequence[str] | None) -> AgentRun:
        return self._standard(lambda: self.client.resume_run(remote_id, prompt, images))

    # --- creation -----------------------------------------------------------------------
    def create_run(self, prompt: str, **options: Any) -> AgentRun:
        return self._paid(
            self.budget.create,
            self._create_name,
            lambda: self.client.create_run(prompt, **options),
        )

    # --- plumbing -----------------------------------------------------------------------
    def _standard(self, call: Callable[[], T], *, reserve: float = 0.0) -> T:
        return self._paid(self.budget.standard, self._standard_name, call, reserve=reserve)

    def _paid(
        self, bucket: TokenBucket, cooldown: str, call: Callable[[], T], *, reserve: float = 0.0
    ) -> T:
        remaining = self._cooldown_remaining(cooldown)
        if remaining > 0:
            raise BudgetExhausted(remaining, "Codegen answered 429 a moment ago")
        grant = bucket.take(reserve=reserve)
        if not grant:
            raise BudgetExhausted(grant.wait, "the shared Codegen budget is spent")
        try:
            return call()
        except ProviderRateLimitError as error:
            wait = error.retry_after
            if wait is None or wait < 0:
                wait = bucket.spec.refill_seconds
            self._start_cooldown(cooldown, min(wait, self._retry_after_max))
            raise

    def _cooldown_remaining(self, name: str) -> float:
        try:
            return self._cooldowns.remaining(name)
        except Exception as exc:  # noqa: BLE001 - advisory: the budget still applies
            log.warning("cooldown store unreachable (%s)", type(exc).__name__)
            return 0.0

    def _start_cooldown(self, name: str, seconds: float) -> None:
        log.warning("Codegen answered 429: every worker waits %.1fs (%s)", seconds, name)
        try:
            self._cooldowns.start(name, seconds)
        except Exception as exc:  # noqa: BLE001 - advisory, see above
            log.warning("cooldown store unreachable (%s)", type(exc).__name__)


_gateways: dict[tuple[int, int], CodegenGateway] = {}
_gateways_lock = threading.Lock()


def get_gateway(settings: Settings) -> CodegenGateway:
    """The gateway of this process for ``settings`` (made on first use)."""
    key = (os.getpid(), id(settings))
    with _gateways_lock:
        gateway = _gateways.get(key)
        if gateway is None:
            if settings.codegen_token is None or settings.codegen_org_id is None:
                raise ProviderNotConfiguredError(
                    "tracked agent runs need CODEGEN_TOKEN and CODEGEN_ORG_ID",
                    provider_name="codegen",
                )
            if len(_gateways) > 16:
                _gateways.clear()
            client = CodegenClient(
                settings.codegen_org_id,
                settings.codegen_token,
                settings.codegen_base_url,
                timeout=settings.codegen_timeout,
                max_answer_bytes=settings.aiw_max_answer_bytes,
            )
            gateway = CodegenGateway(
                client,
                get_codegen_budget(settings),
                get_cooldowns(settings),
                credential_digest(settings, "codegen"),
                settings.retry_after_max,
            )
            _gateways[key] = gateway
        return gateway


def reset_gateways() -> None:
    """Forget the gateways (tests, after settings change)."""
    with _gateways_lock:
        _gateways.clear()
