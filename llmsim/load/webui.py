"""The "LLM" tab of Locust's web UI, its CSV download, and the live LLM charts page.

Locust renders extra table tabs from template args (extended_tabs / extended_tables /
extended_csv_files) and fills them from an `extended_stats` list in /stats/requests, which we add
in an after_request hook (Locust's examples/extend_web_ui.py does the same).

Charts need more than a table tab (Locust's own Charts tab is a build of its React app), so
/llm/charts is a page of its own, linked from every page of the UI: uPlot (vendored, MIT, in
static/uplot) drawing /llm/series, the runtime's timeline (llmsim/load/timeline.py).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from flask import Response, make_response, request

from llmsim.load.runtime import LLMRuntime

TAB_KEY = "llm"
CSV_ROUTE = "/llm/csv"
CHARTS_ROUTE = "/llm/charts"
STATIC = Path(__file__).resolve().parent / "static"
_FILES = {
    "charts": ("llm.html", "text/html; charset=utf-8"),
    "uplot.js": ("uplot/uPlot.iife.min.js", "application/javascript"),
    "uplot.css": ("uplot/uPlot.min.css", "text/css"),
}
# A link to the charts on every page of Locust's UI (its React app owns the rest of the DOM).
CHARTS_LINK = (
    '<a href="./llm/charts" target="_blank" id="llmsim-charts" style="position:fixed;'
    "right:24px;top:74px;z-index:2000;background:#1f77b4;color:#fff;padding:8px 14px;"
    "border-radius:18px;font:600 13px system-ui,sans-serif;text-decoration:none;"
    'box-shadow:0 2px 6px rgba(0,0,0,.3)">LLM charts ↗</a>'
)

COLUMNS = (
    ("metric", "Metric"),
    ("count", "Count"),
    ("mean", "Mean"),
    ("min", "Min"),
    ("p50", "p50"),
    ("p90", "p90"),
    ("p95", "p95"),
    ("p99", "p99"),
    ("max", "Max"),
    ("value", "Value"),
)

_DISTRIBUTIONS = (
    ("ttft_ms", "TTFT (ms)"),
    ("itl_ms", "ITL, inter-token gap (ms)"),
    ("tpot_ms", "TPOT (ms)"),
    ("e2e_ms", "E2E (ms)"),
    ("fidelity_ttft_ms", "TTFT minus server plan (ms)"),
    ("output_tokens_per_s", "Output tokens/s per request"),
)


def _num(v: float | None, digits: int = 1) -> Any:
    return "" if v is None else round(v, digits)


def table_rows(rt: LLMRuntime, now: float | None = None) -> list[dict[str, Any]]:
    """The rows the tab and the CSV show."""
    m = rt.metrics
    rows: list[dict[str, Any]] = []
    for key, label in _DISTRIBUTIONS:
        h = m.hist[key]
        if key == "fidelity_ttft_ms" and not h.count:
            continue  # the target sends no plan (not llmsim)
        s = h.summary()
        rows.append(
            {
                "metric": label,
                "count": h.count,
                **{k: _num(s[k]) for k in ("mean", "min", "p50", "p90", "p95", "p99", "max")},
                "value": "",
            }
        )
    rates = m.current_rates(now)
    run = m.run_rates(rt.start_time, rt.end_time or time.time())
    source = m.token_source() or "-"

    def scalar(label: str, value: Any) -> None:
        rows.append({**{k: "" for k, _ in COLUMNS}, "metric": label, "value": value})

    scalar("Requests/s (last 10 s)", _num(rates["requests_per_s"], 2))
    scalar("Input tokens/s (last 10 s)", _num(rates["input_tokens_per_s"]))
    scalar("Output tokens/s (last 10 s)", _num(rates["output_tokens_per_s"]))
    scalar("Output tokens/s (whole run)", _num(run["output_tokens_per_s"]))
    scalar("In-flight streams", m.total_in_flight())
    scalar(f"Input tokens, total ({source})", m.input_tokens)
    scalar(f"Output tokens, total ({source})", m.output_tokens)
    scalar("Requests, total", m.requests)
    scalar("Failed requests", m.failed)
    for kind, n in sorted(m.errors.items()):
        scalar(f"Errors: {kind}", n)
    return rows


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """The tab's rows as CSV text: a header of the COLUMNS keys, then one line per row."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([key for key, _ in COLUMNS])
    for row in rows:
        w.writerow([row.get(key, "") for key, _ in COLUMNS])
    return buf.getvalue()


def install_web_ui(web_ui: Any, rt: LLMRuntime) -> None:
    """Add the LLM tab, its CSV download and the charts page to Locust's web UI.

    An after_request hook adds the tab's rows to /stats/requests and the charts link to HTML pages;
    /llm/charts, /llm/series, /llm/csv and the uPlot assets get routes of their own.
    """
    web_ui.template_args["extended_tabs"] = [{"title": "LLM", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB_KEY, "structure": [{"key": k, "title": t} for k, t in COLUMNS]}
    ]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "." + CSV_ROUTE, "title": "Download LLM metrics CSV"}
    ]

    app = web_ui.app

    @app.after_request
    def _add_llm_stats(response: Response) -> Response:
        if request.path.rstrip("/").endswith("/stats/requests") and response.is_json:
            data = json.loads(response.get_data())
            data["extended_stats"] = [{"key": TAB_KEY, "data": table_rows(rt)}]
            response.set_data(json.dumps(data))
        elif (
            response.mimetype == "text/html"
            and not request.path.startswith("/llm/")
            and not response.direct_passthrough
        ):
            page = response.get_data(as_text=True)
            if "</body>" in page and "llmsim-charts" not in page:
                response.set_data(page.replace("</body>", CHARTS_LINK + "</body>", 1))
        return response

    def _file(name: str) -> Response:
        path, ctype = _FILES[name]
        resp = make_response((STATIC / path).read_bytes())
        resp.headers["Content-Type"] = ctype
        return resp

    @web_ui.auth_required_if_enabled
    def _charts() -> Response:
        return _file("charts")

    @web_ui.auth_required_if_enabled
    def _asset(name: str) -> Response:
        if name not in ("uplot.js", "uplot.css"):
            return make_response(("not found", 404))
        return _file(name)

    @web_ui.auth_required_if_enabled
    def _series() -> Response:
        try:
            since = float(request.args.get("since", "0") or 0)
        except ValueError:
            since = 0.0
        points = rt.timeline.since(since)
        first = rt.timeline.points[0]["t"] if rt.timeline.points else None
        runner = rt.environment.runner
        body = {
            "points": points,
            # The page has points of an earlier run: start over.
            "reset": bool(since and first is not None and first > since + 60),
            "state": getattr(runner, "state", ""),
        }
        resp = make_response(json.dumps(body))
        resp.headers["Content-Type"] = "application/json"
        return resp

    app.add_url_rule(CHARTS_ROUTE, "llmsim_llm_charts", _charts)
    app.add_url_rule("/llm/<name>", "llmsim_llm_asset", _asset)
    app.add_url_rule("/llm/series", "llmsim_llm_series", _series)

    @web_ui.auth_required_if_enabled
    def _llm_csv() -> Response:
        resp = make_response(rows_csv(table_rows(rt)))
        resp.headers["Content-Type"] = "text/csv"
        name = f"llm_metrics_{int(time.time())}.csv"
        resp.headers["Content-Disposition"] = f"attachment;filename={name}"
        return resp

    app.add_url_rule(CSV_ROUTE, "llmsim_llm_csv", _llm_csv)
