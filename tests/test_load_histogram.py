"""Bucketing accuracy and exact histogram merging (no Locust import: plain unit tests)."""

from __future__ import annotations

import math
import random

import msgpack
import pytest

from llmsim.load.histogram import Histogram, bucket_ms, bucket_response_time, percentile_from_counts
from llmsim.load.metrics import LLMMetrics, RequestRecord


def _exact_percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * pct / 100)) - 1]


def _allowed(v: float) -> float:
    # The bound: 1 % or 0.1 ms, whichever is larger (we aim for half of it).
    return max(0.1, abs(v) * 0.01)


def test_bucket_error_within_bound_from_0_1_ms_to_10_minutes():
    rng = random.Random(1)
    values = [10 ** rng.uniform(-1, math.log10(600_000)) for _ in range(200_000)]
    values += [0.1, 99.95, 99.99, 100.0, 999.5, 1000.0, 9999.5, 600_000.0]
    worst = max(abs(bucket_ms(v) - v) / _allowed(v) for v in values)
    assert worst <= 0.5 + 1e-9  # half the allowed error: 0.05 ms or 0.5 %


def test_bucket_is_sign_symmetric_and_locust_compatible():
    assert bucket_ms(-17.04) == -17.0
    assert bucket_ms(-1234.0) == -1230.0
    assert bucket_response_time(17) == 17
    assert bucket_response_time(16.96) == 17.0
    assert bucket_response_time(123.4) == 123.0
    assert bucket_response_time(61234) == 61200.0


def test_keys_stay_few():
    keys = {bucket_ms(10 ** (i / 2000)) for i in range(-2000, 11_600)}
    assert len(keys) < 5000  # about 900 per decade: cheap to ship from workers


@pytest.mark.parametrize("pct", [50, 90, 95, 99, 99.9])
def test_percentiles_within_bucket_error(pct):
    rng = random.Random(pct)
    values = [rng.lognormvariate(math.log(120), 0.6) for _ in range(20_000)]
    h = Histogram()
    h.add_many(values)
    exact = _exact_percentile(values, pct)
    assert abs(h.percentile(pct) - exact) <= _allowed(exact) / 2 + 1e-9
    assert h.count == len(values)
    assert h.min == min(values) and h.max == max(values)
    assert h.mean == pytest.approx(sum(values) / len(values))


def test_negative_values_percentiles():
    values = [-3.0, -1.0, 0.5, 2.0, 10.0]
    h = Histogram()
    h.add_many(values)
    assert h.percentile(50) == 0.5
    assert h.min == -3.0
    assert h.percentile(1) == -3.0


def test_merge_of_wire_deltas_is_exact():
    rng = random.Random(7)
    values = [rng.expovariate(1 / 40) for _ in range(30_000)]
    whole = Histogram()
    whole.add_many(values)
    merged = Histogram()
    parts = [Histogram() for _ in range(3)]
    for i, v in enumerate(values):
        parts[i % 3].add(v)
    for part in parts:  # through msgpack, as Locust ships worker reports
        wire = msgpack.loads(msgpack.dumps(part.to_wire()), strict_map_key=False)
        merged.merge_wire(wire)
    assert merged.counts == whole.counts
    assert merged.count == whole.count
    for p in (50, 90, 99):
        assert merged.percentile(p) == whole.percentile(p)


def test_empty():
    h = Histogram()
    assert h.percentile(50) is None
    assert h.summary()["p99"] is None
    assert percentile_from_counts({}, 0, 50, None, None) is None


def _record(i: int, ok: bool = True) -> RequestRecord:
    return RequestRecord(
        start_time=1000.0 + i * 0.1,
        end_time=1000.5 + i * 0.1,
        status="ok" if ok else "error",
        error_kind=None if ok else "http_500",
        ttft_ms=100 + i % 7,
        tpot_ms=17 + (i % 3) / 10,
        e2e_ms=400 + i,
        input_tokens=128,
        output_tokens=20,
        token_source="usage",
        output_tokens_per_s=50.0,
        planned_ttft_ms=100.0,
        name="x",
    )


