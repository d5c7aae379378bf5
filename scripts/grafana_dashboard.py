"""Write llmsim/data/grafana-dashboard.json, the Grafana dashboard shipped with the package.

The panels are declared here, compactly; the JSON is what Grafana imports (Dashboards → New →
Import, then pick the Prometheus data source). tests/test_security_ops.py checks that every
metric a query names exists in `llmsim serve`'s /metrics. Rerun after changing a panel:

    python scripts/grafana_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "llmsim" / "data" / "grafana-dashboard.json"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = '{model_name=~"$model"}'


def quantiles(metric: str) -> list[tuple[str, str]]:
    """p50/p95/p99 of a vLLM-style histogram, for the selected models."""
    return [
        (
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{SEL}[$__rate_interval])))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def rate(metric: str, by: str = "model_name", sel: str = SEL) -> str:
    """PromQL: the per-second rate of `metric` over Grafana's rate interval, summed by `by`."""
    return f"sum by ({by}) (rate({metric}{sel}[$__rate_interval]))"


# (row title, [(panel title, unit, [(expr, legend)])]). The engine row needs `--engine vllm`.
ROWS = [
    (
        "Traffic",
        [
            ("Requests / s", "reqps", [(rate("llmsim_requests_total"), "{{model_name}}")]),
            (
                "Succeeded / s by finish reason",
                "reqps",
                [(rate("vllm:request_success_total", "finished_reason"), "{{finished_reason}}")],
            ),
            ("Failed / s", "reqps", [(rate("llmsim_requests_failed_total"), "{{model_name}}")]),
            (
                "Tokens / s",
                "short",
                [
                    (f"sum (rate(vllm:prompt_tokens_total{SEL}[$__rate_interval]))", "prompt"),
                    (
                        f"sum (rate(vllm:generation_tokens_total{SEL}[$__rate_interval]))",
                        "generation",
                    ),
                ],
            ),
        ],
    ),
    (
        "Latency",
        [
            ("Time to first token", "s", quantiles("vllm:time_to_first_token_seconds")),
            ("Time per output token", "s", quantiles("vllm:time_per_output_token_seconds")),
            ("End-to-end latency", "s", quantiles("vllm:e2e_request_latency_seconds")),
        ],
    ),
    (
        "Capacity, limits and faults",
        [
            (
                "Running and waiting",
                "short",
                [
                    (f"sum (vllm:num_requests_running{SEL})", "running"),
                    (f"sum (vllm:num_requests_waiting{SEL})", "waiting"),
                ],
            ),
            (
                "Refused / s",
                "reqps",
                [
                    (rate("llmsim_throttled_total", "type", ""), "rate limit: {{type}}"),
                    ("sum (rate(llmsim_queue_overflow_total[$__rate_interval]))", "queue full"),
                ],
            ),
            (
                "Errors and injected faults / s",
                "reqps",
                [
                    (rate("llmsim_errors_total", "kind", ""), "{{kind}}"),
                    (rate("llmsim_faults_total", "kind", ""), "fault {{kind}}"),
                ],
            ),
        ],
    ),
    (
        "Engine (llmsim serve --engine vllm)",
        [
            ("KV cache usage", "percentunit", [("max (vllm:kv_cache_usage_perc)", "used")]),
            (
                "Prefix cache hit rate",
                "percentunit",
                [
                    (
                        "sum (rate(vllm:prefix_cache_hits_total[$__rate_interval])) / "
                        "sum (rate(vllm:prefix_cache_queries_total[$__rate_interval]))",
                        "hits",
                    )
                ],
            ),
            (
                "Preemptions / s",
                "short",
                [("sum (rate(vllm:num_preemptions_total[$__rate_interval]))", "preempted")],
            ),
            ("Queue time", "s", quantiles("vllm:request_queue_time_seconds")),
            ("Prefill time", "s", quantiles("vllm:request_prefill_time_seconds")),
            ("Decode time", "s", quantiles("vllm:request_decode_time_seconds")),
            ("Inter-token latency", "s", quantiles("vllm:inter_token_latency_seconds")),
            (
                "Tokens per engine step",
                "short",
                [
                    (
                        "sum (rate(vllm:iteration_tokens_total_sum[$__rate_interval])) / "
                        "sum (rate(vllm:iteration_tokens_total_count[$__rate_interval]))",
                        "mean",
                    )
                ],
            ),
        ],
    ),
]


def dashboard() -> dict:
    """The dashboard as Grafana's JSON model (schema 39: Grafana 10 and later)."""
    panels: list[dict] = []
    y = 0
    pid = 1
    for title, row in ROWS:
        panels.append(
            {
                "type": "row",
                "id": pid,
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        for i, (name, unit, targets) in enumerate(row):
            panels.append(
                {
                    "type": "timeseries",
                    "id": pid,
                    "title": name,
                    "datasource": DS,
                    "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {
                            "datasource": DS,
                            "expr": expr,
                            "legendFormat": legend,
                            "refId": chr(65 + j),
                        }
                        for j, (expr, legend) in enumerate(targets)
                    ],
                }
            )
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "title": "llmsim",
        "uid": "llmsim",
        "description": "llmsim serve's /metrics: vLLM's metric names plus llmsim_* counters.",
        "tags": ["llmsim", "vllm", "llm"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-15m", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": DS,
                    "query": "label_values(llmsim_requests_total, model_name)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                }
            ]
        },
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n", "utf-8")
    print(f"wrote {OUT}")
