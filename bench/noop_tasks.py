"""The baseline: a raw Celery task that does nothing but count itself in Redis."""

from __future__ import annotations

import redis

from app.config import get_settings
from workers.celery_app import celery_app

COUNTER = "aiw-bench:noop"
_client: redis.Redis | None = None


@celery_app.task(name="bench.noop", ignore_result=True)
def noop(n: int) -> None:
    global _client
    if _client is None:
        url = get_settings().redis_url
        assert url is not None
        _client = redis.Redis.from_url(url)
    _client.incr(COUNTER)
