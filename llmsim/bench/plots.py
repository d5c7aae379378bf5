"""The report's plots, drawn with matplotlib as inline SVG.

matplotlib rather than plotly: an SVG with text rendered as paths needs no script, font or style
from anywhere, so the page is self-contained by construction, stays a few hundred kB (plotly
embeds ~4.5 MB of JavaScript in every report), prints, and diffs as text.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never look for a display, even if DISPLAY is set

import numpy as np
from matplotlib.figure import Figure

BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"

matplotlib.rcParams.update(
    {
        "svg.fonttype": "path",  # glyphs as paths: no font needed where the page is opened
        "svg.hashsalt": "llmsim",  # stable ids, so two renders of one run are byte-identical
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    # Drop the XML prolog and doctype: inline SVG in HTML does not take them.
    text = text[text.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def _fig(width: float = 6.4, height: float = 3.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _empty(title: str, message: str) -> str:
    fig, ax = _fig(height=1.2)
    ax.set_axis_off()
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.4, message, ha="center", va="center", color=GREY, transform=ax.transAxes)
    return _svg(fig)


def distribution(
    title: str,
    counts: Mapping[float, int] | None,
    stats: Mapping[str, Any] | None,
    xlabel: str = "ms",
    overlay: Mapping[float, int] | None = None,
    overlay_label: str | None = None,
) -> str:
    """Histogram from bucketed counts, with p50/p95/p99 marked; the far tail is cut at p99.9."""
    if not counts:
        if stats and stats.get("count"):
            return percentile_ladder(title, stats, xlabel)
        return _empty(title, "no data")
    keys = np.array(list(counts.keys()), dtype=float)
    weights = np.array(list(counts.values()), dtype=float)
    order = np.argsort(keys)
    keys, weights = keys[order], weights[order]
    cum = np.cumsum(weights) / weights.sum()
    lo = keys[0]
    hi = keys[min(len(keys) - 1, int(np.searchsorted(cum, 0.999)))]
    if hi <= lo:
        hi = lo + max(1.0, abs(lo) * 0.01)
    bins = np.linspace(lo, hi, 61)
    clipped = np.clip(keys, lo, hi)
    fig, ax = _fig()
    ax.hist(clipped, bins=bins, weights=weights, color=BLUE, alpha=0.85, label="measured")
    if overlay:
        okeys = np.clip(np.array(list(overlay.keys()), dtype=float), lo, hi)
        ax.hist(
            okeys,
            bins=bins,
            weights=np.array(list(overlay.values()), dtype=float),
            histtype="step",
            color=ORANGE,
            linewidth=1.5,
            label=overlay_label or "planned",
        )
    for key, color in (("p50", GREEN), ("p95", ORANGE), ("p99", RED)):
        v = (stats or {}).get(key)
        if v is not None:
            ax.axvline(v, color=color, linestyle="--", linewidth=1, label=f"{key} {v:,.1f}")
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("requests" if "ITL" not in title else "gaps")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def percentile_ladder(title: str, stats: Mapping[str, Any], xlabel: str = "ms") -> str:
    """When only percentiles are known: one bar per percentile."""
    names = [k for k in ("min", "p50", "p90", "p95", "p99", "max") if stats.get(k) is not None]
    if not names:
        return _empty(title, "no data")
    fig, ax = _fig(height=2.4)
    values = [float(stats[k]) for k in names]
    ax.barh(names, values, color=BLUE)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.1f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"{title} (percentiles)", loc="left")
    ax.set_xlabel(xlabel)
    return _svg(fig)


def _col(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])


def ttft_over_time(rows: Sequence[Mapping[str, Any]]) -> str:
    """TTFT p50 and p95 per second of timeseries.csv rows, with users on a second axis if known."""
    title = "TTFT p50 / p95 and users over time"
    if not rows:
        return _empty(title, "no data")
    t = _col(rows, "second")
    fig, ax = _fig()
    ax.plot(t, _col(rows, "ttft_p50_ms"), color=BLUE, label="TTFT p50", marker=".", ms=3)
    ax.plot(t, _col(rows, "ttft_p95_ms"), color=ORANGE, label="TTFT p95", marker=".", ms=3)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("TTFT, ms")
    ax.set_ylim(bottom=0)
    users = _col(rows, "users")
    lines, labels = ax.get_legend_handles_labels()
    if not np.all(np.isnan(users)):
        ax2 = ax.twinx()
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        ax2.step(t, users, where="post", color=GREY, linewidth=1.2, label="users")
        ax2.set_ylabel("users")
        ax2.set_ylim(bottom=0)
        l2, lab2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lab2
    ax.legend(lines, labels, frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title, loc="left")
    return _svg(fig)


def throughput_over_time(rows: Sequence[Mapping[str, Any]]) -> str:
    """Completed requests/s (and errors/s, if any) and output tokens/s per second of the run."""
    title = "Requests/s and output tokens/s over time"
    if not rows:
        return _empty(title, "no data")
    t = _col(rows, "second")
    fig, ax = _fig()
    ax.plot(t, _col(rows, "requests_per_s"), color=BLUE, label="requests/s (completed)")
    errors = _col(rows, "errors")
    if np.nansum(errors) > 0:
        ax.plot(t, errors, color=RED, label="errors/s")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.grid(False)
    ax2.spines["right"].set_visible(True)
    ax2.plot(t, _col(rows, "output_tokens_per_s"), color=GREEN, label="output tokens/s")
    ax2.set_ylabel("output tokens/s")
    ax2.set_ylim(bottom=0)
    l1, lab1 = ax.get_legend_handles_labels()
    l2, lab2 = ax2.get_legend_handles_labels()
    ax.legend(l1 + l2, lab1 + lab2, frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title, loc="left")
    return _svg(fig)


def errors_by_kind(errors: Mapping[str, int]) -> str:
    """One bar per error kind, the most frequent at the top, labelled with its count."""
    title = "Errors by kind"
    if not errors:
        return _empty(title, "no errors")
    items = sorted(errors.items(), key=lambda kv: kv[1])
    fig, ax = _fig(height=max(1.6, 0.35 * len(items) + 0.8))
    ax.barh([k for k, _ in items], [v for _, v in items], color=RED)
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set_xlabel("requests")
    ax.set_title(title, loc="left")
    return _svg(fig)


def against_rate(
    title: str, levels: Sequence[Mapping[str, Any]], key: str, unit: str = "ms"
) -> str:
    """p50 and p95 of one metric against each sweep level's offered rate."""
    if not levels:
        return _empty(title, "no data")
    x = np.array([float(lv["offered_rate"]) for lv in levels])
    fig, ax = _fig()
    for pct, color in (("p50", BLUE), ("p95", ORANGE)):
        y = np.array([np.nan if lv[key].get(pct) is None else lv[key][pct] for lv in levels])
        ax.plot(x, y, color=color, marker="o", ms=4, label=pct)
    ax.set_xlabel("offered rate, requests/s")
    ax.set_ylabel(unit)
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, loc="left")
    return _svg(fig)


