"""One pass over requests.csv: per-second series and exact distributions, in bounded memory.

requests.csv can hold millions of rows (a fast target for an hour), so rows are streamed and
folded into per-second bins and bucketed histograms, never kept.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmsim.load.histogram import Histogram

# requests.csv column -> the names it may also go by, so a renamed column costs nothing.
_ALIASES = {
    "start_time": ("start_time", "start", "started_at"),
    "end_time": ("end_time", "end", "ended_at"),
    "status": ("status",),
    "error_kind": ("error_kind", "error", "error kind"),
    "ttft_ms": ("ttft_ms",),
    "tpot_ms": ("tpot_ms",),
    "e2e_ms": ("e2e_ms",),
    "input_tokens": ("input_tokens",),
    "output_tokens": ("output_tokens",),
    "planned_ttft_ms": ("planned_ttft_ms",),
    "name": ("name",),
    "scheduled_time": ("scheduled_time",),
    "schedule_lag_ms": ("schedule_lag_ms",),
}


def _num(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class Request:
    """One row of requests.csv: start and end in epoch seconds, latencies in ms."""

    start: float
    end: float
    ok: bool
    error_kind: str | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    input_tokens: int
    output_tokens: int
    planned_ttft_ms: float | None
    name: str = ""
    scheduled: float | None = None  # open loop: when it was due (latencies count from it)
    schedule_lag_ms: float | None = None


def read_requests(path: Path) -> Iterator[Request]:
    """Stream requests.csv row by row, columns found by their aliases. Rows without a start
    are skipped; a missing end is start plus E2E."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = {
            name: next((a for a in aliases if a in (reader.fieldnames or ())), None)
            for name, aliases in _ALIASES.items()
        }

        def get(row: Mapping[str, str], name: str) -> Any:
            col = cols[name]
            return row.get(col) if col else None

        for row in reader:
            start = _num(get(row, "start_time"))
            end = _num(get(row, "end_time"))
            if start is None:
                continue
            e2e = _num(get(row, "e2e_ms"))
            if end is None:
                end = start + (e2e or 0.0) / 1000.0
            status = (get(row, "status") or "").strip().lower()
            kind = (get(row, "error_kind") or "").strip() or None
            ok = status in ("ok", "success", "200") if status else kind is None
            yield Request(
                start=start,
                end=end,
                ok=ok,
                error_kind=None if ok else (kind or "unknown"),
                ttft_ms=_num(get(row, "ttft_ms")),
                tpot_ms=_num(get(row, "tpot_ms")),
                e2e_ms=e2e,
                input_tokens=int(_num(get(row, "input_tokens")) or 0),
                output_tokens=int(_num(get(row, "output_tokens")) or 0),
                planned_ttft_ms=_num(get(row, "planned_ttft_ms")),
                name=get(row, "name") or "",
                scheduled=_num(get(row, "scheduled_time")),
                schedule_lag_ms=_num(get(row, "schedule_lag_ms")),
            )


def _add(hist: dict[str, Histogram], r: Request, extra: str, value: float | None) -> None:
    """Fold a successful request's latencies, and one more figure, into `hist`."""
    for name, v in (("ttft_ms", r.ttft_ms), ("tpot_ms", r.tpot_ms), ("e2e_ms", r.e2e_ms),
                    (extra, value)):  # fmt: skip
        if v is not None:
            hist.setdefault(name, Histogram()).add(v)


@dataclass
class _Second:
    requests: int = 0
    failures: int = 0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    in_flight_delta: int = 0
    ttft: Histogram = field(default_factory=Histogram)


