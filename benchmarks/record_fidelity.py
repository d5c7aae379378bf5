"""Round trip: does a calibrated profile make simulator B behave like the provider A it came from?

    python benchmarks/record_fidelity.py [--users 40] [--duration 60s] [--output-tokens 40]
    python benchmarks/record_fidelity.py --engine [--levels 4,16,48] [--duration 20s]

A is `llmsim serve` with known noisy timing: lognormal TTFT 300/90 ms, per-request TBT 25/6 ms,
per-token jitter (CV 0.3) and stalls (1 % of gaps, 150 ms), 2 % HTTP 500s. `llmsim bench
--target A` records the run (recording.jsonl, through bench's recorder); `llmsim calibrate`
fits a profile; B is `llmsim serve --profile-file`. The same bench workload then runs against
B, and the client-side figures of both runs are compared: TTFT p50/p90/p99 and ITL p50/p90
(target: within 8 %), error rates (target: inside 3-sigma binomial bounds of each other).
Both runs' figures come from bench's summary.json (the client's view) and from the recorder's
own lines (exact, unbucketed). A third run against A again gives the noise floor: how far two
runs of the same simulator land apart on this machine. Other processes' CPU and each
simulator's own first-token lateness are printed: on a shared 2-core machine they move every
figure, and a recording captures A's lateness, which B then adds its own to.

`--engine`: A is an engine-mode preset instead (`--engine vllm`, a replica stepping a
continuous batch), recorded under a sweep of closed-loop concurrency levels (one bench run per
level); calibrate fits one profile from every level's lines; the same sweep then runs against
B. Compared per level and pooled over the sweep: a profile has no load dependence, so B serves
the sweep's mixture at every level. Where A's latency grows with the batch, the per-level
figures show what the profile model cannot express.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
_URL = re.compile(r"(http://127\.0\.0\.1:\d+)/v1")
A_FLAGS = [
    "--ttft-ms", "300", "--ttft-stddev-ms", "90", "--tbt-ms", "25", "--tbt-stddev-ms", "6",
    "--itl-jitter-cv", "0.3", "--stall-probability", "0.01", "--stall-ms", "150",
    "--prefill-ms-per-1k", "0", "--fault", "500=0.02", "--seed", "11",
]  # fmt: skip


def env() -> dict[str, str]:
    """This environment without any LLMSIM_ variable, for every child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLMSIM_")}


def serve(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """Start `llmsim serve --port 0 ARGS`, its output in `log`, and wait up to 60 s for its
    URL: (process, http://127.0.0.1:PORT/v1). Exits if it does not start."""
    f = open(log, "w")  # noqa: SIM115  (the child writes to it until it stops)
    cmd = [sys.executable, "-m", "llmsim", "serve", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = _URL.search(log.read_text())
        if m:
            return proc, m.group(1) + "/v1"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"llmsim serve did not start: {log.read_text()}")


ENGINE_FLAGS = ["--engine", "vllm", "--preset", "llama-3-8b-a100", "--step-jitter-cv", "0.1",
                "--seed", "11"]  # fmt: skip


def bench(
    target: str, reports: Path, label: str, a: argparse.Namespace, users: int | None = None
) -> tuple[dict, Path]:
    """One recorded `llmsim bench` run against `target` (`users`, else --users, all spawned at
    once), reports under `reports` labelled `label`: its summary, with the machine's busy
    cores over the run added, and the path of its recording.jsonl."""
    users = users or a.users
    cmd = [sys.executable, "-m", "llmsim", "bench", "--target", target, "--users", str(users),
           "--spawn-rate", str(users), "--duration", a.duration, "--max-tokens", "1000",
           "--reports-dir", str(reports), "--label", label, "--no-progress", "--json",
           "--record", "--prompt-tokens", str(a.prompt_tokens)]  # fmt: skip
    t = psutil.cpu_times()
    busy0, t0 = t.user + t.system + t.nice, time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, check=False)
    t = psutil.cpu_times()
    busy = (t.user + t.system + t.nice - busy0) / (time.monotonic() - t0)
    if out.returncode not in (0, 1):
        raise SystemExit(f"bench failed: {out.stderr[-2000:]}")
    summary = json.loads(out.stdout)
    summary["machine_busy_cores"] = round(busy, 2)
    (run_dir,) = [p for p in reports.iterdir() if p.name.endswith(label)]
    return summary, run_dir / "recording.jsonl"


