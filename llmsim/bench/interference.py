"""Fidelity in the stretches of a run that nothing else took CPU from.

Two things outside the run take CPU in bursts: on a virtual machine the host running other
guests on this guest's cores ("steal" in /proc/stat: no process here used that time, every
process here waited through it), and other processes on the machine. A first token due while
either holds the CPU is measured that much late, so a few bad seconds can carry a run's
fidelity p99. Bench samples both once a second (`monitor.ProcessMonitor.interference`); this
module takes the requests whose first token was due in a second when neither took more than a
sliver and gives their fidelity on its own, so a report can say what the tool did when the
machine was its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

from llmsim.bench.request_log import Request
from llmsim.load.histogram import Histogram

# A second counts as quiet when the hypervisor took less than this and other processes used
# less than that (ours are sampled a few ms apart from the machine's counters: ~0.05 of noise).
QUIET_STEAL_CORES = 0.05
QUIET_OTHER_CORES = 0.1


def quiet_fidelity(
    requests: Iterable[Request], series: Sequence[tuple[float, float, float]]
) -> dict[str, Any] | None:
    """Fidelity (measured minus planned TTFT, ms: count, mean, min, percentiles, max, as the
    run's own) of the successful requests whose first token was due in a sampling interval
    with steal under QUIET_STEAL_CORES and other processes under QUIET_OTHER_CORES.

    `series` is (epoch seconds at the end of an interval, cores stolen, cores used by other
    processes), in time order. None when there is no series or no such request."""
    if len(series) < 2:
        return None
    ends = [t for t, _, _ in series]
    errors = Histogram()  # as the run's own fidelity is summarised, for the same percentiles
    quiet_intervals: set[int] = set()
    for r in requests:
        if not r.ok or r.ttft_ms is None or r.planned_ttft_ms is None:
            continue
        due = (r.scheduled if r.scheduled is not None else r.start) + r.planned_ttft_ms / 1000
        i = bisect.bisect_left(ends, due)
        if i == 0 or i >= len(series):  # before the first interval or after the last
            continue
        _, stolen, others = series[i]
        if stolen < QUIET_STEAL_CORES and others < QUIET_OTHER_CORES:
            errors.add(r.ttft_ms - r.planned_ttft_ms)
            quiet_intervals.add(i)
    if not errors.count:
        return None
    quiet_s = sum(series[i][0] - series[i - 1][0] for i in quiet_intervals)
    return {
        "steal_below_cores": QUIET_STEAL_CORES,
        "others_below_cores": QUIET_OTHER_CORES,
        "seconds": round(quiet_s, 1),
        **errors.summary(),
    }
