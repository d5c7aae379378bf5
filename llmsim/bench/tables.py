"""The summary as tables: shared by summary.md, report.html and the terminal, so they agree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LATENCY_ROWS = (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms"))
LATENCY_COLS = ("p50", "p90", "p95", "p99", "mean", "min", "max", "count")

Table = tuple[list[str], list[list[str]]]


def fmt_ms(v: Any) -> str:
    """Milliseconds for a table: no decimals from 100, one from 10, else two; `-` for None."""
    if v is None:
        return "-"
    v = float(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_num(v: Any, digits: int = 1) -> str:
    """A number with thousands separators and `digits` decimals; an int (or, with digits 0, a
    whole float) without decimals; `-` for None."""
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and digits == 0):
        return f"{int(v):,}"
    return f"{float(v):,.{digits}f}"


def latency_table(s: Mapping[str, Any]) -> Table:
    """TTFT, ITL, TPOT and E2E rows: p50 to max in ms, then the count."""
    rows = []
    for label, key in LATENCY_ROWS:
        block = s.get(key) or {}
        rows.append(
            [label]
            + [fmt_ms(block.get(c)) for c in LATENCY_COLS[:-1]]
            + [fmt_num(block.get("count") or 0, 0)]
        )
    return ["ms", *LATENCY_COLS], rows


def fidelity_table(s: Mapping[str, Any]) -> Table | None:
    """Measured TTFT, planned TTFT and their difference (ms), plus the quiet seconds' figures
    when the run has them; None for a run without fidelity."""
    fid = s.get("fidelity")
    if not fid:
        return None
    rows = []
    for label, block in (
        ("measured TTFT", s.get("ttft_ms")),
        ("planned TTFT", fid.get("planned_ttft_ms")),
        ("measured − planned", fid.get("ttft_ms")),
    ):
        block = block or {}
        rows.append([label] + [fmt_ms(block.get(c)) for c in ("p50", "p90", "p95", "p99", "max")])
    quiet = fid.get("quiet_seconds")
    if quiet:  # the hypervisor or other processes took CPU at times: the seconds they did not
        label = f"… quiet seconds only ({quiet['seconds']:.0f} s, {quiet['count']:,} requests)"
        rows.append([label] + [fmt_ms(quiet.get(c)) for c in ("p50", "p90", "p95", "p99", "max")])
    return ["ms", "p50", "p90", "p95", "p99", "max"], rows


def run_table(s: Mapping[str, Any]) -> Table:
    """The run's facts as label/value rows: target, model, load, duration, headline window,
    requests, failures, goodput, dropped arrivals, tokens and start time."""
    req = s.get("requests") or {}
    tok = s.get("tokens") or {}
    rate = req.get("error_rate")
    peak = s.get("users_peak")
    cfg = s.get("config") or {}
    if cfg.get("trace"):
        load = ["load", f"trace {cfg['trace']} (open loop)"]
    elif cfg.get("rate") is not None:
        load = ["load", f"{fmt_num(cfg['rate'], 2)} requests/s, {cfg.get('arrival')} (open loop)"]
    else:
        load = ["users", f"{s.get('users')} (peak {'-' if peak is None else peak})"]
    win = s.get("window") or {}
    rows = [
        ["target", f"{s.get('target')} ({s.get('target_kind')})"],
        ["model", str(s.get("model") or "-")],
        load,
        [
            "duration",
            f"{fmt_num(s.get('duration_s'))} s"
            + (" (interrupted)" if s.get("interrupted") else ""),
        ],
        ["requests", f"{fmt_num(req.get('total'), 0)} ({fmt_num(req.get('per_s'), 2)}/s)"],
        ["failed", f"{fmt_num(req.get('failed'), 0)}" + (f" ({100 * rate:.2f} %)" if rate else "")],
        [
            "output tokens",
            f"{fmt_num(tok.get('output_total'), 0)} ({fmt_num(tok.get('output_per_s'))}/s)",
        ],
        [
            "input tokens",
            f"{fmt_num(tok.get('input_total'), 0)} ({fmt_num(tok.get('input_per_s'))}/s)",
        ],
        ["token counts from", str(tok.get("source") or "-")],
        ["started", str(s.get("started_at"))],
    ]
    if win:
        rows.insert(
            4,
            [
                "headline figures",
                f"{win.get('basis')}: {fmt_num(win.get('start_s'))} s to "
                f"{fmt_num((win.get('start_s') or 0) + (win.get('duration_s') or 0))} s; "
                f"latency from {win.get('latency_from')}",
            ],
        )
    if req.get("dropped"):
        rows.insert(6, ["dropped (max in flight)", fmt_num(req["dropped"], 0)])
    good = s.get("goodput")
    if good:
        frac = good.get("fraction")
        rows.insert(
            6,
            [
                "goodput",
                f"{fmt_num(good.get('per_s'), 2)}/s ({'-' if frac is None else f'{100 * frac:.1f}'}"
                f" % of requests met {', '.join(good.get('objectives') or [])})",
            ],
        )
    return ["", ""], rows


def by_name_table(s: Mapping[str, Any]) -> Table | None:
    """One row per request name (mixed workloads): count, failures, TTFT/TPOT/E2E p50 and p95."""
    names = s.get("by_name") or {}
    if len(names) < 2:
        return None
    rows = []
    for name, b in names.items():
        cells = [name, fmt_num(b.get("requests"), 0), fmt_num(b.get("failed"), 0)]
        for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
            st = b.get(key) or {}
            cells += [fmt_ms(st.get("p50")), fmt_ms(st.get("p95"))]
        rows.append(cells)
    head = ["name", "requests", "failed", "TTFT p50", "p95", "TPOT p50", "p95", "E2E p50", "p95"]
    return head, rows


def errors_table(s: Mapping[str, Any]) -> Table | None:
    """One row per error kind, most frequent first, with its first message; None if none."""
    errors = s.get("errors") or {}
    if not errors:
        return None
    samples = s.get("error_samples") or {}
    rows = [
        [k, fmt_num(v, 0), samples.get(k, "")]
        for k, v in sorted(errors.items(), key=lambda kv: -kv[1])
    ]
    return ["error", "count", "first message"], rows


def slo_table(s: Mapping[str, Any]) -> Table | None:
    """One row per SLO: the expression, the measured value, pass or FAIL; None without SLOs."""
    slo = s.get("slo") or {}
    results = slo.get("results") or []
    if not results:
        return None
    rows = []
    for r in results:
        actual = r.get("actual")
        shown = "no data" if actual is None else _slo_value(actual, r.get("unit"))
        rows.append([r["slo"], shown, "pass" if r["passed"] else "FAIL"])
    return ["SLO", "actual", "result"], rows


def _slo_value(v: float, unit: str | None) -> str:
    if unit == "ms":
        return f"{fmt_ms(v)} ms"
    if unit == "fraction":
        return f"{100 * v:.3g} %"
    if unit == "count":  # requests, failures: whole numbers, not "1.0"
        return fmt_num(v, 0)
    return fmt_num(v, 1)


def client_table(s: Mapping[str, Any]) -> Table | None:
    """Mean and peak CPU (% of a core) and peak RSS (MB) of each process bench watched, and
    the CPU other processes and the hypervisor took; None without process figures."""
    client = s.get("client") or {}
    procs = client.get("processes") or []
    if not procs:
        return None
    rows = [
        [
            p["role"],
            str(p["pid"]),
            fmt_num(p.get("cpu_percent_mean")),
            fmt_num(p.get("cpu_percent_max")),
            fmt_num(p.get("rss_peak_mb")),
        ]
        for p in procs
    ]
    other = client.get("other_busy_cores")
    if other is not None:
        rows.append(["everything else on the machine", "", fmt_num(100 * other), "", ""])
    stolen = client.get("stolen_cores")
    if stolen:
        rows.append(["taken by the hypervisor (steal)", "", fmt_num(100 * stolen), "", ""])
    return ["process", "pid", "CPU % mean", "CPU % max", "peak RSS MB"], rows


def markdown(table: Table) -> str:
    """The table in Markdown, `|` in cells escaped."""
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def plain(table: Table, indent: str = "  ") -> str:
    """The table as aligned text for a terminal, first column left, the rest right; a rule
    under the header, and no header line when it is all blank."""
    head, rows = table
    all_rows = [head, *rows] if any(head) else rows
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(head))]
    out = []
    for n, row in enumerate(all_rows):
        cells = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        out.append(indent + "  ".join(cells).rstrip())
        if n == 0 and any(head):
            out.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(out)
