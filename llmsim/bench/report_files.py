"""summary.json, summary.md and timeseries.csv."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmsim.bench import tables

TIMESERIES_COLUMNS = (
    "second",
    "time",
    "users",
    "in_flight",
    "requests_per_s",
    "errors",
    "input_tokens_per_s",
    "output_tokens_per_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
)


def write_json(path: Path, summary: Mapping[str, Any]) -> None:
    """Write summary.json to a .json.tmp beside it, then rename it into place."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", "utf-8")
    tmp.replace(path)  # a reader never sees half a summary


def write_timeseries(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write timeseries.csv: TIMESERIES_COLUMNS, then one row per second (None as an empty cell)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(TIMESERIES_COLUMNS)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in TIMESERIES_COLUMNS])


def verdict(summary: Mapping[str, Any]) -> str:
    """NO REQUEST SUCCEEDED, no SLO given, all SLOs met or SLO FAILED: the reports' headline."""
    slo = summary.get("slo") or {}
    if summary.get("status") == "no_requests":
        return "NO REQUEST SUCCEEDED"
    if not slo.get("results"):
        return "no SLO given"
    return "all SLOs met" if slo.get("passed") else "SLO FAILED"


def markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: the verdict, the run and latency tables, the optional tables that have data
    (by name, fidelity, SLOs, errors, load generator), then the warnings."""
    title = "llmsim bench" + (f" — {summary['label']}" if summary.get("label") else "")
    parts = [f"# {title}", "", f"**{verdict(summary)}** · {summary.get('started_at')}", ""]
    parts += ["## Run", "", tables.markdown(tables.run_table(summary)), ""]
    parts += ["## Latency", "", tables.markdown(tables.latency_table(summary)), ""]
    parts.append(
        "TTFT: request start to the first content token. ITL: each gap between content "
        "tokens. TPOT: (E2E − TTFT) / (output tokens − 1), per request. E2E: request start "
        "to the last byte."
    )
    parts.append("")
    optional = (
        ("By request name", tables.by_name_table(summary)),
        ("Fidelity (measured − planned TTFT)", tables.fidelity_table(summary)),
        ("SLOs", tables.slo_table(summary)),
        ("Errors", tables.errors_table(summary)),
        ("Load generator", tables.client_table(summary)),
    )
    for heading, table in optional:
        if table is not None:
            parts += [f"## {heading}", "", tables.markdown(table), ""]
    for warning in summary.get("warnings") or []:
        parts.append(f"> **Warning:** {warning}")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def terminal(summary: Mapping[str, Any]) -> str:
    """What bench prints after a run: the latency table, a line each for requests, goodput,
    schedule lag, the steady window, every error kind and fidelity where they apply, the SLO
    table and the warnings."""
    lines = [tables.plain(tables.latency_table(summary))]
    req = summary.get("requests") or {}
    tok = summary.get("tokens") or {}
    lines.append(
        f"  requests {tables.fmt_num(req.get('total'), 0)} "
        f"({tables.fmt_num(req.get('per_s'), 2)}/s), "
        f"failed {tables.fmt_num(req.get('failed'), 0)}, "
        f"output {tables.fmt_num(tok.get('output_per_s'))} tok/s"
    )
    good = summary.get("goodput")
    if good:
        lines.append(
            f"  goodput {tables.fmt_num(good.get('per_s'), 2)}/s: "
            f"{tables.fmt_num(good.get('good_requests'), 0)} of "
            f"{tables.fmt_num(good.get('requests'), 0)} requests met "
            f"{', '.join(good.get('objectives') or [])}"
        )
    lag = summary.get("schedule_lag_ms")
    if lag and lag.get("count"):
        lines.append(
            f"  schedule lag (start − scheduled): p50 {tables.fmt_ms(lag.get('p50'))} ms, "
            f"p99 {tables.fmt_ms(lag.get('p99'))} ms; dropped "
            f"{tables.fmt_num(req.get('dropped') or 0, 0)}"
        )
    win = summary.get("window") or {}
    if win.get("start_s"):
        lines.append(
            f"  (headline figures: the steady window from {tables.fmt_num(win['start_s'])} s, "
            f"{tables.fmt_num(win.get('duration_s'))} s long; whole run in summary.json)"
        )
    samples = summary.get("error_samples") or {}
    for kind, n in sorted((summary.get("errors") or {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  error {kind} × {n:,}: {samples.get(kind, '')}".rstrip(": "))
    fid = summary.get("fidelity")
    if fid:
        f = fid.get("ttft_ms") or {}
        lines.append(
            f"  fidelity (measured − planned TTFT): p50 {tables.fmt_ms(f.get('p50'))} ms, "
            f"p99 {tables.fmt_ms(f.get('p99'))} ms"
        )
    slo = tables.slo_table(summary)
    if slo is not None:
        lines.append(tables.plain(slo))
    for warning in summary.get("warnings") or []:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
