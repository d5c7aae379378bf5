"""How faithful `llmsim bench` is on this machine, and where it stops being so.

Runs `llmsim bench --users 500 --duration 60s` against the embedded simulator with the gpt-5
profile, then a sweep of --users, and prints for each run:

- wall time against duration + 15 s;
- TTFT p50 measured by the client against the server's planned TTFT p50 (error in %);
- fidelity (measured minus planned TTFT, per request): p50 and p99, over the whole run and over
  the steady state after the ramp-up;
- CPU of each process (mean over the run, % of one core) and peak RSS of all of them together;
- CPU used on the machine by anything else during the run (a shared machine skews every figure).

Targets (issue 4): wall <= duration + 15 s, |TTFT p50 error| <= 2 %, fidelity p99 <= 10 ms,
each process <= 80 % of a core, peak RSS of all processes <= 600 MB.

    python benchmarks/bench_fidelity.py                       # 500 users 60 s, then the sweep
    python benchmarks/bench_fidelity.py --sweep ""            # the 500-user run only
    python benchmarks/bench_fidelity.py --users 500 --duration 20 --sweep 250,1000 --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"wall_margin_s": 15.0, "ttft_p50_error_pct": 2.0, "fidelity_p99_ms": 10.0}
CPU_LIMIT, RSS_LIMIT_MB = 80.0, 600.0


def percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank `pct` percentile of `values`; None when there are none."""
    if not values:
        return None
    values = sorted(values)
    return values[max(0, math.ceil(len(values) * pct / 100) - 1)]