def pct(values: list[float], p: float) -> float:
    """The `p` percentile of `values`: the sorted list's element int(p / 100 x n)."""
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def recorded_figures(path: Path | list[Path]) -> dict[str, float]:
    """TTFT p50 / p90 / p99 and ITL p50 / p90 (ms; each gap over the tokens its event carried)
    of the successful requests in one or more recordings, and the error rate and count of the
    requests the client did not abandon."""
    paths = path if isinstance(path, list) else [path]
    lines = [json.loads(x) for p in paths for x in p.read_text().splitlines()]
    ok = [x for x in lines if x["status"] == 200 and not x["error_kind"] and x["ttft_ms"]]
    ttft = [x["ttft_ms"] for x in ok]
    itl = [
        g / max(1, k) for x in ok for g, k in zip(x["gaps_ms"], x["event_tokens"][1:], strict=False)
    ]
    counted = [x for x in lines if x["error_kind"] != "client_disconnect"]
    errors = sum(1 for x in counted if x["error_kind"])
    return {
        "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90), "ttft_p99": pct(ttft, 99),
        "itl_p50": pct(itl, 50), "itl_p90": pct(itl, 90),
        "error_rate": errors / len(counted), "n": len(counted),
    }  # fmt: skip


def summary_figures(s: dict) -> dict[str, float]:
    """recorded_figures' figures from a bench summary (the client's view)."""
    return {
        "ttft_p50": s["ttft_ms"]["p50"], "ttft_p90": s["ttft_ms"]["p90"],
        "ttft_p99": s["ttft_ms"]["p99"], "itl_p50": s["itl_ms"]["p50"],
        "itl_p90": s["itl_ms"]["p90"], "error_rate": s["requests"]["error_rate"],
        "n": s["requests"]["total"],
    }  # fmt: skip


def compare(title: str, a: dict, b: dict) -> None:
    """Print B against A: each TTFT and ITL figure's relative difference (target 8 %) and a
    two-proportion z-test of the error rates (target |z| <= 3)."""
    print(f"\n{title}")
    print(f"  {'figure':<10} {'A':>9} {'B':>9} {'B/A-1':>8}  within target")
    for k in ("ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p90"):
        rel = b[k] / a[k] - 1 if a[k] else float("nan")
        verdict = "yes" if abs(rel) <= 0.08 else "NO"
        print(f"  {k:<10} {a[k]:>9.2f} {b[k]:>9.2f} {rel:>+8.1%}  {verdict}")
    pa, pb = a["error_rate"], b["error_rate"]
    pooled = (pa * a["n"] + pb * b["n"]) / (a["n"] + b["n"])
    sd = math.sqrt(pooled * (1 - pooled) * (1 / a["n"] + 1 / b["n"])) or 1e-9
    z = (pb - pa) / sd
    print(f"  {'errors':<10} {pa:>9.4f} {pb:>9.4f} {'z=' + format(z, '+.2f'):>8}  "
          f"{'yes' if abs(z) <= 3 else 'NO'} (n {a['n']} / {b['n']})")  # fmt: skip


def calibrate(recordings: list[Path], profile: Path) -> None:
    """Fit a profile from `recordings` into `profile` with `llmsim calibrate`; print its report."""
    cal = subprocess.run(
        [sys.executable, "-m", "llmsim", "calibrate", *map(str, recordings), "--out", str(profile)],
        capture_output=True, text=True, env=env(), cwd=REPO, check=True,
    )  # fmt: skip
    print(cal.stdout.rstrip())


