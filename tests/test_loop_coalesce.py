"""The stream loop's coalescing window (`--coalesce-ms`), on a fake clock.

Under load the loop waits longer between sweeps (the window grows with the event rate), so
events due close together leave in one sweep; an idle loop stays exact. The loop is driven the
way the hub would drive it: the clock advances in small steps and a handler's `catch_up` (or
the timer, at `_arm`'s target) sweeps whatever is due.
"""

from __future__ import annotations

from llmsim.engine.loop import MIN_SWEEP_S, StreamLoop

STEP_S = 0.00005  # the fake clock's resolution: 50 µs


class Ticker:
    """A loop entry due every `period` seconds (a paced stream), recording how late it fired."""

    def __init__(self, period: float, until: float) -> None:
        self.period = period
        self.until = until
        self.late: list[float] = []

    def fire(self, deadline: float, now: float) -> float | None:
        self.late.append(now - deadline)
        nxt = deadline + self.period
        return nxt if nxt < self.until else None


def _run(coalesce_s: float, streams: int, duration: float, period: float = 0.02):
    now = [0.0]
    loop = StreamLoop(clock=lambda: now[0], coalesce_s=coalesce_s)
    tickers = [Ticker(period, duration) for _ in range(streams)]
    for i, t in enumerate(tickers):  # spread over the period, as arrivals are
        loop.add(t, period * i / streams)
    sweeps_before = None
    while now[0] < duration + period:
        now[0] += STEP_S
        loop.catch_up()
        if sweeps_before is None and now[0] >= duration / 2:
            sweeps_before = (loop.sweeps, now[0])  # the second half: the rate has settled
    n0, t0 = sweeps_before
    sweeps_per_s = (loop.sweeps - n0) / (now[0] - t0)
    late = [x for t in tickers for x in t.late]
    return loop, sweeps_per_s, late


def test_a_busy_loop_widens_its_window_and_sweeps_less_often():
    # 800 streams at 20 ms: 40,000 events a second, twice COALESCE_FULL_RATE.
    loop, sweeps_per_s, late = _run(0.002, 800, 1.0)
    assert loop.window == 0.002
    assert 30_000 < loop.rate < 50_000
    assert sweeps_per_s < 1.0 / 0.002 + 50  # about one sweep a window, not one per event
    # No event waits longer than the window (plus the clock's step); none leaves early.
    assert max(late) <= 0.002 + 2 * STEP_S
    assert min(late) >= -0.0001


def test_without_a_window_the_same_load_is_swept_every_quarter_millisecond():
    loop, sweeps_per_s, late = _run(0.0, 800, 1.0)
    assert loop.window == MIN_SWEEP_S
    assert sweeps_per_s > 0.8 / MIN_SWEEP_S  # ~4,000 sweeps a second
    assert max(late) <= MIN_SWEEP_S + 2 * STEP_S


def test_a_light_load_keeps_the_smallest_window():
    # 20 streams at 20 ms: 1,000 events a second, 5 % of the full rate.
    loop, _, late = _run(0.002, 20, 1.0)
    assert loop.window == MIN_SWEEP_S
    assert max(late) <= MIN_SWEEP_S + 2 * STEP_S


def test_the_window_scales_with_the_rate_between_the_bounds():
    # 200 streams at 20 ms: 10,000 events a second, half the full rate: half the window.
    loop, _, late = _run(0.002, 200, 1.0)
    assert 0.0008 < loop.window < 0.0012
    assert max(late) <= loop.window + 2 * STEP_S


def test_an_idle_loop_sends_its_next_event_on_time_after_a_busy_spell():
    now = [0.0]
    loop = StreamLoop(clock=lambda: now[0], coalesce_s=0.002)
    tickers = [Ticker(0.02, 0.5) for _ in range(800)]
    for i, t in enumerate(tickers):
        loop.add(t, 0.02 * i / 800)
    while now[0] < 0.6:
        now[0] += STEP_S
        loop.catch_up()
    assert loop.window == 0.002 and len(loop) == 0
    now[0] = 3.0  # idle for seconds, then one request
    lone = Ticker(1.0, 3.01)
    loop.add(lone, 3.001)
    while now[0] < 3.01:
        now[0] += STEP_S
        loop.catch_up()
    assert lone.late and lone.late[0] <= STEP_S + 1e-9
