"""Leases shared by workers (real Redis, the tests' db) and in the process."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.core.lease import KEY_PREFIX, Leases, MemoryLeases, RedisLeases

NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture(params=["redis", "memory"])
def leases(request: pytest.FixtureRequest) -> Leases:
    if request.param == "memory":
        return MemoryLeases()
    db = request.getfixturevalue("redis_db")
    return RedisLeases(redis.Redis(host="127.0.0.1", port=6379, db=db))


def test_one_holder_at_a_time(leases: Leases) -> None:
    assert leases.acquire("job", "a", 5)
    assert not leases.acquire("job", "b", 5)
    assert leases.acquire("other", "b", 5)  # another name: another lease
    assert not leases.renew("job", "b", 5)  # only the holder renews
    leases.release("job", "b")  # ...or releases
    assert not leases.acquire("job", "b", 5)
    assert leases.renew("job", "a", 5)
    leases.release("job", "a")
    assert leases.acquire("job", "b", 5)


def test_an_expired_lease_is_free_and_the_old_holder_cannot_touch_it(leases: Leases) -> None:
    assert leases.acquire("job", "a", 0.05)
    time.sleep(0.1)
    assert not leases.renew("job", "a", 5)
    assert leases.acquire("job", "b", 5)
    leases.release("job", "a")
    assert not leases.acquire("job", "c", 5)  # still b's


def test_redis_keys_and_an_unreachable_store(redis_db: int) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    assert RedisLeases(client).acquire("job", "a", 5)
    assert client.get(KEY_PREFIX + "job") == b"a"
    assert 0 < client.pttl(KEY_PREFIX + "job") <= 5000
    down = RedisLeases(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=NO_RETRY)
    )
    assert not down.acquire("job", "a", 5)  # no store: nobody may hold it
    assert not down.renew("job", "a", 5)
