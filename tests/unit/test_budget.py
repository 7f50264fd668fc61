"""The shared Codegen budget: token buckets in Redis (real Redis, the tests' db) and in
memory. The property that matters: never more than ``limit`` grants in any window.
Then the blocking limiter of the in-process paths (manual clock), and its Redis keys
(db 9): the same as the workers'."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.config import load_settings
from app.core.budget import (
    COOLDOWN_CREATE,
    COOLDOWN_STANDARD,
    KEY_PREFIX,
    BlockingCodegenLimiter,
    BucketSpec,
    CodegenBudget,
    MemoryTokenBucket,
    RedisTokenBucket,
    blocking_limiter,
    codegen_digest,
    get_codegen_budget,
    reset_budgets,
    wait_at_most,
)
from app.core.cooldown import credential_digest, get_cooldowns, reset_cooldowns
from app.core.errors import AIProviderError, CodegenBudgetExhaustedError, CodegenBudgetTimeoutError
from app.core.retry import RetryPolicy
from tests.plugins.codegen_fake import ManualClock
from tests.plugins.services import TEST_REDIS_DBS


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


# --- the blocking limiter of the in-process paths ---------------------------------------------


class FakeCooldowns:
    """A ``CooldownStore`` on a manual clock (the real in-memory one reads time.monotonic)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.until: dict[str, float] = {}
        self.started: list[tuple[str, float]] = []

    def start(self, name: str, seconds: float) -> None:
        self.started.append((name, seconds))
        self.until[name] = max(self.until.get(name, 0.0), self.clock() + seconds)

    def remaining(self, name: str) -> float:
        return max(0.0, self.until.get(name, 0.0) - self.clock())


class BrokenCooldowns:
    def start(self, name: str, seconds: float) -> None:
        raise ConnectionError("down")

    def remaining(self, name: str) -> float:
        raise ConnectionError("down")


def manual_limiter(
    clock: ManualClock, *, max_wait: float = 10.0, cooldowns: object = None
) -> tuple[BlockingCodegenLimiter, CodegenBudget, FakeCooldowns]:
    budget = CodegenBudget(
        MemoryTokenBucket(BucketSpec(capacity=2, rate=4.0), clock=clock),  # standard
        MemoryTokenBucket(BucketSpec(capacity=1, rate=0.5), clock=clock),  # create
    )
    store = FakeCooldowns(clock)
    limiter = BlockingCodegenLimiter(
        budget,
        store if cooldowns is None else cooldowns,  # type: ignore[arg-type]
        "d1g3st",
        max_wait=max_wait,
        retry_after_max=30.0,
        sleep=clock.sleep,
        clock=clock,
    )
    return limiter, budget, store


def test_limiter_waits_for_a_token_of_the_right_bucket() -> None:
    clock = ManualClock()
    limiter, budget, _ = manual_limiter(clock)
    for _ in range(2):
        limiter.before_request("standard")
    assert clock.sleeps == []  # the burst goes at once
    limiter.before_request("standard")
    assert clock.sleeps == [pytest.approx(0.25)]  # one token at 4/s
    limiter.before_request("create")  # its own bucket: full
    assert len(clock.sleeps) == 1
    limiter.before_request("create")
    assert clock.sleeps[-1] == pytest.approx(2.0)  # 0.5/s
    assert budget.create.peek() == pytest.approx(0.0)


def test_limiter_gives_up_at_max_wait_without_sleeping_for_nothing() -> None:
    clock = ManualClock()
    limiter, _, _ = manual_limiter(clock, max_wait=1.5)
    limiter.before_request("create")
    with pytest.raises(CodegenBudgetExhaustedError) as info:
        limiter.before_request("create")  # the next token is 2 s away, more than 1.5
    error = info.value
    assert isinstance(error, CodegenBudgetTimeoutError)
    assert clock.sleeps == []
    assert error.wait == pytest.approx(2.0)
    assert "no Codegen create request could be made within 1.5s" in str(error)
    assert "budget is spent" in str(error) and "nothing was sent" in str(error)
    # a provider error too: a chain falls back, the retry loop does not repeat it
    assert isinstance(error, AIProviderError) and not error.retryable and error.fallback
    assert error.provider_name == "codegen" and error.retry_after == pytest.approx(2.0)
    assert RetryPolicy().should_retry(error, 0) is False


def test_limiter_max_wait_zero_never_blocks() -> None:
    clock = ManualClock()
    limiter, _, _ = manual_limiter(clock, max_wait=0)
    limiter.before_request("standard")
    limiter.before_request("standard")
    with pytest.raises(CodegenBudgetTimeoutError):
        limiter.before_request("standard")
    with pytest.raises(ValueError):
        manual_limiter(clock, max_wait=-1)


