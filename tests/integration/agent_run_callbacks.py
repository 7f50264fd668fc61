"""A user's status callback for agent runs, loaded by the test worker through AIW_IMPORTS."""

from __future__ import annotations

import json
import time

import redis

from app.config import get_settings
from workers.celery_app import celery_app

CALLBACK = "tests.agent_run_callback.record"
CALLBACK_LIST = "aiw-test:agent-run-callbacks"


@celery_app.task(name=CALLBACK, ignore_result=True)
def record(run_id: int, old: str | None, new: str | None) -> None:
    url = get_settings().redis_url
    assert url is not None
    entry = {"run_id": run_id, "old": old, "new": new, "at": time.time()}
    redis.Redis.from_url(url).rpush(CALLBACK_LIST, json.dumps(entry))


def received(client: redis.Redis) -> list[dict[str, object]]:
    """Every callback so far, in the order the worker ran them."""
    return [json.loads(raw) for raw in client.lrange(CALLBACK_LIST, 0, -1)]
