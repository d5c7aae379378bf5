"""The LLM figures over time for the web UI's charts: percentiles of recent requests.

Every `STEP_S` the master snapshots its merged histograms (TTFT, ITL, schedule lag) and token
and request counts; a point of the series is the difference between now and `WINDOW_STEPS`
snapshots ago, so its percentiles are those of the last few seconds, not of the whole run
(workers report every 3 s, so a window shorter than that would jump).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from llmsim.load.histogram import percentile_from_counts
from llmsim.load.metrics import LLMMetrics

STEP_S = 2.0
WINDOW_STEPS = 3  # 6 s
MAX_POINTS = 3600  # two hours at STEP_S
TRACKED = ("ttft_ms", "itl_ms", "schedule_lag_ms")


def _diff(now: dict[float, int], then: dict[float, int]) -> tuple[dict[float, int], int]:
    out = {k: n - then.get(k, 0) for k, n in now.items() if n - then.get(k, 0) > 0}
    return out, sum(out.values())


class Timeline:
    """Bounded series of points {t, ttft_p50/95, itl_p50/95, lag_p50/95, out_tps, rps, ...}."""

    def __init__(self) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=MAX_POINTS)
        self._snaps: deque[tuple[float, dict[str, dict[float, int]], int, int]] = deque(
            maxlen=WINDOW_STEPS + 1
        )

    def reset(self) -> None:
        """Drop every point and snapshot, so a new run's charts start empty."""
        self.points.clear()
        self._snaps.clear()

    def metrics_reset(self) -> None:
        """The metrics were zeroed mid-run (the web UI's reset, --reset-stats): keep the points
        drawn so far but forget the snapshots, whose counts the new ones would be diffed against
        (that gave negative rates and dropped percentiles for one window)."""
        self._snaps.clear()

    def sample(self, m: LLMMetrics, users: int, now: float | None = None) -> None:
        """Snapshot `m` and append the point for the last window."""
        now = time.time() if now is None else now
        if self._snaps and m.requests < self._snaps[-1][2]:
            self._snaps.clear()  # counts went down: reset without a call to metrics_reset
        snap = {name: dict(m.hist[name].counts) for name in TRACKED}
        self._snaps.append((now, snap, m.requests, m.output_tokens))
        t0, old, req0, out0 = self._snaps[0]
        point: dict[str, Any] = {"t": round(now, 3), "users": users, "in_flight": 0}
        point["in_flight"] = m.total_in_flight()
        span = now - t0
        for name in TRACKED:
            counts, total = _diff(snap[name], old[name])
            key = {"schedule_lag_ms": "lag"}.get(name, name.removesuffix("_ms"))
            for pct in (50, 95):
                v = percentile_from_counts(counts, total, pct, None, None)
                point[f"{key}_p{pct}"] = None if v is None else round(v, 2)
        point["rps"] = round((m.requests - req0) / span, 3) if span > 0 else None
        point["out_tps"] = round((m.output_tokens - out0) / span, 1) if span > 0 else None
        self.points.append(point)

    def since(self, t: float) -> list[dict[str, Any]]:
        """Points after time `t` (the page asks for what it has not seen)."""
        return [p for p in self.points if p["t"] > t]
