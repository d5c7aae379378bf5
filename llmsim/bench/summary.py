"""summary.json: the figures of a run, from the Locust side's files and what bench observed.

Sources, most exact first: llm_metrics.json (histograms merged across workers), then
requests.csv (one row per request), then Locust's own stats JSON for runs whose user classes
record no LLM metrics (a user's own locustfile).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from llmsim import __version__
from llmsim.bench.request_log import RequestLog

SCHEMA = "llmsim.bench.summary/1"
LATENCIES = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")
STAT_KEYS = ("p50", "p90", "p95", "p99", "mean", "min", "max", "count")


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time to the millisecond; None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


def empty_stats() -> dict[str, Any]:
    """A latency block for a metric without data: count 0, every statistic None."""
    return {k: (0 if k == "count" else None) for k in STAT_KEYS}


def _stats_shape(d: Any) -> dict[str, Any] | None:
    if not isinstance(d, Mapping) or "count" not in d:
        return None
    return {k: d.get(k) for k in STAT_KEYS}


def llm_stats(llm: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    """A percentile block from llm_metrics.json, wherever its writer nested it."""
    if not llm:
        return None
    for container in (llm, llm.get("metrics"), llm.get("percentiles"), llm.get("latency")):
        if isinstance(container, Mapping):
            found = _stats_shape(container.get(name))
            if found is not None:
                return found
    return None


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def locust_request_counts(locust_stats: Any) -> tuple[int, int] | None:
    """(requests, failures) of real request rows in Locust's --json-file (metric rows excluded)."""
    if not isinstance(locust_stats, list):
        return None
    total = failed = 0
    for row in locust_stats:
        if not isinstance(row, Mapping) or row.get("method") in ("TTFT", "TPOT", "ITL"):
            continue
        total += int(row.get("num_requests", 0))
        failed += int(row.get("num_failures", 0))
    return total, failed


def build_summary(
    *,
    config: Mapping[str, Any],
    llm: Mapping[str, Any] | None,
    log: RequestLog,
    locust_stats: Any,
    target: str,
    target_kind: str,
    started: float | None,
    ended: float | None,
    interrupted: bool,
    client: Mapping[str, Any],
    users_peak: int | None,
    model: str | None,
    simulator: Mapping[str, Any] | None,
    label: str | None,
) -> dict[str, Any]:
    """Everything but the SLO verdict, which is judged on this very dict afterwards."""
    started = _first(started, _get(llm, "start_time"), log.first_start)
    ended = _first(ended, _get(llm, "end_time"), log.last_end)
    duration = (ended - started) if started is not None and ended is not None else None
    duration = duration if duration and duration > 0 else None

    out: dict[str, Any] = {
        "schema": SCHEMA,
        "llmsim_version": __version__,
        "label": label,
        "started_at": iso(started),
        "ended_at": iso(ended),
        "duration_s": _round(duration, 3),
        "interrupted": interrupted,
        "target": target,
        "target_kind": target_kind,
        "model": model,
        "users": config.get("users"),
        "users_peak": users_peak,
    }

    for name in LATENCIES:
        block = llm_stats(llm, name)
        if block is None and name in log.hist:
            block = log.hist[name].summary()
        out[name] = block or empty_stats()

    counts = locust_request_counts(locust_stats)
    total = _first(
        _get(llm, "requests", "total"),
        log.total if log.total else None,
        counts[0] if counts else None,
        0,
    )
    failed = _first(
        _get(llm, "requests", "failed"),
        log.failed if log.total else None,
        counts[1] if counts else None,
        0,
    )
    out["requests"] = {
        "total": total,
        "ok": total - failed,
        "failed": failed,
        "error_rate": _round(failed / total, 6) if total else None,
        "per_s": _round(total / duration, 3) if duration else None,
    }

    tokens = _get(llm, "tokens") or {}
    input_total = _first(tokens.get("input_total"), tokens.get("input"), log.input_tokens)
    output_total = _first(tokens.get("output_total"), tokens.get("output"), log.output_tokens)
    out["tokens"] = {
        "input_total": input_total,
        "output_total": output_total,
        "input_per_s": _round(input_total / duration, 3) if duration else None,
        "output_per_s": _round(output_total / duration, 3) if duration else None,
        "source": tokens.get("source"),
    }

    errors = _get(llm, "errors")
    out["errors"] = dict(errors) if isinstance(errors, Mapping) else dict(log.errors)

    out["fidelity"] = _fidelity(llm, log, out["ttft_ms"])
    if out["fidelity"] is not None and simulator and simulator.get("lateness_ms"):
        # The simulator's own share of the error: how late its writes left against plan.
        out["fidelity"]["simulator_lateness_ms"] = simulator["lateness_ms"]
    out["client"] = dict(client)
    out["config"] = {**config, "simulator": dict(simulator) if simulator else None}
    return out


def _fidelity(
    llm: Mapping[str, Any] | None, log: RequestLog, ttft: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Measured minus planned TTFT, when the target said what it planned (llmsim does)."""
    error = llm_stats(llm, "fidelity_ttft_ms")
    if (error is None or not error.get("count")) and "fidelity_ttft_ms" in log.hist:
        error = log.hist["fidelity_ttft_ms"].summary()
    if error is None or not error.get("count"):
        return None
    planned = llm_stats(llm, "planned_ttft_ms")
    if (planned is None or not planned.get("count")) and "planned_ttft_ms" in log.hist:
        planned = log.hist["planned_ttft_ms"].summary()
    out: dict[str, Any] = {"ttft_ms": error, "planned_ttft_ms": planned}
    if planned and planned.get("p50") and ttft.get("p50") is not None:
        out["ttft_p50_error_pct"] = round(
            100.0 * (ttft["p50"] - planned["p50"]) / planned["p50"], 3
        )
    else:
        out["ttft_p50_error_pct"] = None
    return out