def throughput_against_rate(levels: Sequence[Mapping[str, Any]]) -> str:
    """Achieved requests/s (and output tokens/s) against the offered rate."""
    title = "Throughput against offered rate"
    if not levels:
        return _empty(title, "no data")
    x = np.array([float(lv["offered_rate"]) for lv in levels])
    fig, ax = _fig()
    ax.plot(x, x, color=GREY, linestyle=":", linewidth=1, label="offered")
    y = np.array([np.nan if lv["achieved_rate"] is None else lv["achieved_rate"] for lv in levels])
    ax.plot(x, y, color=BLUE, marker="o", ms=4, label="achieved requests/s")
    ax.set_xlabel("offered rate, requests/s")
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.grid(False)
    ax2.spines["right"].set_visible(True)
    tok = [
        np.nan if lv["output_tokens_per_s"] is None else lv["output_tokens_per_s"] for lv in levels
    ]
    ax2.plot(x, tok, color=GREEN, marker=".", label="output tokens/s")
    ax2.set_ylabel("output tokens/s")
    ax2.set_ylim(bottom=0)
    l1, lab1 = ax.get_legend_handles_labels()
    l2, lab2 = ax2.get_legend_handles_labels()
    ax.legend(l1 + l2, lab1 + lab2, frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title, loc="left")
    return _svg(fig)


_RUN_COLORS = (BLUE, ORANGE, GREEN, RED, "#9467bd", "#8c564b", "#e377c2", GREY)


def overlaid(title: str, runs: Sequence[tuple[str, Mapping[float, int] | None]]) -> str:
    """Several runs' distributions of one metric on shared bins (normalised, step outlines)."""
    runs = [(n, c) for n, c in runs if c]
    if not runs:
        return _empty(title, "no data")
    keys_all = np.concatenate([np.array(list(c.keys()), dtype=float) for _, c in runs])
    w_all = np.concatenate([np.array(list(c.values()), dtype=float) for _, c in runs])
    order = np.argsort(keys_all)
    cum = np.cumsum(w_all[order]) / w_all.sum()
    lo = keys_all[order][0]
    hi = keys_all[order][min(len(order) - 1, int(np.searchsorted(cum, 0.999)))]
    if hi <= lo:
        hi = lo + max(1.0, abs(lo) * 0.01)
    bins = np.linspace(lo, hi, 61)
    fig, ax = _fig()
    for i, (name, counts) in enumerate(runs):
        keys = np.clip(np.array(list(counts.keys()), dtype=float), lo, hi)
        weights = np.array(list(counts.values()), dtype=float)
        ax.hist(
            keys,
            bins=bins,
            weights=weights / weights.sum(),
            histtype="step",
            linewidth=1.6,
            color=_RUN_COLORS[i % len(_RUN_COLORS)],
            label=name,
        )
    ax.set_title(title, loc="left")
    ax.set_xlabel("ms")
    ax.set_ylabel("share of values")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)
