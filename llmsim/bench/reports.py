"""Turn a finished run directory into summary.json, summary.md, timeseries.csv and report.html."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmsim.bench import report_files, report_html
from llmsim.bench.config import BenchConfig
from llmsim.bench.goodput import summary_block as goodput_block
from llmsim.bench.interference import quiet_fidelity
from llmsim.bench.request_log import RequestLog, load_request_log, read_requests, window_of
from llmsim.bench.slo import evaluate_slos
from llmsim.bench.summary import build_summary

CPU_WINDOW_S = 10.0  # as llmsim.bench.run's (not imported: run imports this module)

if TYPE_CHECKING:
    from llmsim.bench.run import RunState

LLM_METRICS = "llm_metrics.json"
REQUESTS = "requests.csv"
LOCUST_JSON = "locust_stats.json"
# Beyond this the load generator's own error is large enough to distort what it reports.
FIDELITY_P99_WARN_MS = 10.0
STEAL_WARN_CORES = 0.1  # the hypervisor's share (steal) from which a run is told about it
# Steal and other processes together, from which the report separates the quiet seconds.
INTERFERENCE_CORES = 0.1
SCHEDULE_LAG_WARN_MS = 10.0


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
    """The `warnings` of summary.json, each one sentence: a saturated load generator, late or
    dropped arrivals, fidelity p99 beyond ±10 ms, CPU taken by other processes or the hypervisor,
    an interrupted run, Locust's non-zero exit, more than 5 % of requests failed."""
    out = []
    client = summary.get("client") or {}
    if state.cpu_warnings:
        out.append(
            f"Locust's CPU averaged {state.cpu_sustained_max:.0f} % over {CPU_WINDOW_S:g} s "
            "during the run: the load generator was saturated and its latency figures include "
            "its own queueing. Use --processes, or less load."
        )
    lag = (summary.get("schedule_lag_ms") or {}).get("p99")
    if lag is not None and lag > SCHEDULE_LAG_WARN_MS:
        out.append(
            f"Schedule lag p99 is {lag:.1f} ms: the client started requests late (they are "
            "charged from their scheduled time). Use --processes, or a lower rate."
        )
    dropped = (summary.get("requests") or {}).get("dropped")
    if dropped:
        out.append(f"{dropped} arrivals were dropped: --max-in-flight was reached.")
    fid = (summary.get("fidelity") or {}).get("ttft_ms") or {}
    p99 = fid.get("p99")
    if p99 is not None and abs(p99) > FIDELITY_P99_WARN_MS:
        own = ((summary.get("fidelity") or {}).get("simulator_lateness_ms") or {}).get(
            "first_event"
        ) or {}
        share = ""
        if own.get("p99_ms") is not None:
            share = (
                f" The simulator's own first events left at most {own['p99_ms']:g} ms late at "
                f"p99 (max {own.get('max_ms') or 0:.1f} ms): the rest is the client's side."
            )
        quiet = (summary.get("fidelity") or {}).get("quiet_seconds")
        if quiet:
            share += (
                f" In the {quiet['seconds']:.0f} s when neither the hypervisor nor other "
                f"processes took CPU, fidelity p50 / p99 was {quiet['p50']:.1f} / "
                f"{quiet['p99']:.1f} ms ({quiet['count']} requests)."
            )
        out.append(
            f"Fidelity p99 is {p99:.1f} ms: some first tokens were seen more than "
            f"{FIDELITY_P99_WARN_MS:g} ms later than the simulator planned, so the client or the "
            f"simulator was short of CPU at times ({_cpu_story(client)}).{share}"
        )
    other = client.get("other_busy_cores")
    if other is not None and other >= 0.5:
        out.append(
            f"Other processes kept {other:.1f} of the machine's {client.get('machine_cores')} "
            "cores busy during the run: the figures include their interference."
        )
    stolen = client.get("stolen_cores")
    if stolen is not None and stolen >= STEAL_WARN_CORES:
        out.append(
            f"The hypervisor ran other work on this machine's cores for {stolen:.2f} cores on "
            "average (steal time): every process here waited for it, so timing figures are "
            "noisier than the CPU columns show."
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
    if (client.get("stolen_cores") or 0) >= 0.05:
        parts.append(f"taken by the hypervisor (steal) {client['stolen_cores']:.2f} cores")
    return "; ".join(parts) or "no CPU figures"


def _open_loop_start(rows: list[Any], t0: float, warmup_s: float, end: float) -> float:
    """Where an open-loop window starts: its warm-up counts from the first scheduled arrival.

    A schedule starts when its user has spawned, which on a busy machine is up to a second
    after the test's start; a window from the test's start would then count that second as
    load that never came (a rate 20-30 % low over a 3 s window). The schedule still ends with
    the run, so the window is shorter by the delay, never past the end.
    """
    first = min((r.scheduled for r in rows if r.scheduled is not None), default=None)
    if first is None or first <= t0:
        return t0 + warmup_s
    return first + warmup_s if first + warmup_s < end else t0 + warmup_s


def _basis(cfg: BenchConfig) -> str:
    if not cfg.warmup_s:
        return "the run's duration"
    if cfg.open_loop:
        return "steady window after the warm-up from the first scheduled arrival"
    return "steady window after the warm-up"


def add_window(
    summary: dict[str, Any],
    cfg: BenchConfig,
    llm: Any,
    requests_csv: Path,
    t0: float | None,
    stopped: float | None,
) -> None:
    """Headline figures for the steady window, whole-run figures beside them, per-name rows,
    goodput, schedule lag, dropped arrivals and the first message of each error kind."""
    llm = llm if isinstance(llm, dict) else {}
    summary["error_samples"] = dict(llm.get("error_samples") or {})
    summary["requests"]["dropped"] = llm.get("dropped") or 0
    lag = ((llm.get("metrics") or {}).get("schedule_lag_ms")) or None
    if t0 is None or not requests_csv.exists():
        summary["window"] = None
        return
    start = t0 + cfg.warmup_s
    end = start + cfg.duration_s
    if stopped is not None and (cfg.web or stopped < end):
        # A run that stopped before its time was up (a trace replayed to its end, Ctrl-C, a
        # sweep level stopped early, every user done with --llm-requests-per-user): its rates
        # are over the time it ran; over the --duration it was given they read several times low.
        end = stopped
    rows = list(read_requests(requests_csv))
    if cfg.open_loop:
        start = _open_loop_start(rows, t0, cfg.warmup_s, end)
    end = max(end, start + 1e-3)
    win, names = window_of(rows, start, end, cfg.goodput)
    span = end - start
    summary["window"] = {
        "start_s": round(start - t0, 3),
        "duration_s": round(span, 3),
        "basis": _basis(cfg),
        "latency_from": "scheduled start" if cfg.open_loop else "request start",
    }
    whole = {k: summary.get(k) for k in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")}
    whole["requests"] = dict(summary["requests"])
    whole["tokens"] = dict(summary["tokens"])
    summary["whole_run"] = whole
    if cfg.warmup_s:
        for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
            summary[name] = win.stats(name) or summary[name]
        summary["itl_ms_basis"] = "whole run (ITL has no per-request row)"
        lag = win.stats("schedule_lag_ms") or lag
        summary["requests"]["window_total"] = win.total
        summary["requests"]["window_failed"] = win.failed
    # Rates over the window only: neither the wind-down after it nor (with --warmup) the ramp.
    summary["requests"]["per_s"] = round(win.completed / span, 3)
    summary["tokens"]["output_per_s"] = round(win.output_tokens / span, 3)
    summary["tokens"]["input_per_s"] = round(win.input_tokens / span, 3)
    summary["schedule_lag_ms"] = lag
    if cfg.goodput:
        summary["goodput"] = goodput_block(cfg.goodput, win.good, win.completed, span)
    summary["by_name"] = {
        name: {
            "requests": sl.total,
            "failed": sl.failed,
            **{k: sl.stats(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms")},
        }
        for name, sl in sorted(names.items())
    }


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
    interference: Sequence[tuple[float, float, float]] | None = None,
) -> dict[str, Any]:
    """Build the summary from the files in `run_dir` and what bench saw, judge the SLOs, set
    `status` and `exit_code`, and write summary.json, summary.md, timeseries.csv and
    report.html; returns the summary. In web mode it runs again each time a run stops."""
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
        # Both sources, not the first that has one: bench's progress samples are a second
        # apart and not aligned to the spawns, so a user started just before the end is seen
        # only by Locust's own per-second samples (and the other way round).
        users_peak=max(state.users_peak, ((llm or {}).get("users") or {}).get("max") or 0) or None,
        model=model,
        simulator=simulator,
        label=cfg.label,
    )
    add_window(summary, cfg, llm, run_dir / REQUESTS, t0, state.stopped)
    outside = (client.get("stolen_cores") or 0) + (client.get("other_busy_cores") or 0)
    if (
        summary.get("fidelity")
        and interference
        and outside >= INTERFERENCE_CORES
        and (run_dir / REQUESTS).exists()
    ):
        # Steal and other processes come in bursts: what the run measured without them.
        summary["fidelity"]["quiet_seconds"] = quiet_fidelity(
            read_requests(run_dir / REQUESTS), interference
        )
    # A sweep level stopped early because it was plainly over-saturated: why, else null.
    summary["stopped_early"] = state.oversaturated
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
