"""Fidelity in the stretches of a run that the hypervisor left alone.

On a virtual machine the host may run other guests on this guest's cores ("steal" in
/proc/stat). While it does, every process here waits, simulator and client alike, and first
tokens are measured late by however long the vCPU was away. Steal comes in bursts, so a run's
fidelity p99 can be missed because of a few bad seconds. Bench samples steal once a second
(`monitor.ProcessMonitor`); this module takes the requests whose first token was due in a
second with almost no steal and gives their fidelity on its own, so a report can say what
the tool did when the machine was its own.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import Any

from llmsim.bench.request_log import Request

QUIET_BELOW_CORES = 0.05  # a second counts as quiet when the host took less than this


def _pct(values: list[float], q: float) -> float:
    return values[max(0, math.ceil(len(values) * q) - 1)]


def quiet_fidelity(
    requests: Iterable[Request],
    series: Sequence[tuple[float, float]],
    below_cores: float = QUIET_BELOW_CORES,
) -> dict[str, Any] | None:
    """Fidelity (measured minus planned TTFT, ms) of the successful requests whose first token
    was due in a sampling interval where steal stayed under `below_cores`.

    `series` is (epoch seconds at the end of an interval, cores stolen during it), in time
    order. None when there is no series or no such request."""
    if len(series) < 2:
        return None
    ends = [t for t, _ in series]
    errors: list[float] = []
    quiet_intervals: set[int] = set()
    for r in requests:
        if not r.ok or r.ttft_ms is None or r.planned_ttft_ms is None:
            continue
        due = (r.scheduled if r.scheduled is not None else r.start) + r.planned_ttft_ms / 1000
        i = bisect.bisect_left(ends, due)
        if i == 0 or i >= len(series):  # before the first interval or after the last
            continue
        if series[i][1] < below_cores:
            errors.append(r.ttft_ms - r.planned_ttft_ms)
            quiet_intervals.add(i)
    if not errors:
        return None
    errors.sort()
    quiet_s = sum(series[i][0] - series[i - 1][0] for i in quiet_intervals)
    return {
        "below_cores": below_cores,
        "seconds": round(quiet_s, 1),
        "count": len(errors),
        "p50": round(_pct(errors, 0.5), 3),
        "p99": round(_pct(errors, 0.99), 3),
    }
