"""CPU and memory of bench's own child processes, sampled while the run goes on.

Recorded in summary.json because a load generator that is out of CPU measures itself, not the
target: the report must show it, not leave it to a warning scrolled out of the terminal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psutil


@dataclass
class _Track:
    role: str
    proc: psutil.Process
    cpu_samples: list[float] = field(default_factory=list)
    rss_peak: int = 0
    cpu_start: float | None = None
    wall_start: float | None = None
    cpu_end: float | None = None
    wall_end: float | None = None


MAX_SAMPLES = 200_000  # of the interference series, one a second: two days and more


class ProcessMonitor:
    """Samples each tracked process and its descendants (forked workers) once per `sample()`."""

    def __init__(self) -> None:
        self.tracks: dict[int, _Track] = {}
        self._roots: list[tuple[str, int]] = []
        self.total_rss_peak = 0
        # Machine-wide busy CPU over the same span, and the part of it the hypervisor took
        # (steal): what else ran skews every figure.
        self._machine: list[tuple[float, float, float]] = []
        # (epoch at the end of each sampling interval, cores the hypervisor took during it,
        # cores other processes used): both come in bursts, and the report shows the fidelity
        # of the seconds without them (bench/interference.py).
        self.interference: list[tuple[float, float, float]] = []
        self._last_point: tuple[float, float, float] | None = None

    def watch(self, role: str, pid: int) -> None:
        """Track `pid` as `role` (simulator, recorder, locust, bench) with the children it has
        so far; children forked later are found by each `sample()`."""
        self._roots.append((role, pid))
        self._discover()

    def _discover(self) -> None:
        for role, pid in self._roots:
            try:
                root = psutil.Process(pid)
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for i, proc in enumerate(family):
                if proc.pid not in self.tracks:
                    name = role if i == 0 else f"{role} child"
                    self.tracks[proc.pid] = _Track(name, proc)

    def sample(self) -> None:
        """Record each tracked process's CPU since the last call (% of one core) and RSS, the
        machine's busy and stolen CPU, and one point of `interference` (at most MAX_SAMPLES).
        bench calls it about once a second."""
        self._discover()
        now = time.monotonic()
        total = 0
        ours = 0.0  # CPU seconds our processes used since the last sample
        for track in self.tracks.values():
            try:
                with track.proc.oneshot():
                    cpu = track.proc.cpu_times()
                    rss = track.proc.memory_info().rss
            except psutil.Error:
                continue
            used = cpu.user + cpu.system
            if track.cpu_start is None:
                track.cpu_start, track.wall_start = used, now
            elif track.cpu_end is not None and track.wall_end is not None and now > track.wall_end:
                track.cpu_samples.append(100.0 * (used - track.cpu_end) / (now - track.wall_end))
                ours += used - track.cpu_end
            track.cpu_end, track.wall_end = used, now
            track.rss_peak = max(track.rss_peak, rss)
            total += rss
        self.total_rss_peak = max(self.total_rss_peak, total)
        times = psutil.cpu_times()
        busy = sum(
            getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")
        )
        point = (now, busy, getattr(times, "steal", 0.0))
        last = self._last_point
        if last is not None and now > last[0] and len(self.interference) < MAX_SAMPLES:
            dt = now - last[0]
            stolen = max(0.0, (point[2] - last[2]) / dt)
            others = max(0.0, (busy - last[1] - ours) / dt - stolen)
            self.interference.append((time.time(), round(stolen, 3), round(others, 3)))
        self._last_point = point
        if len(self._machine) < 2:
            self._machine.append(point)
        else:
            self._machine[1] = point

    def sustained_cpu(self, role_prefix: str, window_s: float) -> float | None:
        """The highest CPU (% of a core) any `role_prefix` process averaged over the last
        `window_s` seconds of samples (one a second), or None before there are that many."""
        n = max(1, round(window_s))
        means = [
            sum(t.cpu_samples[-n:]) / n
            for t in self.tracks.values()
            if t.role.startswith(role_prefix) and len(t.cpu_samples) >= n
        ]
        return max(means) if means else None

    def summary(self) -> dict[str, Any]:
        """Per process: mean and peak CPU (% of one core) over the run, peak RSS in MB."""
        procs = []
        for pid, t in self.tracks.items():
            mean = None
            if t.cpu_start is not None and t.cpu_end is not None and t.wall_end and t.wall_start:
                span = t.wall_end - t.wall_start
                mean = round(100.0 * (t.cpu_end - t.cpu_start) / span, 1) if span > 0 else None
            procs.append(
                {
                    "role": t.role,
                    "pid": pid,
                    "cpu_percent_mean": mean,
                    "cpu_percent_max": round(max(t.cpu_samples), 1) if t.cpu_samples else None,
                    "rss_peak_mb": round(t.rss_peak / 2**20, 1),
                }
            )
        out: dict[str, Any] = {
            "processes": procs,
            "rss_peak_total_mb": round(self.total_rss_peak / 2**20, 1),
            "machine_cores": psutil.cpu_count(),
            "machine_busy_cores": None,
            "other_busy_cores": None,
            "stolen_cores": None,
        }
        if len(self._machine) == 2 and self._machine[1][0] > self._machine[0][0]:
            (t0, b0, s0), (t1, b1, s1) = self._machine
            busy = (b1 - b0) / (t1 - t0)
            # On a virtual machine the host may run its other guests on our cores ("steal"):
            # no process here used that time, but ours waited for it all the same.
            stolen = max(0.0, (s1 - s0) / (t1 - t0))
            ours = sum((p["cpu_percent_mean"] or 0) / 100 for p in procs)
            out["machine_busy_cores"] = round(busy, 2)
            out["other_busy_cores"] = round(max(0.0, busy - ours - stolen), 2)
            out["stolen_cores"] = round(stolen, 2)
        return out