@dataclass
class RequestLog:
    """What the report needs from requests.csv."""

    t0: float | None = None  # epoch seconds of the series' second 0
    seconds: dict[int, _Second] = field(default_factory=dict)
    hist: dict[str, Histogram] = field(default_factory=dict)
    total: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_start: float | None = None
    last_end: float | None = None

    def _sec(self, t: float) -> _Second:
        assert self.t0 is not None
        key = max(0, math.floor(t - self.t0))
        sec = self.seconds.get(key)
        if sec is None:
            sec = self.seconds[key] = _Second()
        return sec

    def add(self, r: Request) -> None:
        """Fold one request into the totals and per-second bins, and a successful one into the
        histograms, its output tokens spread over the seconds they streamed in."""
        if self.t0 is None:
            self.t0 = math.floor(r.start)
        self.total += 1
        self.first_start = r.start if self.first_start is None else min(self.first_start, r.start)
        self.last_end = r.end if self.last_end is None else max(self.last_end, r.end)
        end_sec = self._sec(r.end)
        end_sec.requests += 1
        # In flight at a second's end: started at or before it and not yet finished.
        self._sec(r.start).in_flight_delta += 1
        end_sec.in_flight_delta -= 1
        self._sec(r.start).input_tokens += r.input_tokens
        self.input_tokens += r.input_tokens
        if not r.ok:
            self.failed += 1
            end_sec.failures += 1
            kind = r.error_kind or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        _add(self.hist, r, "planned_ttft_ms", r.planned_ttft_ms)
        if r.ttft_ms is not None and r.planned_ttft_ms is not None:
            self.hist.setdefault("fidelity_ttft_ms", Histogram()).add(r.ttft_ms - r.planned_ttft_ms)
        if r.ttft_ms is not None:
            self._sec(r.start + r.ttft_ms / 1000.0).ttft.add(r.ttft_ms)
        self.output_tokens += r.output_tokens
        self._spread_output(r)

    def _spread_output(self, r: Request) -> None:
        # Tokens arrive between the first token and the end, so spreading them over that span
        # gives the generation rate per second; crediting them all at the end would show a
        # stream of 10 s as a spike.
        n = r.output_tokens
        if not n:
            return
        first = r.start + (r.ttft_ms or 0.0) / 1000.0 if r.ttft_ms is not None else r.end
        first = min(first, r.end)
        span = r.end - first
        if span <= 0:
            self._sec(r.end).output_tokens += n
            return
        assert self.t0 is not None
        t = first
        while t < r.end:
            sec_end = self.t0 + math.floor(t - self.t0) + 1
            chunk_end = min(sec_end, r.end)
            self._sec(t).output_tokens += n * (chunk_end - t) / span
            t = chunk_end

    def series(self, users_at: Mapping[int, int] | None = None) -> list[dict[str, Any]]:
        """timeseries.csv rows, one per second from 0 to the last second with data."""
        if not self.seconds or self.t0 is None:
            return []
        rows = []
        in_flight = 0
        last_users = 0
        for s in range(max(self.seconds) + 1):
            sec = self.seconds.get(s, _Second())
            in_flight += sec.in_flight_delta
            if users_at is not None and s in users_at:
                last_users = users_at[s]
            rows.append(
                {
                    "second": s,
                    "time": self.t0 + s,
                    "users": last_users if users_at is not None else None,
                    "in_flight": in_flight,
                    "requests_per_s": sec.requests,
                    "errors": sec.failures,
                    "input_tokens_per_s": round(sec.input_tokens, 1),
                    "output_tokens_per_s": round(sec.output_tokens, 1),
                    "ttft_p50_ms": _r(sec.ttft.percentile(50)),
                    "ttft_p95_ms": _r(sec.ttft.percentile(95)),
                }
            )
        return rows


@dataclass
class Slice:
    """Exact figures for a subset of requests (the steady window, one request name)."""

    hist: dict[str, Histogram] = field(default_factory=dict)
    total: int = 0
    failed: int = 0
    completed: int = 0  # requests that ended inside the window (for rates)
    completed_ok: int = 0
    input_tokens: int = 0
    output_tokens: int = 0  # of requests that ended inside the window
    good: int = 0  # goodput: ended inside the window, succeeded, met every objective
    errors: dict[str, int] = field(default_factory=dict)

    def add_latencies(self, r: Request) -> None:
        """Count one request (and its error kind if it failed); a successful one's TTFT, TPOT,
        E2E and schedule lag go into the histograms."""
        self.total += 1
        if not r.ok:
            self.failed += 1
            kind = r.error_kind or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        _add(self.hist, r, "schedule_lag_ms", r.schedule_lag_ms)

    def stats(self, name: str) -> dict[str, Any] | None:
        """Count, mean, min, max and percentiles of one histogram (`ttft_ms`, ...), or None."""
        h = self.hist.get(name)
        return h.summary() if h is not None else None


def window_of(
    requests: Iterable[Request], start: float, end: float, goodput: list[Any] | None = None
) -> tuple[Slice, dict[str, Slice]]:
    """The steady window [start, end): latencies of requests that started in it (at their
    scheduled time in open loop), rates and goodput of those that ended in it; and per
    request name, the same for the whole run."""
    from llmsim.bench.goodput import meets

    win = Slice()
    names: dict[str, Slice] = {}
    for r in requests:
        by = names.setdefault(r.name or "-", Slice())
        by.add_latencies(r)
        begun = r.scheduled if r.scheduled is not None else r.start
        if start <= begun < end:
            win.add_latencies(r)
        if start <= r.end < end:
            win.completed += 1
            win.input_tokens += r.input_tokens
            if r.ok:
                win.completed_ok += 1
                win.output_tokens += r.output_tokens
                values = {"ttft": r.ttft_ms, "tpot": r.tpot_ms, "e2e": r.e2e_ms}
                if goodput and meets(goodput, values):
                    win.good += 1
    return win, names


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def load_request_log(path: Path, t0: float | None = None) -> RequestLog:
    """Fold requests.csv; second 0 is `t0` (the run's start) or else the earliest request."""
    if not path.exists():
        return RequestLog(t0=None if t0 is None else math.floor(t0))
    if t0 is None:
        # Rows are in completion order (and merged from workers), so the earliest start is
        # only known after a pass.
        t0 = min((r.start for r in read_requests(path)), default=None)
    return fold(read_requests(path), t0)


def fold(requests: Iterable[Request], t0: float | None = None) -> RequestLog:
    """A RequestLog of `requests`; second 0 is `t0` rounded down, else the first request's start."""
    log = RequestLog(t0=None if t0 is None else math.floor(t0))
    for r in requests:
        log.add(r)
    return log
