"""Bucketing and a mergeable histogram for latency-like values in milliseconds.

Locust rounds response times to about two significant digits (10 ms steps between 100 ms and
1 s), far too coarse for a 17 ms inter-token gap or a 123 ms TTFT. `bucket_ms` keeps 0.1 ms steps
below 100 ms and three significant digits above, so the bucket error is at most 0.05 ms or 0.5 %
from 0.1 ms to beyond 10 minutes, with about 900 keys per decade (small enough to ship).

Histograms are merged by adding counts, never by averaging percentiles, which is what makes
distributed runs exact up to the bucket error.
"""

from __future__ import annotations

import math
from collections import _count_elements  # type: ignore[attr-defined]
from collections.abc import Iterable, Mapping
from typing import Any

PERCENTILES = (50, 90, 95, 99)


def bucket_ms(value: float) -> float:
    """Round a duration in ms to its bucket key (sign-symmetric, so errors can be negative)."""
    if value < 0:
        return -bucket_ms(-value)
    if value < 100:
        return round(value, 1)
    if value < 1_000:
        return float(round(value))
    # 3 significant digits: 1234.5 -> 1230, 61234 -> 61200
    digits = 2 - math.floor(math.log10(value))
    return float(round(value, digits))


def bucket_response_time(response_time: float) -> float:
    """Drop-in replacement for `locust.stats.bucket_response_time` (see `install_bucketing`)."""
    # Locust also calls this with ints; the fast path keeps its cost close to the original.
    if 0 <= response_time < 100:
        return round(response_time, 1)
    return bucket_ms(response_time)


def percentile_from_counts(
    counts: Mapping[float, int], total: int, pct: float, lo: float | None, hi: float | None
) -> float | None:
    """Nearest-rank percentile of a bucketed distribution, clamped to the exact min and max."""
    if total <= 0 or not counts:
        return None
    rank = max(1, math.ceil(total * pct / 100.0))
    seen = 0
    for key in sorted(counts):
        seen += counts[key]
        if seen >= rank:
            value = key
            break
    else:  # counts summed to less than total: fall back to the largest bucket
        value = max(counts)
    # Buckets can sit just outside the exact extremes (e.g. min 16.96 in bucket 17.0).
    if lo is not None and value < lo:
        value = lo
    if hi is not None and value > hi:
        value = hi
    return value


class Histogram:
    """Bucketed counts plus exact count, sum, min and max."""

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[float, int] = {}
        self.count = 0
        self.total = 0.0
        self.min: float | None = None
        self.max: float | None = None

    def add(self, value: float) -> None:
        """Count one value in its bucket (bucket_ms); update the exact count, sum, min and max."""
        key = bucket_ms(value)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.count += 1
        self.total += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def add_many(self, values: Iterable[float]) -> None:
        """Add every value (one request's inter-token gaps: the per-token hot path)."""
        values = values if isinstance(values, list) else list(values)
        if not values:
            return
        lo, hi = min(values), max(values)
        if lo >= 0 and hi < 100:
            # All in the 0.1 ms range: bucket_ms inlined, counted by Counter's C helper.
            _count_elements(self.counts, [int(v * 10 + 0.5) / 10 for v in values])
        else:
            counts = self.counts
            for value in values:
                key = bucket_ms(value)
                counts[key] = counts.get(key, 0) + 1
        self.count += len(values)
        self.total += sum(values)
        if self.min is None or lo < self.min:
            self.min = lo
        if self.max is None or hi > self.max:
            self.max = hi

    def merge(self, other: Histogram) -> None:
        """Add `other`'s bucket counts, count, sum and extremes to this histogram."""
        self.merge_wire(other.to_wire())

    def percentile(self, pct: float) -> float | None:
        """Nearest-rank `pct` percentile (0 to 100), clamped to the exact min and max, or None."""
        return percentile_from_counts(self.counts, self.count, pct, self.min, self.max)

    @property
    def mean(self) -> float | None:
        """The exact mean of the values added (not of the buckets), or None when empty."""
        return self.total / self.count if self.count else None

    def summary(self, digits: int = 3) -> dict[str, Any]:
        """count, mean, min, max and p50/p90/p95/p99 (None when empty)."""

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, digits)

        out: dict[str, Any] = {"count": self.count, "mean": r(self.mean)}
        out["min"] = r(self.min)
        for p in PERCENTILES:
            out[f"p{p}"] = r(self.percentile(p))
        out["max"] = r(self.max)
        return out

    # Wire format: plain lists and numbers, so it travels through msgpack and JSON alike
    # (msgpack would keep float dict keys, JSON would not).
    def to_wire(self) -> list[Any]:
        """[(bucket key, count) pairs, count, sum, min, max]: what merge_wire and from_wire take."""
        return [list(self.counts.items()), self.count, self.total, self.min, self.max]

    def merge_wire(self, wire: list[Any]) -> None:
        """Add a histogram in wire format (another process's, or a worker's delta) to this one."""
        pairs, count, total, lo, hi = wire
        counts = self.counts
        for key, n in pairs:
            counts[key] = counts.get(key, 0) + n
        self.count += count
        self.total += total
        if lo is not None and (self.min is None or lo < self.min):
            self.min = lo
        if hi is not None and (self.max is None or hi > self.max):
            self.max = hi

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Histogram:
        """A new histogram holding what a wire-format list describes."""
        hist = cls()
        hist.merge_wire(wire)
        return hist


def install_bucketing() -> None:
    """Replace Locust's response-time rounding in this process (and in forks made after)."""
    import locust.stats

    locust.stats.bucket_response_time = bucket_response_time