def steady_fidelity(run_dir: Path, ramp_end: float) -> dict[str, Any]:
    """Fidelity of requests that started after every user was running."""
    errors = []
    with open(run_dir / "requests.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok" or not row["planned_ttft_ms"] or not row["ttft_ms"]:
                continue
            if float(row["start_time"]) >= ramp_end:
                errors.append(float(row["ttft_ms"]) - float(row["planned_ttft_ms"]))
    return {"count": len(errors), "p50": percentile(errors, 50), "p99": percentile(errors, 99)}


def run_once(users: int, duration: int, extra: list[str]) -> dict[str, Any]:
    """Run `llmsim bench` once (`users` users for `duration` s, gpt-5 profile, `extra` passed
    on, no LLMSIM_ variables) and return its figures: wall time (s), throughput, TTFT p50
    against the plan, fidelity over the run and in the steady state, each process's CPU and
    the peak RSS. Exits if bench itself fails (any status but 0 or 1)."""
    reports = Path(tempfile.mkdtemp(prefix="llmsim-fidelity-"))
    cmd = [
        sys.executable, "-m", "llmsim", "bench", "--users", str(users),
        "--duration", f"{duration}s", "--profile", "gpt-5", "--model", "gpt-5",
        "--reports-dir", str(reports), "--json", "--no-progress", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSIM_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    wall = time.monotonic() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    summary = json.loads(proc.stdout)
    run_dir = next(p for p in reports.iterdir() if p.is_dir())

    procs = summary["client"]["processes"]
    fid = summary.get("fidelity") or {}
    spawn_rate = summary["config"]["spawn_rate"]
    ramp_end = summary_start(summary) + users / spawn_rate
    return {
        "users": users,
        "duration_s": duration,
        "wall_s": round(wall, 1),
        "requests": summary["requests"]["total"],
        "failed": summary["requests"]["failed"],
        "requests_per_s": summary["requests"]["per_s"],
        "output_tokens_per_s": summary["tokens"]["output_per_s"],
        "ttft_p50_ms": summary["ttft_ms"]["p50"],
        "planned_ttft_p50_ms": (fid.get("planned_ttft_ms") or {}).get("p50"),
        "ttft_p50_error_pct": fid.get("ttft_p50_error_pct"),
        "fidelity_p50_ms": (fid.get("ttft_ms") or {}).get("p50"),
        "fidelity_p99_ms": (fid.get("ttft_ms") or {}).get("p99"),
        "steady_fidelity": steady_fidelity(run_dir, ramp_end),
        "processes": [
            {k: p[k] for k in ("role", "cpu_percent_mean", "cpu_percent_max", "rss_peak_mb")}
            for p in procs
        ],
        "rss_peak_total_mb": summary["client"]["rss_peak_total_mb"],
        "locust_cpu_warnings": summary["client"]["cpu_warnings"],
        "other_cpu_cores": summary["client"].get("other_busy_cores"),
        "stolen_cores": summary["client"].get("stolen_cores"),
        "warnings": summary.get("warnings", []),
        "report": str(run_dir / "report.html"),
    }


def summary_start(summary: dict[str, Any]) -> float:
    """When the bench run started (its summary's `started_at`), as a Unix time in s."""
    import datetime as dt

    return dt.datetime.fromisoformat(summary["started_at"]).timestamp()


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    """Which of the issue-4 targets one run met: wall time, TTFT p50 error, fidelity p99,
    every process's mean CPU and the peak RSS of all of them."""
    cpu_ok = all((p["cpu_percent_mean"] or 0) <= CPU_LIMIT for p in r["processes"])
    err = r["ttft_p50_error_pct"]
    p99 = r["fidelity_p99_ms"]
    return {
        "wall": r["wall_s"] <= r["duration_s"] + TARGETS["wall_margin_s"],
        "ttft_p50": err is not None and abs(err) <= TARGETS["ttft_p50_error_pct"],
        "fidelity_p99": p99 is not None and p99 <= TARGETS["fidelity_p99_ms"],
        "cpu": cpu_ok,
        "rss": r["rss_peak_total_mb"] <= RSS_LIMIT_MB,
    }


def _f(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    """The runs as a Markdown table, one row each, the missed targets in the last column."""
    head = (
        "| users | wall s (limit) | req/s | out tok/s | TTFT p50 ms (planned, error) "
        "| fidelity p50 / p99 ms | steady-state p99 ms | CPU % simulator / locust | "
        "peak RSS MB | other CPU cores / stolen | verdict |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in results:
        cpu = {p["role"]: p["cpu_percent_mean"] for p in r["processes"]}
        v = verdicts(r)
        missed = [k for k, ok in v.items() if not ok]
        lines.append(
            f"| {r['users']} | {r['wall_s']:.1f} ({r['duration_s'] + 15:.0f}) "
            f"| {_f(r['requests_per_s'])} | {_f(r['output_tokens_per_s'], 0)} "
            f"| {_f(r['ttft_p50_ms'])} ({_f(r['planned_ttft_p50_ms'])}, "
            f"{_f(r['ttft_p50_error_pct'], 2)} %) "
            f"| {_f(r['fidelity_p50_ms'])} / {_f(r['fidelity_p99_ms'])} "
            f"| {_f(r['steady_fidelity']['p99'])} "
            f"| {_f(cpu.get('simulator'))} / {_f(cpu.get('locust'))} "
            f"| {_f(r['rss_peak_total_mb'], 0)} | {_f(r['other_cpu_cores'], 2)} / "
            f"{_f(r.get('stolen_cores'), 2)} "
            f"| {'all met' if not missed else 'missed: ' + ', '.join(missed)} |"
        )
    return "\n".join(lines)


def main() -> None:
    """The main run, then each sweep run, printing each one's row as it ends; then the whole
    table sorted by users, every run's warnings and, with --json, every figure to that file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--sweep", default="100,250,1000,1500", help="more --users values, or ''")
    ap.add_argument("--sweep-duration", type=int, default=30)
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("extra", nargs="*", help="more `llmsim bench` arguments (after --)")
    args = ap.parse_args()

    results = []
    print(
        f"llmsim bench --users {args.users} --duration {args.duration}s, gpt-5 profile", flush=True
    )
    results.append(run_once(args.users, args.duration, args.extra))
    print(table(results[-1:]), flush=True)
    for users in [int(u) for u in args.sweep.split(",") if u.strip()]:
        print(f"sweep: {users} users for {args.sweep_duration}s", flush=True)
        results.append(run_once(users, args.sweep_duration, args.extra))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(sorted(results, key=lambda r: (r["users"], -r["duration_s"]))))
    for r in results:
        for w in r["warnings"]:
            print(f"  {r['users']} users: {w}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
