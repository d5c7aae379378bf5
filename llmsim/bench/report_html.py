"""report.html: one self-contained page (inline CSS and SVG, no script) that opens offline."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmsim.bench import plots, tables
from llmsim.bench.report_files import verdict

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#5b6472}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:13px}
.pass{background:#dff3e4;color:#17692e}.fail{background:#fbe0e0;color:#a11d1d}
.none{background:#e8ebf0;color:#3c4452}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}.card span{color:#5b6472;font-size:12px}
table{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums}
th,td{border:1px solid #e1e4ea;padding:4px 10px;text-align:right}
th{background:#eef1f5}td:first-child,th:first-child{text-align:left}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(600px,1fr));gap:14px}
.plot{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:8px}
.plot svg{width:100%;height:auto}
.warn{background:#fff4d6;border:1px solid #f0d48a;border-radius:8px;padding:8px 12px;margin:8px 0}
.kv td{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.note{color:#5b6472;font-size:12px;max-width:900px}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(table: tables.Table | None, cls: str = "") -> str:
    if table is None:
        return ""
    head, rows = table
    out = [f'<table class="{cls}">']
    if any(head):
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            style = ' style="color:#a11d1d;font-weight:600"' if cell == "FAIL" else ""
            cells.append(f"<td{style}>{_e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += _flatten(v, key + ".")
        elif v is None or v == [] or v == {}:
            continue
        else:
            out.append((key, v if isinstance(v, str) else json.dumps(v)))
    return out


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'


def _load_card(summary: dict[str, Any]) -> str:
    """The run's load: its users, or in open loop (no users) the offered rate or the trace."""
    users = summary.get("users")
    cfg = summary.get("config") or {}
    if users is None and cfg.get("rate") is not None:
        return _card(f"{float(cfg['rate']):g}/s", f"offered rate ({cfg.get('arrival')})")
    if users is None and cfg.get("trace"):
        speed = cfg.get("trace_speed")
        return _card("trace", f"arrivals{f' at {speed:g}x' if speed else ''}")
    return _card(tables.fmt_num(users), "users")


def render(
    summary: Mapping[str, Any],
    series: Sequence[Mapping[str, Any]],
    distributions: Mapping[str, Mapping[float, int]],
    files: Sequence[str],
) -> str:
    """report.html of one run: verdict, warnings, headline cards, tables, plots, configuration
    and links to `files` (names in the run directory). `distributions` are bucket counts per
    metric (reports.distributions); `series` the timeseries.csv rows."""
    v = verdict(summary)
    cls = "pass" if v == "all SLOs met" else ("none" if v == "no SLO given" else "fail")
    title = "llmsim bench" + (f" — {summary['label']}" if summary.get("label") else "")
    ttft = summary.get("ttft_ms") or {}
    req = summary.get("requests") or {}
    tok = summary.get("tokens") or {}
    fid = summary.get("fidelity") or {}
    cards = [
        _load_card(summary),
        _card(tables.fmt_num(req.get("per_s"), 2), "requests/s"),
        _card(tables.fmt_num(tok.get("output_per_s")), "output tokens/s"),
        _card(f"{tables.fmt_ms(ttft.get('p50'))} ms", "TTFT p50"),
        _card(f"{tables.fmt_ms(ttft.get('p95'))} ms", "TTFT p95"),
        _card(
            f"{100 * req['error_rate']:.2f} %" if req.get("error_rate") is not None else "-",
            "error rate",
        ),
    ]
    good = summary.get("goodput")
    if good:
        cards.append(_card(tables.fmt_num(good.get("per_s"), 2), "goodput/s"))
    lag = summary.get("schedule_lag_ms") or {}
    if lag.get("count"):
        cards.append(_card(f"{tables.fmt_ms(lag.get('p99'))} ms", "schedule lag p99"))
    if fid:
        cards.append(
            _card(f"{tables.fmt_ms((fid.get('ttft_ms') or {}).get('p99'))} ms", "fidelity p99")
        )

    planned = distributions.get("planned_ttft_ms")
    svgs = [
        plots.distribution(
            "TTFT distribution",
            distributions.get("ttft_ms"),
            ttft,
            overlay=planned,
            overlay_label="planned by the server",
        ),
        plots.distribution("ITL distribution", distributions.get("itl_ms"), summary.get("itl_ms")),
        plots.ttft_over_time(series),
        plots.throughput_over_time(series),
        plots.errors_by_kind(summary.get("errors") or {}),
    ]
    if fid:
        svgs.append(
            plots.distribution(
                "Fidelity: measured − planned TTFT",
                distributions.get("fidelity_ttft_ms"),
                fid.get("ttft_ms"),
            )
        )

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="sub"><span class="badge {cls}">{_e(v)}</span> &nbsp;'
        f"{_e(summary.get('target'))} · model {_e(summary.get('model') or '-')} · "
        f"started {_e(summary.get('started_at'))} · {_e(summary.get('duration_s'))} s"
        + (" · <b>interrupted</b>" if summary.get("interrupted") else "")
        + "</div>",
    ]
    parts += [f'<div class="warn">⚠ {_e(w)}</div>' for w in summary.get("warnings") or []]
    parts.append('<div class="cards">' + "".join(cards) + "</div>")
    parts += ["<h2>Latency (ms)</h2>", _table(tables.latency_table(summary))]
    parts.append(
        '<p class="note">TTFT: request start to the first content token. ITL: each gap between '
        "content tokens. TPOT: (E2E − TTFT) / (output tokens − 1), per request. E2E: request "
        "start to the last byte.</p>"
    )
    if fid:
        parts += ["<h2>Fidelity: measured minus planned TTFT (ms)</h2>"]
        parts.append(_table(tables.fidelity_table(summary)))
        parts.append(
            '<p class="note">The simulator sends the TTFT it planned for each request; the '
            "difference is this tool's own measurement error. When it grows, the load generator "
            "(or the simulator) is short of CPU and the other figures are not to be trusted.</p>"
        )
    by_name = tables.by_name_table(summary)
    if by_name is not None:
        parts += ["<h2>By request name (ms)</h2>", _table(by_name)]
    slo = tables.slo_table(summary)
    if slo is not None:
        parts += ["<h2>SLOs</h2>", _table(slo)]
    errors = tables.errors_table(summary)
    if errors is not None:
        parts += ["<h2>Errors</h2>", _table(errors, "kv")]
    parts += ["<h2>Plots</h2>", '<div class="grid">']
    parts += [f'<div class="plot">{svg}</div>' for svg in svgs]
    parts.append("</div>")
    parts += ["<h2>Run</h2>", _table(tables.run_table(summary))]
    client = tables.client_table(summary)
    if client is not None:
        parts += ["<h2>Load generator and simulator processes</h2>", _table(client)]
    parts += ["<h2>Configuration</h2>"]
    kv = _flatten(summary.get("config") or {})
    parts.append(_table((["option", "value"], [[k, val] for k, val in kv]), "kv"))
    if files:
        parts += ["<h2>Files</h2>", "<ul>"]
        parts += [f'<li><a href="{_e(f)}">{_e(f)}</a></li>' for f in files]
        parts.append("</ul>")
    parts.append(f'<p class="note">llmsim {_e(summary.get("llmsim_version"))}</p>')
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
