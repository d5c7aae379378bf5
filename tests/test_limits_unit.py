"""Rate limiter, fault injector and capacity pool on their own (no server)."""

from __future__ import annotations

import random

import gevent
import pytest

from llmsim.engine import limits
from llmsim.engine.capacity import CapacityPool, QueueFull
from llmsim.engine.faults import FaultInjector, load_fault_script, parse_fault_rates
from llmsim.engine.limits import RateLimiter, openai_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(limits.time, "monotonic", c)
    return c


def test_burst_is_the_whole_minute_then_refused(clock):
    rl = RateLimiter(slots=64)
    for i in range(5):
        d = rl.check("k", "m", 10, rpm=5, tpm=None)
        assert d.allowed
        assert d.headers["x-ratelimit-remaining-requests"] == str(4 - i)
    d = rl.check("k", "m", 10, rpm=5, tpm=None)
    assert not d.allowed and d.kind == "requests"
    assert d.retry_after_s == pytest.approx(12.0)  # one request back every 60/5 s
    assert d.headers["retry-after"] == "12" and d.headers["retry-after-ms"] == "12000"
    assert d.headers["x-ratelimit-reset-requests"] == "1m0s"


def test_refills_continuously_at_the_configured_rate(clock):
    rl = RateLimiter(slots=64)
    for _ in range(60):
        assert rl.check("k", "m", 1, rpm=60, tpm=None).allowed
    assert not rl.check("k", "m", 1, rpm=60, tpm=None).allowed
    clock.now += 0.5
    assert not rl.check("k", "m", 1, rpm=60, tpm=None).allowed
    clock.now += 0.5
    assert rl.check("k", "m", 1, rpm=60, tpm=None).allowed  # 1 per second
    clock.now += 10
    admitted = sum(rl.check("k", "m", 1, rpm=60, tpm=None).allowed for _ in range(20))
    assert admitted == 10


def test_tokens_per_minute_counts_the_request_cost(clock):
    rl = RateLimiter(slots=64)
    assert rl.check("k", "m", 600, rpm=None, tpm=1000).allowed
    d = rl.check("k", "m", 600, rpm=None, tpm=1000)
    assert not d.allowed and d.kind == "tokens" and d.requested == 600
    assert d.headers["x-ratelimit-remaining-tokens"] == "400"
    assert d.retry_after_s == pytest.approx(12.0)  # 200 more tokens at 1000/min
    too_big = rl.check("k2", "m", 5000, rpm=None, tpm=1000)
    assert not too_big.allowed and too_big.too_large


def test_keys_and_models_have_their_own_buckets(clock):
    rl = RateLimiter(slots=64)
    assert rl.check("a", "m", 1, rpm=1, tpm=None).allowed
    assert not rl.check("a", "m", 1, rpm=1, tpm=None).allowed
    assert rl.check("b", "m", 1, rpm=1, tpm=None).allowed
    assert rl.check("a", "other", 1, rpm=1, tpm=None).allowed


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.12, "120ms"), (0, "0ms"), (1, "1s"), (8.64, "8.64s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_openai_duration_format(seconds, text):
    assert openai_duration(seconds) == text


def test_fault_rates_parse_and_validate():
    assert parse_fault_rates(["500=0.05", "drop=2%", "500=0.05"]) == {"500": 0.1, "drop": 0.02}
    for bad, msg in [
        (["500"], "expected KIND=RATE"),
        (["418=0.1"], "unknown fault kind"),
        (["500=lots"], "not a number"),
        (["500=1.5"], "between 0 and 1"),
        (["500=0.6", "503=0.6"], "more than 1"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_fault_rates(bad)


def test_fault_rates_are_honest():
    inj = FaultInjector({"500": 0.1, "drop": 0.05}, [], random.Random(7))
    kinds = [inj.decide("m", "k") for _ in range(10_000)]
    # Binomial: mean 1000, sd 30 and mean 500, sd 22; bounds at about 5 sd.
    assert 850 < kinds.count("500") < 1150
    assert 390 < kinds.count("drop") < 610


def test_fault_script_plays_per_key(tmp_path):
    p = tmp_path / "faults.yaml"
    p.write_text("- sequence: [503, 503, 503, ok]\n  model: gpt-4o\n- sequence: [500, ok]\n"
                 "  repeat: true\n  key: flaky\n")  # fmt: skip
    inj = FaultInjector({}, load_fault_script(p), random.Random())
    assert [inj.decide("gpt-4o", "a") for _ in range(5)] == ["503", "503", "503", None, None]
    assert inj.decide("gpt-4o", "b") == "503"  # each key plays its own sequence
    assert [inj.decide("other", "flaky") for _ in range(4)] == ["500", None, "500", None]
    assert inj.decide("other", "a") is None
    assert inj.decide("gpt-4o", "c", forced="drop") == "drop"
    with pytest.raises(ValueError):
        inj.decide("m", "k", forced="explode")


@pytest.mark.parametrize(
    ("text", "msg"),
    [("- sequence: [418]\n", "unknown step"), ("{a: 1}\n", "list of rules"),
     ("- sequence: [ok]\n  when: now\n", "unknown key")],
)  # fmt: skip
def test_bad_fault_scripts(tmp_path, text, msg):
    p = tmp_path / "f.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
        load_fault_script(p)


def test_capacity_pool_queues_in_order_and_hands_slots_over():
    pool = CapacityPool(limit=2, queue_limit=2, load_factor=1.0)
    a, b = pool.reserve(), pool.reserve()
    assert a.running and b.running and pool.running == 2
    assert pool.tbt_factor() == 2.0
    c, d = pool.reserve(), pool.reserve()
    assert not c.running and pool.waiting == 2
    with pytest.raises(QueueFull):
        pool.reserve()
    order = []
    g1 = gevent.spawn(lambda: (c.wait(), order.append("c")))
    g2 = gevent.spawn(lambda: (d.wait(), order.append("d")))
    gevent.sleep(0.01)
    assert order == []
    a.release()
    gevent.sleep(0.01)
    assert order == ["c"] and pool.running == 2 and pool.waiting == 1
    d.release()  # gave up while queued
    assert pool.waiting == 0
    b.release()
    c.release()
    assert pool.running == 0
    g2.kill()
    g1.join()
