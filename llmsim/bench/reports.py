"""Turn a finished run directory into summary.json, summary.md, timeseries.csv and report.html."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmsim.bench import report_files, report_html
from llmsim.bench.config import BenchConfig
from llmsim.bench.request_log import RequestLog, load_request_log
from llmsim.bench.slo import evaluate_slos
from llmsim.bench.summary import build_summary

if TYPE_CHECKING:
    from llmsim.bench.run import RunState

LLM_METRICS = "llm_metrics.json"
REQUESTS = "requests.csv"
LOCUST_JSON = "locust_stats.json"
# Beyond this the load generator's own error is large enough to distort what it reports.
FIDELITY_P99_WARN_MS = 10.0
CPU_WARN_PERCENT = 90.0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def users_by_second(llm: Any, t0: float | None) -> dict[int, int] | None:
    """Users at each second of the run, from the master's samples in llm_metrics.json."""
    series = (llm or {}).get("series") if isinstance(llm, dict) else None
    if not series or t0 is None or "t" not in series or "users" not in series:
        return None
    base = math.floor(t0)
    return {
        int(t) - base: int(u)
        for t, u in zip(series["t"], series["users"], strict=False)
        if t >= base
    }


def warnings_for(summary: dict[str, Any], state: RunState, locust_status: int | None) -> list[str]:
    out = []
    client = summary.get("client") or {}
    if state.cpu_warnings or (client.get("locust_cpu_max") or 0) > CPU_WARN_PERCENT:
        out.append(
            "Locust's CPU passed 90 % during the run: the load generator was saturated and its "
            "latency figures include its own queueing. Use --processes, or fewer users."
        )
    if state.worker_cpu_max > CPU_WARN_PERCENT:
        out.append(
            f"A Locust worker's CPU reached {state.worker_cpu_max:.0f} %: its timings include "
            "its own queueing."
        )
    fid = (summary.get("fidelity") or {}).get("ttft_ms") or {}
    p99 = fid.get("p99")
    if p99 is not None and abs(p99) > FIDELITY_P99_WARN_MS:
        out.append(
            f"Fidelity p99 is {p99:.1f} ms: some first tokens were seen more than "
            f"{FIDELITY_P99_WARN_MS:g} ms later than the simulator planned, so the client or the "
            f"simulator was short of CPU at times ({_cpu_story(client)})."
        )
    other = client.get("other_busy_cores")
    if other is not None and other >= 0.5:
        out.append(
            f"Other processes kept {other:.1f} of the machine's {client.get('machine_cores')} "
            "cores busy during the run: the figures include their interference."
        )
    if summary.get("interrupted"):
        out.append("The run was interrupted (Ctrl-C): the figures cover what ran until then.")
    if locust_status not in (0, None):
        out.append(f"Locust exited with status {locust_status}; see locust.log.")
    req = summary.get("requests") or {}
    if req.get("total") and req.get("failed") and req["failed"] / req["total"] > 0.05:
        out.append(f"{req['failed']} of {req['total']} requests failed; see Errors.")
    return out


def _cpu_story(client: dict[str, Any]) -> str:
    """Mean and peak CPU of the simulator and Locust processes, as one phrase."""
    parts = []
    for p in client.get("processes") or []:
        if p["role"] == "bench":
            continue
        parts.append(
            f"{p['role']} {p.get('cpu_percent_mean') or 0:.0f} % mean, "
            f"{p.get('cpu_percent_max') or 0:.0f} % peak"
        )
    if client.get("other_busy_cores") is not None:
        parts.append(f"other processes {client['other_busy_cores']:.1f} cores")
    return "; ".join(parts) or "no CPU figures"


def distributions(log: RequestLog, llm: Any = None) -> dict[str, dict[float, int]]:
    """Bucket counts per metric: from requests.csv, plus ITL from llm_metrics.json."""
    out = {name: dict(h.counts) for name, h in log.hist.items()}
    histograms = (llm or {}).get("histograms") if isinstance(llm, dict) else None
    itl = (histograms or {}).get("itl_ms")
    if itl and not out.get("itl_ms"):
        out["itl_ms"] = {float(k): int(c) for k, c in itl}
    return out


def write_reports(
    run_dir: Path,
    cfg: BenchConfig,
    *,
    target: str,
    target_kind: str,
    state: RunState,
    client: dict[str, Any],
    locust_status: int | None,
    simulator: dict[str, Any] | None,
) -> dict[str, Any]:
    llm = _read_json(run_dir / LLM_METRICS)
    t0 = state.started or (llm or {}).get("start_time")
    log = load_request_log(run_dir / REQUESTS, t0)
    locust_stats = _read_json(run_dir / LOCUST_JSON)

    locust_cpu = [
        p.get("cpu_percent_max") or 0
        for p in client.get("processes", [])
        if p["role"].startswith("locust")
    ]
    client = {
        **client,
        "locust_cpu_max": max([state.master_cpu_max, *locust_cpu], default=None),
        "cpu_warnings": state.cpu_warnings,
        "worker_cpu_max": state.worker_cpu_max or None,
        "locust_exit_code": locust_status,
    }
    models = sorted({w["model"] for w in state.workload.values() if w.get("model")})
    model = cfg.model or (", ".join(models) if models else None)
    config = {**cfg.to_dict(), "workload": state.workload or None}
    summary = build_summary(
        config=config,
        llm=llm,
        log=log,
        locust_stats=locust_stats,
        target=target,
        target_kind=target_kind,
        started=state.started,
        ended=state.stopped,
        interrupted=state.interrupted,
        client=client,
        users_peak=state.users_peak or ((llm or {}).get("users") or {}).get("max"),
        model=model,
        simulator=simulator,
        label=cfg.label,
    )
    summary["slo"] = evaluate_slos(cfg.slos, summary)
    req = summary["requests"]
    if not req.get("ok"):
        summary["status"], summary["exit_code"] = "no_requests", 1
    elif not summary["slo"]["passed"]:
        summary["status"], summary["exit_code"] = "slo_failed", 1
    else:
        summary["status"], summary["exit_code"] = "passed", 0
    summary["warnings"] = warnings_for(summary, state, locust_status)

    series = log.series(users_by_second(llm, log.t0))
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    for name in ("summary.json", "summary.md", "timeseries.csv", "report.html"):
        if name not in files:
            files.append(name)
    summary["files"] = sorted(files)

    report_files.write_timeseries(run_dir / "timeseries.csv", series)
    (run_dir / "summary.md").write_text(report_files.markdown(summary), "utf-8")
    page = report_html.render(summary, series, distributions(log, llm), summary["files"])
    (run_dir / "report.html").write_text(page, "utf-8")
    report_files.write_json(run_dir / "summary.json", summary)
    return summary