def test_metrics_deltas_merge_to_the_single_process_figures():
    single = LLMMetrics(keep_rows=True)
    master = LLMMetrics(keep_rows=True)
    workers = [LLMMetrics(keep_rows=True) for _ in range(2)]
    for i in range(500):
        ok = i % 10 != 0
        single.record(_record(i, ok), [17.0, 16.9, 17.2])
        workers[i % 2].record(_record(i, ok), [17.0, 16.9, 17.2])
        if i % 97 == 0:  # reports at arbitrary points
            for w, wid in zip(workers, "ab", strict=True):
                delta = msgpack.loads(msgpack.dumps(w.take_delta()), strict_map_key=False)
                master.merge_delta(wid, delta)
    for w, wid in zip(workers, "ab", strict=True):
        master.merge_delta(wid, w.take_delta())
    assert master.requests == single.requests == 500
    assert master.failed == single.failed == 50
    assert master.errors == single.errors == {"http_500": 50}
    assert master.output_tokens == single.output_tokens
    assert master.per_second == single.per_second
    assert len(master.rows) == 500
    for name, h in single.hist.items():
        assert master.hist[name].counts == h.counts, name
        assert master.hist[name].summary() == h.summary(), name


def test_current_rates_wait_for_workers_only_on_a_master():
    """One process counts a second as soon as it is over; a master waits the workers' report
    interval, so its last seconds are not read as a drop in load."""
    local, master = LLMMetrics(), LLMMetrics()
    worker = LLMMetrics()
    for i in range(20):  # 20 requests ending in seconds 1000-1002
        local.record(_record(i))
        worker.record(_record(i))
    master.merge_delta("w1", worker.take_delta())
    now = 1004.2  # the second after the last of them ended is over
    assert local.current_rates(now)["requests_per_s"] == 2.0  # 20 over the 10 s window
    assert master.current_rates(now)["requests_per_s"] == 0.0  # not yet: workers lag
    assert master.current_rates(now + 3)["requests_per_s"] == 2.0


def test_timeline_after_a_stats_reset_starts_its_window_afresh():
    """The web UI's reset (and --reset-stats) zero the metrics mid-run; the chart's next point
    must not diff the new counts against the old snapshots (negative req/s, no percentiles)."""
    from llmsim.load.timeline import Timeline

    m, tl = LLMMetrics(), Timeline()
    for step in range(4):  # 10 requests per 2 s step
        for i in range(10):
            m.record(_record(step * 10 + i), [17.0])
        tl.sample(m, users=5, now=1000.0 + 2 * step)
    assert tl.points[-1]["rps"] == 5.0
    m.reset()
    tl.metrics_reset()
    for i in range(4):
        m.record(_record(i), [17.0])
    tl.sample(m, users=5, now=1008.0)
    tl.sample(m, users=5, now=1010.0)
    after = list(tl.points)[-2:]
    assert len(tl.points) == 6  # the points drawn before the reset stay on the chart
    assert after[0]["rps"] is None  # one snapshot: no window yet
    assert after[1]["rps"] == 0.0 and after[1]["ttft_p50"] is None  # nothing new since
    # A reset the timeline was not told about is caught by the counts going down.
    m.reset()
    tl.sample(m, users=5, now=1012.0)
    assert tl.points[-1]["rps"] is None
    assert all(p["rps"] is None or p["rps"] >= 0 for p in tl.points)


_SAMPLES_SCRIPT = """
import json, types
from llmsim.load import runtime as rt_mod

clock = {"now": 1000.3}
runner = types.SimpleNamespace(user_count=1)  # one user spawned per second from 1000.3
env = types.SimpleNamespace(runner=runner, user_classes=[], host="http://h/v1")

class Done(Exception):
    pass

def sleep(seconds):
    if clock["now"] >= 1003.0:
        raise Done  # end the sampler after its wake-up at 1003.0
    clock["now"] += seconds
    runner.user_count = min(3, int(clock["now"] - 1000.3) + 1)

rt_mod.time = types.SimpleNamespace(time=lambda: clock["now"])
rt_mod.gevent.sleep = sleep
rt = rt_mod.LLMRuntime(env)
rt.start_time = 1000.3
try:
    rt._sample_loop()  # wakes at 1001.0, 1002.0 and 1003.0 (3 users from 1002.3)
except Done:
    pass
clock["now"], runner.user_count = 1003.2, 0  # test stop: the users are gone
rt._sample()
rt.end_time = 1003.2
doc = rt.summary()
print(json.dumps({"max": doc["users"]["max"], "t": doc["series"]["t"],
                  "users": doc["series"]["users"]}))
"""


def test_per_second_samples_are_each_seconds_end_and_survive_the_stop():
    """llm_metrics.json's users and in-flight per second: the state at the end of each second
    (as its requests are those completed in it), and the last sample at test stop, when every
    user has stopped, must not erase the peak of its second (users_peak said 9 of 10).

    In a subprocess: the runtime imports Locust, whose gevent patching has no place in the
    pytest process (threads in later tests became greenlets and ran one at a time)."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _SAMPLES_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["max"] == 3
    assert doc["t"] == [1000, 1001, 1002, 1003]
    assert doc["users"] == [1, 2, 3, 0]
