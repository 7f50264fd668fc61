"""The shared Codegen budget: token buckets in Redis (real Redis, the tests' db) and in
memory. The property that matters: never more than ``limit`` grants in any window."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.config import load_settings
from app.core.budget import (
    KEY_PREFIX,
    BucketSpec,
    MemoryTokenBucket,
    RedisTokenBucket,
    get_codegen_budget,
    reset_budgets,
)
from tests.plugins.codegen_fake import ManualClock


def most_in_any_window(times: Sequence[float], window: float) -> int:
    """The largest number of ``times`` inside any half-open interval of ``window`` s."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_for_window_leaves_room_for_the_burst_and_the_margin() -> None:
    spec = BucketSpec.for_window(60, 30.0, 10, margin=1.0)
    assert spec.capacity == 10
    assert spec.rate == pytest.approx(50 / 31)
    # burst + rate * (window + margin) == limit: the sliding-window guarantee
    assert spec.capacity + spec.rate * 31 == pytest.approx(60)
    assert spec.refill_seconds == pytest.approx(6.2)
    for bad in [(10, 1.0, 10), (10, 1.0, 0), (10, 1.0, 11)]:
        with pytest.raises(ValueError):
            BucketSpec.for_window(*bad)


def test_memory_bucket_burst_then_rate_then_reserve() -> None:
    clock = ManualClock()
    bucket = MemoryTokenBucket(BucketSpec(capacity=3, rate=2.0), clock=clock)
    assert [bool(bucket.take()) for _ in range(4)] == [True, True, True, False]
    denied = bucket.take()
    assert denied.granted == 0 and denied.wait == pytest.approx(0.5)
    clock.advance(0.5)
    assert bucket.take()
    clock.advance(10)  # refills up to the capacity, not beyond
    assert bucket.peek() == pytest.approx(3)
    # reserve: grant only if that many tokens stay
    assert bucket.take(reserve=2)
    refused = bucket.take(reserve=2)
    assert not refused and refused.wait == pytest.approx(0.5)
    assert bucket.take()  # without a reserve the last tokens go
    with pytest.raises(ValueError):
        bucket.take(0)


def test_memory_bucket_never_exceeds_the_window() -> None:
    clock = ManualClock()
    spec = BucketSpec.for_window(10, 6.0, 4)
    bucket = MemoryTokenBucket(spec, clock=clock)
    grants = []
    for _ in range(3000):  # ask every 10 ms of fake time for 30 s
        if bucket.take():
            grants.append(clock())
        clock.advance(0.01)
    assert most_in_any_window(grants, 6.0) <= 10
    assert len(grants) >= 32  # and the budget is used: 4 at once, then 1/s


NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture
def redis_client(redis_db: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=6379, db=redis_db)


def test_redis_bucket_across_threads_and_processes_never_exceeds_the_window(
    redis_db: int, redis_client: redis.Redis
) -> None:
    """Two bucket objects (two "workers", each its own connection) and 16 threads ask as
    fast as they can for 3.5 s: no 1 s window ever holds more than 20 grants."""
    limit, window = 20, 1.0
    spec = BucketSpec.for_window(limit, window, burst=5, margin=0.05)
    key = KEY_PREFIX + "test:window"
    buckets = [
        RedisTokenBucket(redis.Redis(host="127.0.0.1", port=6379, db=redis_db), key, spec)
        for _ in range(2)
    ]
    grants: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 3.5

    def hammer(bucket: RedisTokenBucket) -> None:
        while time.monotonic() < stop:
            if bucket.take():
                with lock:
                    grants.append(time.monotonic())

    threads = [threading.Thread(target=hammer, args=(buckets[n % 2],)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most_in_any_window(grants, window) <= limit
    # ...and it does let the budget through: 5 at once, then ~14.3/s
    assert len(grants) >= 5 + 14 * 3
    ttl = redis_client.pttl(key)
    assert 0 < ttl <= (spec.refill_seconds + 1) * 1000


def test_redis_bucket_reserve_peek_and_wait(redis_client: redis.Redis) -> None:
    spec = BucketSpec(capacity=4, rate=1.0)
    bucket = RedisTokenBucket(redis_client, KEY_PREFIX + "test:reserve", spec)
    assert bucket.peek() == pytest.approx(4, abs=0.01)
    assert bucket.take(2)
    assert bucket.take(reserve=1)
    refused = bucket.take(reserve=1)
    assert not refused
    assert refused.wait == pytest.approx(1.0, abs=0.05)
    assert bucket.take()  # the last token, without reserve
    assert not bucket.take()


def test_unreachable_redis_grants_nothing() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=NO_RETRY)
    bucket = RedisTokenBucket(client, KEY_PREFIX + "test:down", BucketSpec(3, 1.0))
    grant = bucket.take()
    assert not grant and grant.wait > 0


def test_budget_is_per_organization_and_shared_in_redis(redis_url: str) -> None:
    reset_budgets()
    try:
        a = get_codegen_budget(
            load_settings(redis_url=redis_url, codegen_org_id=1, codegen_token="t")
        )
        again = get_codegen_budget(
            load_settings(redis_url=redis_url, codegen_org_id=1, codegen_token="t")
        )
        other = get_codegen_budget(
            load_settings(redis_url=redis_url, codegen_org_id=2, codegen_token="t")
        )
        assert isinstance(a.standard, RedisTokenBucket)
        assert isinstance(again.standard, RedisTokenBucket)
        assert isinstance(other.standard, RedisTokenBucket)
        assert a.standard.key == again.standard.key != other.standard.key
        assert a.create.key != a.standard.key
        assert "t" not in a.standard.key.split(":")[-1]  # a digest, not the token
        memory = get_codegen_budget(load_settings(codegen_org_id=1, codegen_token="t"))
        assert isinstance(memory.standard, MemoryTokenBucket)
    finally:
        reset_budgets()
