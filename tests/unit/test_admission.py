"""Admission windows (``app.core.buckets`` under ``app.core.admission``): several buckets
taken at once, scheduled slots held per job, settling and learned limits, in memory
(manual clock) and in real Redis (the tests' db); ``AIW_RATE_LIMITS`` parsing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from app.config import ConfigError, load_settings, parse_rate_limits
from app.core import admission
from app.core.buckets import (
    UNLIMITED_SPEC,
    BucketSpec,
    Learned,
    MemoryBuckets,
    RedisBuckets,
)
from tests.plugins.codegen_fake import ManualClock
from tests.unit.test_budget import most_in_any_window

KEYS = ["t:requests", "t:tokens"]


def amount_in_any_window(events: list[tuple[float, float]], window: float) -> float:
    """The largest sum of amounts whose times fall inside one ``window``."""
    events = sorted(events)
    best = total = 0.0
    start = 0
    for t, amount in events:
        total += amount
        while events[start][0] <= t - window:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


def test_for_limit_keeps_burst_plus_window_at_the_limit() -> None:
    spec = BucketSpec.for_limit(60, 60.0, 0.1, margin=1.0)
    assert spec.capacity == 6
    assert spec.capacity + spec.rate * 61 == pytest.approx(60)
    one = BucketSpec.for_limit(1, 60.0, 0.1)  # one, then the next a whole window later
    assert one.capacity == 1 and one.refill_seconds == pytest.approx(60)
    assert BucketSpec.for_limit(2, 60.0, 0.1).capacity == 1


def test_a_burst_of_scheduled_jobs_spreads_over_the_window_and_never_exceeds_it() -> None:
    """500 jobs arrive at once, each reserving 1 request and 300 tokens; each calls at
    its slot (some a little late, within the grace): no window of 6 s (+0.3 margin) holds
    more than 60 requests or 20,000 tokens, and the last call comes close to the limit's
    own pace."""
    clock = ManualClock()
    store = MemoryBuckets(clock)
    window, margin = 6.0, 0.3
    specs = [BucketSpec.for_limit(60, window, 0.1, margin), BucketSpec.for_limit(20_000, window,
                                                                                 0.1, margin)]
    slots = []
    calls = []
    for job in range(500):
        grant = store.take(KEYS, specs, [1, 300], max_wait=600, hold=f"job{job}", grace=margin)
        assert grant.reserved
        if grant:
            calls.append(clock())  # admitted at once: calls now
        else:
            slots.append((clock() + grant.wait, job))
    assert len(calls) == 6  # the burst
    for at, job in sorted(slots):
        late = 0.2 if job % 7 == 0 else 0.0  # some come back late, within the margin
        clock.now = max(clock.now, at + late)
        back = store.take(KEYS, specs, [1, 300], max_wait=600, hold=f"job{job}", grace=margin)
        assert back, f"job {job} came back for its slot and was refused"
        calls.append(clock())
    assert most_in_any_window(calls, window) <= 60
    assert amount_in_any_window([(t, 300.0) for t in calls], window) <= 20_000
    duration = max(calls) - 1000.0
    ideal = (500 - 60) / 60 * window  # the limit's own pace after one full window
    print(f"500 scheduled calls took {duration:.1f} s of fake time (limit allows {ideal:.1f})")
    # The price of a bucket under a sliding window: 10 % burst, then (1 - 0.1) * 60 per
    # 6.3 s, about 86 % of the limit's pace.
    assert ideal <= duration < ideal * 1.4


def test_a_hold_is_found_early_on_time_and_lost_when_late() -> None:
    clock = ManualClock()
    store = MemoryBuckets(clock)
    spec = [BucketSpec(capacity=1, rate=1.0)]
    assert store.take(["k"], spec, [1], max_wait=10, hold="a")  # the only token, now
    held = store.take(["k"], spec, [1], max_wait=10, hold="b")
    assert not held and held.reserved and held.wait == pytest.approx(1.0)
    early = store.take(["k"], spec, [1], max_wait=10, hold="b")  # no second debit
    assert not early and early.wait == pytest.approx(1.0)
    clock.advance(1.0)
    assert store.take(["k"], spec, [1], max_wait=10, hold="b")  # on time: goes
    # A job late by more than the grace lost its slot: it reserves anew.
    late = store.take(["k"], spec, [1], max_wait=10, hold="c")
    assert late.reserved and late.wait == pytest.approx(1.0)
    clock.advance(3.0)
    again = store.take(["k"], spec, [1], max_wait=10, hold="c", grace=0.5)
    assert again  # the bucket refilled meanwhile; a fresh take
    assert store.level("k") == pytest.approx(0.0)


def test_beyond_max_wait_nothing_is_reserved() -> None:
    clock = ManualClock()
    store = MemoryBuckets(clock)
    spec = [BucketSpec(capacity=2, rate=0.1)]
    assert store.take(["k"], spec, [2], max_wait=0)
    refused = store.take(["k"], spec, [1], max_wait=5, hold="x")
    assert not refused and not refused.reserved and refused.wait == pytest.approx(10.0)
    assert store.level("k") == pytest.approx(0.0)  # nothing debited


def test_a_request_larger_than_the_burst_goes_when_the_window_is_full_and_borrows() -> None:
    clock = ManualClock()
    store = MemoryBuckets(clock)
    spec = [BucketSpec(capacity=100, rate=10.0)]
    assert store.take(["k"], spec, [250], max_wait=0)
    assert store.level("k") == pytest.approx(-150)
    nxt = store.take(["k"], spec, [10], max_wait=0)
    assert not nxt and nxt.wait == pytest.approx(16.0)  # the debt, then its own 10


def test_settle_gives_back_charges_and_learns() -> None:
    clock = ManualClock()
    store = MemoryBuckets(clock)
    spec = [BucketSpec(capacity=1000, rate=10.0)]
    assert store.take(["k"], spec, [600])
    store.settle(["k"], spec, [400.0], [None])  # used 200 of 600
    assert store.level("k") == pytest.approx(800)
    store.settle(["k"], spec, [-300.0], [None])  # used 300 more than reserved
    assert store.level("k") == pytest.approx(500)
    store.settle(["k"], spec, [10_000.0], [None])  # never above the capacity
    assert store.level("k") == pytest.approx(1000)
    # The provider says: only 50 left, and a tighter shape.
    store.settle(["k"], spec, [0.0], [Learned(BucketSpec(capacity=100, rate=1.0), 50)])
    assert store.level("k") == pytest.approx(50)
    clock.advance(1000)
    assert store.take(["k"], spec, [0]).tokens == pytest.approx(100)  # learned capacity
    assert store.take(["k"], spec, [100])
    refused = store.take(["k"], spec, [10])
    assert refused.wait == pytest.approx(10.0)  # the learned rate: 1 a second


@pytest.fixture
def redis_store(redis_db: int) -> Iterator[RedisBuckets]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    yield RedisBuckets(client)


def test_redis_windows_behave_like_the_memory_ones(redis_store: RedisBuckets) -> None:
    """The same steps in Redis and in memory give the same answers (Redis' clock moves a
    little between steps, hence the tolerances)."""
    specs = [BucketSpec(capacity=5, rate=1.0), BucketSpec(capacity=1000, rate=100.0)]
    keys = ["aiw:admission:test:requests", "aiw:admission:test:tokens"]
    for _ in range(5):
        assert redis_store.take(keys, specs, [1, 100], max_wait=0)
    refused = redis_store.take(keys, specs, [1, 100], max_wait=0)
    assert not refused and not refused.reserved and refused.wait == pytest.approx(1.0, abs=0.05)
    held = redis_store.take(keys, specs, [1, 100], max_wait=30, hold="aiw:admission:hold:j1")
    assert not held and held.reserved and held.wait == pytest.approx(1.0, abs=0.05)
    second = redis_store.take(keys, specs, [1, 100], max_wait=30, hold="aiw:admission:hold:j2")
    assert second.wait == pytest.approx(2.0, abs=0.05)  # queued behind j1
    early = redis_store.take(keys, specs, [1, 100], max_wait=30, hold="aiw:admission:hold:j1")
    assert early.reserved and early.wait == pytest.approx(1.0, abs=0.05)
    redis_store.settle(keys, specs, [0.0, 50.0], [None, Learned(None, 10)])
    client = redis_store._client
    assert float(client.hget(keys[1], "tokens")) <= 500 + 50 + 1  # future slots: no clamp
    assert 0 < client.pttl(keys[0]) < 10_000
    assert 0 < client.pttl("aiw:admission:hold:j2") < 70_000
    # Learned shape: kept in the hash, every take follows it.
    redis_store.settle(keys, specs, [0.0, 0.0], [Learned(BucketSpec(2, 0.5), None), None])
    assert float(client.hget(keys[0], "lcap")) == pytest.approx(2)


def test_unreachable_redis_admits_nothing() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                         retry=Retry(NoBackoff(), 0))  # fmt: skip
    grant = RedisBuckets(client).take(KEYS, [UNLIMITED_SPEC] * 2, [1, 1], max_wait=10)
    assert not grant and not grant.reserved and grant.wait > 0


def test_admit_and_settle_through_the_settings(redis_url: str) -> None:
    admission.reset_admission()
    settings = load_settings(
        redis_url=redis_url, aiw_rate_limits="openai=10rpm,1000tpm;openai:tiny=2rpm",
        aiw_rate_window=60, aiw_rate_burst=0.5, aiw_rate_margin=0,
    )  # fmt: skip
    try:
        a = admission.admit("openai:d:m", "openai", "m", "j1", 400, settings, max_wait=0)
        assert a.wait == 0 and a.checked
        b = admission.admit("openai:d:m", "openai", "m", "j2", 400, settings, max_wait=0)
        assert b.wait > 0 and not b.held  # 500 tokens of burst: the second waits
        admission.settle(a, settings, used_tokens=100)  # 300 back
        c = admission.admit("openai:d:m", "openai", "m", "j3", 400, settings, max_wait=0)
        assert c.wait == 0
        # A model's own entry: 2 rpm, burst 1; tokens unlimited.
        assert admission.admit("openai:d:tiny", "openai", "tiny", "j4", 10**6, settings,
                               max_wait=0).wait == 0  # fmt: skip
        d = admission.admit("openai:d:tiny", "openai", "tiny", "j5", 1, settings, max_wait=100)
        assert d.held and d.wait == pytest.approx(60, abs=1)
        assert "rate window of openai tiny" in d.detail() and "slot is reserved" in d.detail()
    finally:
        admission.reset_admission()


def test_nothing_configured_and_not_learning_checks_nothing() -> None:
    settings = load_settings(aiw_rate_learn=False)
    ticket = admission.admit("openai:d:m", "openai", "m", "j", 10, settings, max_wait=0)
    assert ticket.wait == 0 and not ticket.checked
    admission.settle(ticket, settings, used_tokens=5)  # nothing to settle
    # A provider that sends no x-ratelimit-* headers has nothing to learn from.
    other = admission.admit("flaky:d", "flaky", None, "j", 10, load_settings(), max_wait=0)
    assert not other.checked


def test_learning_alone_costs_nothing_until_an_answer_nears_the_limit() -> None:
    """No limit configured: far from the provider's limit nothing is reserved nor
    written (no Redis round trip per call); an answer with less than half left starts
    the shared window, and the next admissions reserve from it."""
    admission.reset_admission()
    settings = load_settings()
    store = admission.get_buckets(settings)
    assert isinstance(store, MemoryBuckets)
    plenty = {"limit_requests": 100, "remaining_requests": 90}
    try:
        a = admission.admit("openai:d:m", "openai", "m", "j1", 10, settings, max_wait=0)
        assert a.wait == 0 and a.learn_only and not a.checked
        admission.settle(a, settings, used_tokens=5, rate_limit=plenty)
        assert not store.known(a.keys[0]) and not store.known(a.keys[1])
        low = {"limit_requests": 100, "remaining_requests": 10}
        admission.settle(a, settings, used_tokens=5, rate_limit=low)
        assert store.known(a.keys[0])
        b = admission.admit("openai:d:m", "openai", "m", "j2", 10, settings, max_wait=0)
        assert b.checked and b.learn_only  # reserved from the learned window now
    finally:
        admission.reset_admission()


def test_learned_limits_from_the_headers() -> None:
    settings = load_settings(aiw_rate_window=6, aiw_rate_margin=0)
    req, tok = admission.learned(
        {"limit_requests": 60, "remaining_requests": 7, "limit_tokens": 20000,
         "remaining_tokens": 0, "reset_tokens": "1s"}, settings,
    )  # fmt: skip
    assert req is not None and req.remaining == 7 and req.spec is not None
    assert req.spec.capacity == 6 and req.spec.rate == pytest.approx(9.0)
    assert tok is not None and tok.remaining == 0
    assert admission.learned({}, settings) == (None, None)
    off = load_settings(aiw_rate_learn=False)
    assert admission.learned({"limit_requests": 5}, off) == (None, None)


def test_estimate() -> None:
    assert admission.estimate_tokens(400, 1, 50) == 100 + 4 + 50
    assert admission.estimate_tokens(0, 2, None) == 8 + admission.TYPICAL_ANSWER_TOKENS


def test_rate_limits_syntax() -> None:
    assert parse_rate_limits("") == {}
    assert parse_rate_limits(" openai = 500rpm , 200000TPM ; openai:gpt-4o-mini=60rpm ;") == {
        "openai": (500, 200000),
        "openai:gpt-4o-mini": (60, None),
    }
    bad = {
        "openai": "write <provider>",
        "openai=": "write <provider>",
        "codegen=10rpm": "unknown provider 'codegen'",
        "openai:=5rpm": "empty model name",
        "openai=5rpm;openai=6rpm": "given twice",
        "openai=5rpm,6rpm": "rpm is given twice",
        "openai=5rps": "not <n>rpm or <n>tpm",
        "openai=0rpm": "at least 1",
        "openai=-5rpm": "not <n>rpm",
    }
    for value, problem in bad.items():
        with pytest.raises(ValueError, match=problem):
            parse_rate_limits(value)
    with pytest.raises(ConfigError, match=r"AIW_RATE_LIMITS: .*unknown provider"):
        load_settings(aiw_rate_limits="nope=1rpm")


def test_learned_limits_outlive_a_quiet_spell_in_redis(redis_store: RedisBuckets) -> None:
    keys = ["aiw:admission:quiet:requests"]
    redis_store.settle(keys, [UNLIMITED_SPEC], [0.0], [Learned(BucketSpec(3, 1.0), None)])
    client = redis_store._client
    assert client.pttl(keys[0]) > 3_000_000  # an hour, not the seconds it takes to refill
    for _ in range(3):
        assert redis_store.take(keys, [UNLIMITED_SPEC], [1])
    refused = redis_store.take(keys, [UNLIMITED_SPEC], [1])
    assert not refused and refused.wait == pytest.approx(1.0, abs=0.05)  # the learned shape
    assert client.pttl(keys[0]) > 3_000_000
