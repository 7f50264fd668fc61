"""The queue test bed: a fresh migrated PostgreSQL database, a Redis db, the fake
OpenAI server, and the same environment for the test process and the worker
processes it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis as redis_lib

from app.db import migrate
from app.db.session import dispose_engines
from app.jobs.runner import reset_providers
from app.sandbox.openai_server import FakeOpenAIServer
from tests.plugins.services import REPO_ROOT, CeleryLauncher


@dataclass
class QueueBed:
    db_url: str
    broker_url: str
    openai: FakeOpenAIServer
    celery: CeleryLauncher
    env: dict[str, str] = field(default_factory=dict)
    _set_env: Callable[..., None] | None = None

    @property
    def redis(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(self.broker_url)

    def configure(self, **values: Any) -> None:
        """Change settings for the test process and for workers started afterwards."""
        for key, value in values.items():
            self.env[key] = str(value)
        assert self._set_env is not None
        self._set_env(**values)
        reset_providers()

    def worker(self, **kwargs: Any):  # type: ignore[no-untyped-def]
        return self.celery.worker(dict(self.env), **kwargs)

    def beat(self):  # type: ignore[no-untyped-def]
        return self.celery.beat(dict(self.env))


@pytest.fixture
def queue_bed(
    pg_database_factory: Callable[[], str],
    redis_url: str,
    celery_processes: CeleryLauncher,
    env: Callable[..., None],
) -> Iterator[QueueBed]:
    db_url = pg_database_factory()
    migrate.upgrade(db_url)
    fake = FakeOpenAIServer().start()
    bed = QueueBed(db_url, redis_url, fake, celery_processes, _set_env=env)
    bed.configure(
        DATABASE_URL=db_url,
        CELERY_BROKER_URL=redis_url,
        REDIS_URL=redis_url,
        OPENAI_API_KEY=fake.api_key,
        OPENAI_BASE_URL=fake.url,
        OPENAI_TIMEOUT=10,
        OPENAI_MAX_RETRIES=10,
        RETRY_BASE_DELAY=0.05,
        RETRY_MAX_DELAY=0.5,
        PREFER_CODEGEN="false",
        AIW_SWEEP_INTERVAL=1,
        AIW_IMPORTS="tests.integration.callback_tasks",
        PYTHONPATH=str(REPO_ROOT),
    )
    from app.config import get_settings
    from app.core.publisher import set_publisher
    from workers.celery_app import create_celery_app
    from workers.publisher import CeleryPublisher

    publisher_app = create_celery_app(get_settings())
    set_publisher(CeleryPublisher(publisher_app))
    yield bed
    set_publisher(None)
    publisher_app.close()
    celery_processes.stop_all()
    fake.stop()
    dispose_engines()