def engine_round_trip(a: argparse.Namespace) -> int:
    """A = an engine-mode preset under a sweep of concurrency levels; B = its profile."""
    tmp = Path(tempfile.mkdtemp(prefix="llmsim-record-fidelity-engine-"))
    reports = tmp / "reports"
    levels = [int(x) for x in a.levels.split(",")]
    procs, runs = [], {}
    try:
        sim_a, url_a = serve([*ENGINE_FLAGS, "--output-tokens", str(a.output_tokens)],
                             tmp / "a.log")  # fmt: skip
        procs.append(sim_a)
        for n in levels:
            runs["A", n] = bench(url_a, reports, f"A{n}", a, users=n)
        profile = tmp / "profile.yaml"
        calibrate([runs["A", n][1] for n in levels], profile)
        sim_b, url_b = serve(["--profile-file", str(profile), "--seed", "12"], tmp / "b.log")
        procs.append(sim_b)
        for n in levels:
            runs["B", n] = bench(url_b, reports, f"B{n}", a, users=n)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(f"\nprofile: {profile}")
    busy = ", ".join(f"{k[0]}{k[1]} {v[0]['machine_busy_cores']}" for k, v in runs.items())
    print(f"busy cores during the runs (all processes): {busy}")
    for n in levels:
        compare(f"{n} users (recorder side, ms)", recorded_figures(runs["A", n][1]),
                recorded_figures(runs["B", n][1]))  # fmt: skip
    compare("pooled over the sweep (recorder side, ms)",
            recorded_figures([runs["A", n][1] for n in levels]),
            recorded_figures([runs["B", n][1] for n in levels]))  # fmt: skip
    return 0


def main() -> int:
    """Record A, calibrate B from it, run B, then A again (the noise floor), and print the
    busy cores, each run's first-token lateness and the comparisons; --engine runs
    engine_round_trip instead."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=40)
    p.add_argument("--duration", default="60s")
    p.add_argument("--output-tokens", type=int, default=40)
    p.add_argument("--prompt-tokens", type=int, default=200)
    p.add_argument("--engine", action="store_true", help="engine-mode A under a sweep")
    p.add_argument("--levels", default="4,16,48", help="--engine: users per sweep level")
    a = p.parse_args()
    if a.engine:
        return engine_round_trip(a)
    tmp = Path(tempfile.mkdtemp(prefix="llmsim-record-fidelity-"))
    reports = tmp / "reports"
    procs = []
    try:
        sim_a, url_a = serve([*A_FLAGS, "--output-tokens", str(a.output_tokens)], tmp / "a.log")
        procs.append(sim_a)
        sum_a, rec_a = bench(url_a, reports, "A", a)
        profile = tmp / "profile.yaml"
        calibrate([rec_a], profile)
        sim_b, url_b = serve(["--profile-file", str(profile), "--seed", "12"], tmp / "b.log")
        procs.append(sim_b)
        sum_b, rec_b = bench(url_b, reports, "B", a)
        # A again: how far two runs of the same simulator are apart on this machine, the
        # floor under any B-versus-A difference.
        sum_a2, rec_a2 = bench(url_a, reports, "A2", a)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(f"\nprofile: {profile}")
    print(f"busy cores during the runs (all processes): A {sum_a['machine_busy_cores']}, "
          f"B {sum_b['machine_busy_cores']}, A again {sum_a2['machine_busy_cores']}")  # fmt: skip
    for name, s in (("A", sum_a), ("B", sum_b), ("A again", sum_a2)):
        f = (s.get("fidelity") or {}).get("ttft_ms") or {}
        print(f"  {name}: the simulator's own first-token lateness (bench fidelity) "
              f"p50 {f.get('p50')} ms, p99 {f.get('p99')} ms")  # fmt: skip
    compare("client side (bench summary.json, ms)", summary_figures(sum_a), summary_figures(sum_b))
    compare("recorder side (recording.jsonl, exact, ms)", recorded_figures(rec_a),
            recorded_figures(rec_b))  # fmt: skip
    compare("noise floor: A against A again (recorder side, ms)", recorded_figures(rec_a),
            recorded_figures(rec_a2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