def test_wait_at_most_caps_the_wait_in_its_block_only() -> None:
    clock = ManualClock()
    limiter, _, _ = manual_limiter(clock, max_wait=100)
    limiter.before_request("create")
    with wait_at_most(0.5), pytest.raises(CodegenBudgetTimeoutError, match=r"within 0\.5s"):
        limiter.before_request("create")
    limiter.before_request("create")  # outside: waits the 2 s
    assert clock.sleeps == [pytest.approx(2.0)]


def test_a_429_starts_the_shared_cooldown_and_later_requests_wait_it_out() -> None:
    clock = ManualClock()
    limiter, budget, store = manual_limiter(clock, max_wait=60)
    limiter.rate_limited("standard", 3.0)  # the server's Retry-After
    limiter.rate_limited("create", None)  # none: until the bucket is full again (2 s)
    limiter.rate_limited("standard", 1000.0)  # capped at retry_after_max
    assert store.started == [
        ("codegen-runs:d1g3st", 3.0),
        ("codegen-create:d1g3st", pytest.approx(budget.create.spec.refill_seconds)),
        ("codegen-runs:d1g3st", 30.0),
    ]
    limiter.before_request("standard")  # waits the cooldown, then takes a token
    assert sum(clock.sleeps) == pytest.approx(30.0)
    assert budget.standard.peek() == pytest.approx(1.0)


def test_the_cooldown_counts_against_max_wait() -> None:
    clock = ManualClock()
    limiter, _, store = manual_limiter(clock, max_wait=5)
    store.start("codegen-runs:d1g3st", 8.0)  # e.g. a worker's gateway met a 429
    with pytest.raises(CodegenBudgetTimeoutError, match="429 a moment ago"):
        limiter.before_request("standard")
    assert clock.sleeps == []


def test_an_unreachable_cooldown_store_is_ignored() -> None:
    clock = ManualClock()
    limiter, _, _ = manual_limiter(clock, cooldowns=BrokenCooldowns())
    limiter.rate_limited("standard", 1.0)  # logged, not raised
    limiter.before_request("standard")


def test_the_digest_and_cooldown_names_are_the_workers_ones() -> None:
    from app.jobs.agent_runs import codegen as gateway

    settings = load_settings(codegen_org_id=42, codegen_token="secret-token")
    digest = codegen_digest("secret-token", 42)
    assert digest == credential_digest(settings, "codegen")
    assert "secret" not in digest and len(digest) == 16
    assert codegen_digest("secret-token", 43) != digest
    assert (COOLDOWN_STANDARD, COOLDOWN_CREATE) == (
        gateway.COOLDOWN_STANDARD,
        gateway.COOLDOWN_CREATE,
    )


# The second of the tests' own Redis dbs (AIW_TEST_REDIS_DBS), never a fixed number.
REDIS9 = f"redis://127.0.0.1:6379/{TEST_REDIS_DBS[1]}"


@pytest.fixture
def redis9() -> Iterator[redis.Redis]:
    """The tests' second Redis db, flushed before and after."""
    client = redis.Redis.from_url(REDIS9, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    client.flushdb()
    reset_budgets()
    reset_cooldowns()
    yield client
    client.flushdb()
    reset_budgets()
    reset_cooldowns()


def test_blocking_limiter_shares_the_workers_redis_keys(redis9: redis.Redis) -> None:
    """Same token and org: the limiter takes from the buckets the gateway takes from,
    and its 429 cooldown is the key the gateway reads."""
    settings = load_settings(redis_url=REDIS9, codegen_org_id=42, codegen_token="tok")
    digest = codegen_digest("tok", 42)
    limiter = blocking_limiter(settings, digest)
    workers = get_codegen_budget(settings)  # what the gateway uses
    assert limiter.budget is workers
    assert isinstance(workers.standard, RedisTokenBucket)
    assert workers.standard.key == f"aiw:budget:codegen:standard:{digest}"
    other = blocking_limiter(settings, codegen_digest("tok", 43))
    assert other.budget is not workers
    limiter.before_request("create")
    assert workers.create.peek() == pytest.approx(settings.codegen_create_burst - 1, abs=0.05)
    limiter.rate_limited("create", 2.0)
    ttl = redis9.pttl(f"aiw:cooldown:codegen-create:{digest}")
    assert 0 < ttl <= 2000
    assert get_cooldowns(settings).remaining(f"codegen-create:{digest}") > 0
