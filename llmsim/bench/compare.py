"""`llmsim compare RUN_A RUN_B [...]`: bench runs side by side, with deltas against the first.

Each RUN is a bench report folder (summary.json; requests.csv and llm_metrics.json for the
distributions). Writes compare.md and compare.html (self-contained, inline SVG) and prints the
markdown table.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmsim.bench import plots, tables
from llmsim.bench.errors import BenchError
from llmsim.bench.reports import distributions
from llmsim.bench.request_log import load_request_log

# (label, path in summary.json, unit, higher is better)
ROWS: tuple[tuple[str, tuple[str, ...], str, bool], ...] = (
    ("TTFT p50", ("ttft_ms", "p50"), "ms", False),
    ("TTFT p95", ("ttft_ms", "p95"), "ms", False),
    ("TTFT p99", ("ttft_ms", "p99"), "ms", False),
    ("ITL p50", ("itl_ms", "p50"), "ms", False),
    ("ITL p95", ("itl_ms", "p95"), "ms", False),
    ("TPOT p50", ("tpot_ms", "p50"), "ms", False),
    ("TPOT p95", ("tpot_ms", "p95"), "ms", False),
    ("E2E p50", ("e2e_ms", "p50"), "ms", False),
    ("E2E p95", ("e2e_ms", "p95"), "ms", False),
    ("requests/s", ("requests", "per_s"), "/s", True),
    ("output tokens/s", ("tokens", "output_per_s"), "/s", True),
    ("error rate", ("requests", "error_rate"), "", False),
    ("goodput/s", ("goodput", "per_s"), "/s", True),
    ("schedule lag p99", ("schedule_lag_ms", "p99"), "ms", False),
    ("fidelity p99", ("fidelity", "ttft_ms", "p99"), "ms", False),
)


def _dig(d: Any, path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def load_run(path: str) -> tuple[str, dict[str, Any], Path]:
    """(name, summary, folder) of one bench run; BenchError says what is wrong with it."""
    p = Path(path)
    f = p / "summary.json"
    if not p.is_dir():
        raise BenchError(f"{path}: no such report folder")
    try:
        summary = json.loads(f.read_text("utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path}: no summary.json (not an llmsim bench report folder)") from None
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}/summary.json: unreadable ({e})") from None
    return p.name, summary, p


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return tables.fmt_ms(v)
    if unit == "":
        return f"{100 * v:.2f} %"
    return tables.fmt_num(v, 2)


def _delta(base: float | None, v: float | None, better_up: bool) -> str:
    if base is None or v is None:
        return ""
    if base == 0:
        return "" if v == 0 else "(new)"
    pct = 100.0 * (v - base) / abs(base)
    if round(pct, 1) == 0:
        pct = 0.0  # a change too small to show is no change: "+0.0 %", never "-0.0 %"
    good = (pct > 0) == better_up
    mark = "" if abs(pct) < 0.5 else (" better" if good else " worse")
    return f"{pct:+.1f} %{mark}"


def comparison_table(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> tables.Table:
    """Rows of metrics, a column per run, each after the first with its delta."""
    head = ["metric", runs[0][0]]
    for name, _ in runs[1:]:
        head += [name, "Δ"]
    rows = []
    for label, path, unit, up in ROWS:
        values = [_dig(s, path) for _, s in runs]
        if all(v is None for v in values):
            continue
        # The unit beside the name: the cells are bare numbers (a latency table's header says
        # ms; this table mixes units).
        row = [f"{label} (ms)" if unit == "ms" else label, _fmt(values[0], unit)]
        for v in values[1:]:
            row += [_fmt(v, unit), _delta(values[0], v, up)]
        rows.append(row)
    return head, rows


def run_compare(paths: Sequence[str], output_dir: str | None = None) -> tuple[str, Path]:
    """Write compare.md and compare.html; returns (markdown, folder)."""
    if len(paths) < 2:
        raise BenchError("compare needs at least two report folders")
    loaded = [load_run(p) for p in paths]
    runs = [(name, s) for name, s, _ in loaded]
    table = comparison_table(runs)
    md = "\n".join(
        [
            "# llmsim compare",
            "",
            "Δ: change against the first run (" + loaded[0][0] + ").",
            "",
            tables.markdown(table),
            "",
        ]
    )
    out = Path(output_dir) if output_dir else _default_dir(Path(paths[0]).parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(md, "utf-8")
    (out / "compare.html").write_text(_html(loaded, table), "utf-8")
    return md, out


def _default_dir(base: Path) -> Path:
    return base / ("compare-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S"))


def _dists(folder: Path) -> dict[str, dict[float, int]]:
    llm = None
    try:
        llm = json.loads((folder / "llm_metrics.json").read_text("utf-8"))
    except (OSError, ValueError):
        pass
    return distributions(load_request_log(folder / "requests.csv"), llm)


def _html(loaded: Sequence[tuple[str, dict[str, Any], Path]], table: tables.Table) -> str:
    from llmsim.bench.report_html import CSS, _table

    dists = [(name, _dists(folder)) for name, _, folder in loaded]
    svgs = [
        plots.overlaid(f"{title} distributions", [(n, d.get(key)) for n, d in dists])
        for key, title in (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))
    ]
    items = "".join(
        f'<li><a href="{html.escape(str(folder.resolve()))}/report.html">{html.escape(name)}</a>'
        f" — {html.escape(str(s.get('target')))}, {html.escape(str(s.get('started_at')))}</li>"
        for name, s, folder in loaded
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>llmsim compare</title>'
        f"<style>{CSS}</style></head><body><main><h1>llmsim compare</h1>"
        f'<div class="sub">Δ against the first run, {html.escape(loaded[0][0])}</div>'
        f"<h2>Runs</h2><ul>{items}</ul><h2>Figures</h2>{_table(table)}"
        '<h2>Distributions</h2><div class="grid">'
        + "".join(f'<div class="plot">{svg}</div>' for svg in svgs)
        + "</div></main></body></html>\n"
    )
