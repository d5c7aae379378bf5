"""Per-process LLM metrics, and their exact merge across Locust workers.

Each process keeps histograms (TTFT, ITL, TPOT, E2E, TTFT error against the server's plan,
per-request output tokens/s), counters and a per-second series. A worker ships what it gathered
since its last report (deltas) in Locust's `report_to_master` payload and starts afresh; the
master adds the deltas up. Adding bucket counts is exact, so the master's percentiles are
exactly the ones a single process would have computed from the same requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llmsim.load.histogram import Histogram

HISTOGRAMS = (
    "ttft_ms",
    "itl_ms",
    "tpot_ms",
    "e2e_ms",
    "fidelity_ttft_ms",
    "output_tokens_per_s",
    "schedule_lag_ms",
)

ROW_FIELDS = (
    "start_time",
    "scheduled_time",
    "end_time",
    "status",
    "error_kind",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "input_tokens",
    "output_tokens",
    "token_source",
    "output_tokens_per_s",
    "planned_ttft_ms",
    "name",
    "schedule_lag_ms",
)

PAYLOAD_KEY = "llmsim"
RATE_WINDOW_S = 10
# Workers report every 3 s, so on a master the last few seconds are still filling in; in one
# process only the current second is.
RATE_LAG_S = 4
LOCAL_RATE_LAG_S = 1


@dataclass(slots=True)
class RequestRecord:
    """One finished request, as it lands in requests.csv."""

    start_time: float
    end_time: float
    status: str  # "ok" or "error"
    error_kind: str | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float
    input_tokens: int | None
    output_tokens: int | None
    token_source: str | None  # "usage" or "counted"
    output_tokens_per_s: float | None
    planned_ttft_ms: float | None
    name: str
    scheduled_time: float | None = None  # open loop: when the schedule wanted it to start
    schedule_lag_ms: float | None = None  # open loop: start - scheduled
    error_message: str | None = None

    def row(self) -> list[Any]:
        """This request as a requests.csv row (ROW_FIELDS order)."""
        return [
            round(self.start_time, 6),
            "" if self.scheduled_time is None else round(self.scheduled_time, 6),
            round(self.end_time, 6),
            self.status,
            self.error_kind or "",
            _r3(self.ttft_ms),
            _r3(self.tpot_ms),
            _r3(self.e2e_ms),
            "" if self.input_tokens is None else self.input_tokens,
            "" if self.output_tokens is None else self.output_tokens,
            self.token_source or "",
            _r3(self.output_tokens_per_s),
            _r3(self.planned_ttft_ms),
            self.name,
            _r3(self.schedule_lag_ms),
        ]


def _r3(v: float | None) -> Any:
    return "" if v is None else round(v, 3)


class LLMMetrics:
    """Everything the LLM tab and llm_metrics.json show, for one process (or merged)."""

    def __init__(self, keep_rows: bool = False) -> None:
        self.keep_rows = keep_rows
        self.in_flight = 0  # streams open in this process right now (a gauge, never reset)
        self.remote_in_flight: dict[str, int] = {}  # master: last gauge per worker
        self.reset()

    def reset(self) -> None:
        """Zero what was gathered (histograms, counters, per-second series, rows, first and last
        request times); the in-flight gauges are left alone.
        """
        self.hist = {name: Histogram() for name in HISTOGRAMS}
        self.requests = 0
        self.failed = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.token_sources: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.error_samples: dict[str, str] = {}  # kind -> the first message seen
        self.dropped = 0  # open loop: arrivals not sent because --llm-max-in-flight was reached
        # second -> [requests, failures, input tokens, output tokens], by completion time
        self.per_second: dict[int, list[int]] = {}
        self.rows: list[list[Any]] = []
        self.first_request: float | None = None
        self.last_request: float | None = None

    # ------------------------------------------------------------------ recording

    def record(self, rec: RequestRecord, itl_ms: list[float] | None = None) -> None:
        """Add one finished request to the counts, its completion second and (keep_rows) the rows.

        A success adds its latencies to the histograms (`itl_ms`: its inter-token gaps in ms) and
        its tokens to the totals; a failure counts its error kind and keeps the kind's first
        message.
        """
        self.requests += 1
        ok = rec.status == "ok"
        sec = int(rec.end_time)
        slot = self.per_second.get(sec)
        if slot is None:
            slot = self.per_second[sec] = [0, 0, 0, 0]
        slot[0] += 1
        if ok:
            hist = self.hist
            hist["e2e_ms"].add(rec.e2e_ms)
            if rec.ttft_ms is not None:
                hist["ttft_ms"].add(rec.ttft_ms)
                if rec.planned_ttft_ms is not None:
                    hist["fidelity_ttft_ms"].add(rec.ttft_ms - rec.planned_ttft_ms)
            if rec.tpot_ms is not None:
                hist["tpot_ms"].add(rec.tpot_ms)
            if rec.output_tokens_per_s is not None:
                hist["output_tokens_per_s"].add(rec.output_tokens_per_s)
            if itl_ms:
                hist["itl_ms"].add_many(itl_ms)
            if rec.schedule_lag_ms is not None:
                hist["schedule_lag_ms"].add(rec.schedule_lag_ms)
            if rec.input_tokens:
                self.input_tokens += rec.input_tokens
                slot[2] += rec.input_tokens
            if rec.output_tokens:
                self.output_tokens += rec.output_tokens
                slot[3] += rec.output_tokens
            if rec.token_source:
                self.token_sources[rec.token_source] = (
                    self.token_sources.get(rec.token_source, 0) + 1
                )
        else:
            self.failed += 1
            slot[1] += 1
            kind = rec.error_kind or "unknown"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if kind not in self.error_samples and rec.error_message:
                self.error_samples[kind] = rec.error_message
        if self.first_request is None or rec.start_time < self.first_request:
            self.first_request = rec.start_time
        if self.last_request is None or rec.end_time > self.last_request:
            self.last_request = rec.end_time
        if self.keep_rows:
            self.rows.append(rec.row())

    # ------------------------------------------------------------------ distribution

    def take_delta(self) -> dict[str, Any]:
        """Worker side: everything since the last call, then start afresh (in-flight excepted).

        Runs without yielding to other greenlets, so no request lands between read and reset.
        """
        delta = {
            "hist": {name: h.to_wire() for name, h in self.hist.items() if h.count},
            "requests": self.requests,
            "failed": self.failed,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "token_sources": self.token_sources,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "dropped": self.dropped,
            "per_second": [[k, *v] for k, v in self.per_second.items()],
            "rows": self.rows,
            "first_request": self.first_request,
            "last_request": self.last_request,
            "in_flight": self.in_flight,
        }
        self.reset()
        return delta

    def merge_delta(self, client_id: str, delta: dict[str, Any]) -> None:
        """Master side: add one worker's delta."""
        for name, wire in delta.get("hist", {}).items():
            if name in self.hist:
                self.hist[name].merge_wire(wire)
        self.requests += delta.get("requests", 0)
        self.failed += delta.get("failed", 0)
        self.input_tokens += delta.get("input_tokens", 0)
        self.output_tokens += delta.get("output_tokens", 0)
        for src, n in delta.get("token_sources", {}).items():
            self.token_sources[src] = self.token_sources.get(src, 0) + n
        for kind, n in delta.get("errors", {}).items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        for kind, msg in delta.get("error_samples", {}).items():
            self.error_samples.setdefault(kind, msg)
        self.dropped += delta.get("dropped", 0)
        for sec, *vals in delta.get("per_second", []):
            slot = self.per_second.setdefault(int(sec), [0, 0, 0, 0])
            for i, v in enumerate(vals):
                slot[i] += v
        if self.keep_rows and delta.get("rows"):
            self.rows.extend(delta["rows"])
        first, last = delta.get("first_request"), delta.get("last_request")
        if first is not None and (self.first_request is None or first < self.first_request):
            self.first_request = first
        if last is not None and (self.last_request is None or last > self.last_request):
            self.last_request = last
        if "in_flight" in delta:
            self.remote_in_flight[client_id] = int(delta["in_flight"])

    # ------------------------------------------------------------------ reading

    def total_in_flight(self) -> int:
        """Requests in flight: this process's plus each worker's last reported count (master)."""
        return self.in_flight + sum(self.remote_in_flight.values())

    def token_source(self) -> str | None:
        """ "usage", "counted", "mixed", or None before any successful request."""
        sources = [s for s, n in self.token_sources.items() if n]
        if not sources:
            return None
        return sources[0] if len(sources) == 1 else "mixed"

    def current_rates(self, now: float | None = None) -> dict[str, float]:
        """Requests, failures, input and output tokens per second over the last 10 s (the
        last complete ones: on a master, those every worker has reported)."""
        now = time.time() if now is None else now
        end = int(now) - (RATE_LAG_S if self.remote_in_flight else LOCAL_RATE_LAG_S)
        totals = [0, 0, 0, 0]
        for sec in range(end - RATE_WINDOW_S, end):
            slot = self.per_second.get(sec)
            if slot:
                for i in range(4):
                    totals[i] += slot[i]
        keys = ("requests_per_s", "failures_per_s", "input_tokens_per_s", "output_tokens_per_s")
        return {k: totals[i] / RATE_WINDOW_S for i, k in enumerate(keys)}

    def run_rates(self, start: float | None, end: float | None) -> dict[str, float | None]:
        """Averages over the whole run."""
        if start is None or end is None or end <= start:
            return {
                "requests_per_s": None,
                "input_tokens_per_s": None,
                "output_tokens_per_s": None,
            }
        d = end - start
        return {
            "requests_per_s": round(self.requests / d, 3),
            "input_tokens_per_s": round(self.input_tokens / d, 3),
            "output_tokens_per_s": round(self.output_tokens / d, 3),
        }
