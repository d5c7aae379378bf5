"""The "LLM" tab of Locust's web UI, and its CSV download.

Locust renders extra table tabs from template args (extended_tabs / extended_tables /
extended_csv_files) and fills them from an `extended_stats` list in /stats/requests, which we add
in an after_request hook (Locust's examples/extend_web_ui.py does the same).
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from flask import Response, make_response, request

from llmsim.load.runtime import LLMRuntime

TAB_KEY = "llm"
CSV_ROUTE = "/llm/csv"

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
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([key for key, _ in COLUMNS])
    for row in rows:
        w.writerow([row.get(key, "") for key, _ in COLUMNS])
    return buf.getvalue()


def install_web_ui(web_ui: Any, rt: LLMRuntime) -> None:
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
        return response

    @web_ui.auth_required_if_enabled
    def _llm_csv() -> Response:
        resp = make_response(rows_csv(table_rows(rt)))
        resp.headers["Content-Type"] = "text/csv"
        name = f"llm_metrics_{int(time.time())}.csv"
        resp.headers["Content-Disposition"] = f"attachment;filename={name}"
        return resp

    app.add_url_rule(CSV_ROUTE, "llmsim_llm_csv", _llm_csv)
