"""Webhook fixtures: a receiver that verifies signatures, a recording publisher on
SQLite for the delivery logic, and the queue test bed set up for webhooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.fernet import Fernet

from app.core.publisher import set_publisher
from app.db.session import dispose_engines
from app.sandbox.webhook_receiver import WebhookReceiver
from app.webhooks.delivery import reset_resources

if TYPE_CHECKING:  # imported by pytest as a plugin of its own, after this one
    from tests.plugins.queue import QueueBed


@dataclass
class RecordingPublisher:
    """The queue port, recording what would have gone to the broker."""

    deliveries: list[tuple[str, float | None]] = field(default_factory=list)
    jobs: list[tuple[str, float | None]] = field(default_factory=list)
    fail_with: Exception | None = None

    def ensure_routes(self) -> None:
        pass

    def publish_job(
        self, job_id: str, *, countdown: float | None = None, priority: str | None = None
    ) -> None:
        self.jobs.append((job_id, countdown))

    def send_callback(self, task_name: str, args: list[object]) -> None:
        pass

    def publish_delivery(self, delivery_id: str, *, countdown: float | None = None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.deliveries.append((delivery_id, countdown))

    def delivery_ids(self) -> list[str]:
        return [d for d, _ in self.deliveries]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A receiver on loopback; set ``receiver.secret`` to the endpoint's secret."""
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def webhook_db(
    migrated_sqlite_url: str, env: Callable[..., None], tmp_path: Path
) -> Iterator[RecordingPublisher]:
    """A migrated SQLite database, a fresh encryption key, private targets allowed
    (the receivers are on loopback), a short retry schedule, and a recording publisher."""
    env(
        DATABASE_URL=migrated_sqlite_url,
        AIW_DATA_DIR=str(tmp_path / "data"),
        AIW_SECRET_KEY=Fernet.generate_key().decode(),
        AIW_WEBHOOK_ALLOW_PRIVATE="true",
        AIW_WEBHOOK_RETRY_SCHEDULE="0.05,0.1",
        AIW_WEBHOOK_TIMEOUT=5,
    )
    publisher = RecordingPublisher()
    set_publisher(publisher)
    yield publisher
    set_publisher(None)
    reset_resources()
    dispose_engines()


@pytest.fixture
def webhook_bed(queue_bed: QueueBed) -> Iterator[QueueBed]:
    """The queue test bed (real workers, Redis, PostgreSQL) with webhook settings shared
    by the test process and the workers it starts."""
    queue_bed.configure(
        AIW_SECRET_KEY=Fernet.generate_key().decode(),
        AIW_WEBHOOK_ALLOW_PRIVATE="true",
        AIW_WEBHOOK_RETRY_SCHEDULE="0.5,0.5,1,1,1,1,1,1,1,1",
        AIW_WEBHOOK_TIMEOUT=5,
    )
    reset_resources()
    yield queue_bed
    reset_resources()
