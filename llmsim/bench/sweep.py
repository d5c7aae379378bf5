"""`llmsim bench --sweep N`: find the saturation throughput, then load at N rates below it.

As guidellm's sweep: a synchronous level (one user, one request at a time) gives the lowest
useful rate; a throughput level (many users, closed loop) gives the saturation throughput; then
N open-loop levels at rates evenly spaced from the lowest to the saturation rate, one after the
other, `--duration` each (after `--warmup`). A level is stopped early when it is plainly
over-saturated: requests in flight passed three times what the server held at saturation and
kept growing. Each level is a whole bench run in a folder of its own; the sweep's folder gets
sweep.json, summary.md (a table) and report.html (TTFT, ITL and throughput against the offered
rate). Every level shares one embedded simulator.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from llmsim.bench import plots, tables
from llmsim.bench.config import BenchConfig
from llmsim.bench.embedded import EmbeddedServer, start_embedded_server
from llmsim.bench.errors import BenchError

SATURATION_USERS = 32
SCHEMA = "llmsim.bench.sweep/1"


def sweep_rates(low: float, high: float, n: int) -> list[float]:
    """N rates from `low` to `high`, evenly spaced (one level: the saturation rate itself)."""
    if n == 1 or high <= low:
        return [round(high, 3)] * min(n, 1)
    step = (high - low) / (n - 1)
    return [round(low + i * step, 3) for i in range(n)]


def _level(summary: dict[str, Any], name: str, offered: float | None, run_dir: Path) -> dict:
    def pick(key: str) -> dict[str, Any]:
        st = summary.get(key) or {}
        return {k: st.get(k) for k in ("p50", "p95", "p99", "mean")}

    return {
        "name": name,
        "offered_rate": offered,
        "achieved_rate": (summary.get("requests") or {}).get("per_s"),
        "output_tokens_per_s": (summary.get("tokens") or {}).get("output_per_s"),
        "requests": (summary.get("requests") or {}).get("total"),
        "failed": (summary.get("requests") or {}).get("failed"),
        "ttft_ms": pick("ttft_ms"),
        "itl_ms": pick("itl_ms"),
        "tpot_ms": pick("tpot_ms"),
        "e2e_ms": pick("e2e_ms"),
        "schedule_lag_ms": pick("schedule_lag_ms"),
        "goodput_per_s": (summary.get("goodput") or {}).get("per_s"),
        "stopped_early": summary.get("stopped_early"),
        "run_dir": run_dir.name,
    }


def run_sweep(cfg: BenchConfig, out: TextIO | None = None) -> int:
    """Run the sweep; 0 when every level ran (levels' own SLO verdicts are in their reports)."""
    from llmsim.bench.run import make_run_dir, run_bench

    out = out or sys.stdout
    assert cfg.sweep
    sweep_dir = make_run_dir(cfg.reports_dir, (cfg.label or "") + "-sweep")
    server: EmbeddedServer | None = None
    levels: list[dict[str, Any]] = []
    try:
        if cfg.target is None:
            server = start_embedded_server(
                cfg.simulator_flags, cfg.simulator_config, sweep_dir / "server.log"
            )

        def run(name: str, offered: float | None, **changes: Any) -> dict[str, Any]:
            level_cfg = dataclasses.replace(
                cfg,
                reports_dir=str(sweep_dir),
                label=name,
                sweep=None,
                json_output=False,
                **changes,
            )
            got: dict[str, Any] = {}

            def keep(summary: dict[str, Any], run_dir: Path) -> None:
                got["level"] = _level(summary, name, offered, run_dir)

            out.write(f"sweep level {name}\n")
            out.flush()
            run_bench(level_cfg, out=out, shared_server=server, on_summary=keep)
            if "level" not in got:
                raise BenchError(f"sweep level {name} wrote no report")
            levels.append(got["level"])
            _write(sweep_dir, cfg, levels)
            return got["level"]

        # Closed-loop levels start all their users at once, so the window is all steady state.
        closed = {"rate": None, "arrival": None, "spawn_rate": None}
        sync = run("synchronous", None, users=1, **closed)
        thr = run("throughput", None, users=cfg.users, **{**closed, "spawn_rate": cfg.users})
        low = sync["achieved_rate"] or 0.0
        high = thr["achieved_rate"] or 0.0
        if not high:
            raise BenchError("the throughput level completed no request: nothing to sweep")
        # Requests the server held at saturation (Little's law), times 3: past that and growing,
        # a level is plainly over its capacity.
        e2e = (thr["e2e_ms"].get("mean") or 0) / 1000.0
        limit = max(10.0, 3 * high * e2e)
        for i, rate in enumerate(sweep_rates(low, high, cfg.sweep)):
            run(
                f"rate-{i + 1}-{rate:g}",
                rate,
                rate=rate,
                arrival=cfg.arrival,
                oversaturation_limit=limit,
            )
    finally:
        if server is not None:
            server.stop()
    _write(sweep_dir, cfg, levels, final=True)
    out.write(f"sweep: {len(levels)} levels; report: {sweep_dir / 'report.html'}\n")
    out.write(tables.plain(sweep_table(levels)) + "\n")
    out.flush()
    return 0


def sweep_table(levels: list[dict[str, Any]]) -> tables.Table:
    """One row per level: offered and achieved rate, TTFT, ITL, throughput."""
    head = [
        "level",
        "offered/s",
        "achieved/s",
        "TTFT p50",
        "TTFT p95",
        "ITL p50",
        "ITL p95",
        "out tok/s",
        "failed",
        "note",
    ]
    rows = []
    for lv in levels:
        rows.append(
            [
                lv["name"],
                tables.fmt_num(lv["offered_rate"], 2),
                tables.fmt_num(lv["achieved_rate"], 2),
                tables.fmt_ms(lv["ttft_ms"]["p50"]),
                tables.fmt_ms(lv["ttft_ms"]["p95"]),
                tables.fmt_ms(lv["itl_ms"]["p50"]),
                tables.fmt_ms(lv["itl_ms"]["p95"]),
                tables.fmt_num(lv["output_tokens_per_s"]),
                tables.fmt_num(lv["failed"], 0),
                "stopped early: over-saturated" if lv.get("stopped_early") else "",
            ]
        )
    return head, rows


def _write(
    sweep_dir: Path, cfg: BenchConfig, levels: list[dict[str, Any]], final: bool = False
) -> None:
    thr = next((lv for lv in levels if lv["name"] == "throughput"), None)
    doc = {
        "schema": SCHEMA,
        "complete": final,
        "saturation_rate": thr["achieved_rate"] if thr else None,
        "levels": levels,
        "config": cfg.to_dict(),
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(doc, indent=2) + "\n", "utf-8")
    md = [
        "# llmsim bench --sweep",
        "",
        f"Saturation throughput: {tables.fmt_num(doc['saturation_rate'], 2)} requests/s "
        "(closed loop, the throughput level). Each level's report is in its own folder.",
        "",
        tables.markdown(sweep_table(levels)),
        "",
    ]
    (sweep_dir / "summary.md").write_text("\n".join(md), "utf-8")
    (sweep_dir / "report.html").write_text(render(doc), "utf-8")


def render(doc: dict[str, Any]) -> str:
    """The sweep's report.html: the table and three plots against the offered rate."""
    from llmsim.bench.report_html import CSS, _table

    levels = [lv for lv in doc["levels"] if lv.get("offered_rate") is not None]
    svgs = [
        plots.against_rate("TTFT against offered rate", levels, "ttft_ms", "ms"),
        plots.against_rate("ITL against offered rate", levels, "itl_ms", "ms"),
        plots.throughput_against_rate(levels),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>llmsim bench --sweep</title>',
        f"<style>{CSS}</style></head><body><main>",
        "<h1>llmsim bench --sweep</h1>",
        f'<div class="sub">saturation throughput {tables.fmt_num(doc["saturation_rate"], 2)}'
        " requests/s (closed loop)</div>",
        "<h2>Levels</h2>",
        _table(sweep_table(doc["levels"])),
        "<h2>Plots</h2>",
        '<div class="grid">',
        *[f'<div class="plot">{svg}</div>' for svg in svgs],
        "</div>",
        "<h2>Levels' reports</h2><ul>",
        *[
            f'<li><a href="{lv["run_dir"]}/report.html">{lv["name"]}</a></li>'
            for lv in doc["levels"]
        ],
        "</ul></main></body></html>",
    ]
    return "\n".join(parts) + "\n"
