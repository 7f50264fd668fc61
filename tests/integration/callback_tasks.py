"""A user's callback task, loaded by the test worker through AIW_IMPORTS."""

from __future__ import annotations

import redis

from app.config import get_settings
from workers.celery_app import celery_app

CALLBACK_LIST = "aiw-test:callbacks"


@celery_app.task(name="tests.callback.record", ignore_result=True)
def record(job_id: str) -> None:
    url = get_settings().redis_url
    assert url is not None
    redis.Redis.from_url(url).rpush(CALLBACK_LIST, job_id)
