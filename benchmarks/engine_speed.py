"""Server CPU per streamed token: `--engine vllm` stepping ~256 sequences vs `--engine api`.

    python benchmarks/engine_speed.py [--streams 256] [--tokens 200] [--duration-s 8]

1. `llmsim serve --engine vllm` (one replica, llama-3-8b-a100) is read by N closed-loop streams
   (benchmarks/serve_timing.py: raw sockets and epoll, so the client is cheap); the replica's
   batch holds about N sequences. Its token rate and its inter-token gap p50 are measured.
2. `llmsim serve` in api mode, exact timing with that gap and the engine's TTFT p50, is read
   by the same N streams: the same token rate.
Server CPU (user + system, psutil) over each client run divided by the SSE events the client
received gives CPU per token; the figure of merit is their ratio (the issue's bound: 1.5).
Both run one after the other in one invocation, so they share the machine's state.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from locust_common import REPO, Procs, clean_env, cpu_seconds

MODEL = "meta-llama/Meta-Llama-3-8B"


def others_cpu_pct(interval: float = 1.0) -> float:
    """CPU % of everything else on the machine, sampled before a measurement."""
    return round(psutil.cpu_percent(interval=interval) * psutil.cpu_count(), 1)


def run_client(url: str, streams: int, tokens: int, duration: float) -> dict:
    """serve_timing.py's JSON result for `streams` closed-loop streams of `tokens` tokens
    against `url`, measured for `duration` s after a 2 s ramp."""
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "serve_timing.py"), "timing",
        "--url", url.removesuffix("/v1"), "--streams", str(streams), "--tokens", str(tokens),
        "--model", MODEL, "--ramp-s", "2", "--duration-s", str(duration), "--drain-s", "15",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(procs: Procs, args: list[str], streams: int, tokens: int, duration: float) -> dict:
    """Start `llmsim serve ARGS`, warm it, read it with run_client and stop it: the SSE event
    rate (per s), the server's CPU (s, % of a core, us per event), the client's gap and TTFT
    percentiles (ms) and CPU, other processes' CPU before, and the engine's replica stats."""
    url = procs.start_target("-m", "llmsim", "serve", "--port", "0", *args)
    server = procs.procs[-2]  # start_target appends the server, then its output drain
    time.sleep(1.0)
    # Warm up (first requests pay imports and encoder caches).
    for _ in range(3):
        httpx.post(url + "/chat/completions", json={"model": MODEL, "max_tokens": 4,
                   "messages": [{"role": "user", "content": "hi"}]}, timeout=30)  # fmt: skip
    busy = others_cpu_pct()
    c0 = cpu_seconds(server.pid)
    t0 = time.monotonic()
    result = run_client(url, streams, tokens, duration)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(server.pid) - c0
    stats = httpx.get(url.removesuffix("/v1") + "/llmsim/stats", timeout=10).json()
    server.terminate()
    events = result["events_total"]
    return {
        "args": args,
        "events": events,
        "tokens_per_s": round(events / wall, 1),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        "cpu_us_per_event": round(1e6 * cpu / max(events, 1), 2),
        "gap_ms": result["gap_ms"],
        "ttft_ms": result["ttft_ms"],
        "client_cpu_pct": result["client_cpu_pct"],
        "mean_inflight": result["mean_inflight"],
        "errors": result["errors"],
        "other_processes_cpu_pct_before": busy,
        "engine": stats.get("engine", {}).get("replicas"),
    }


def main() -> int:
    """--rounds rounds of the vllm run, then the api run with its TTFT and gap p50: each
    round's figures and CPU per token ratio (bound 1.5) printed, then all rounds as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--duration-s", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=2, help="vllm then api, this many times")
    a = p.parse_args()
    rounds = []
    for _ in range(a.rounds):
        procs = Procs()
        try:
            engine = measure(
                procs, ["--engine", "vllm", "--max-num-seqs", str(a.streams)], a.streams,
                a.tokens, a.duration_s,
            )  # fmt: skip
            gap = engine["gap_ms"]["p50"]
            ttft = engine["ttft_ms"]["p50"]
            api = measure(
                procs,
                ["--ttft-ms", f"{ttft:.3f}", "--ttft-stddev-ms", "0", "--tbt-ms", f"{gap:.3f}",
                 "--tbt-stddev-ms", "0"],
                a.streams, a.tokens, a.duration_s,
            )  # fmt: skip
        finally:
            procs.close()
        ratio = engine["cpu_us_per_event"] / api["cpu_us_per_event"]
        rate_gap = api["tokens_per_s"] / engine["tokens_per_s"] - 1
        for name, r in (("engine vllm", engine), ("engine api", api)):
            print(
                f"{name:12} {r['tokens_per_s']:>9} tok/s  server {r['server_cpu_pct']:5}% of a "
                f"core  {r['cpu_us_per_event']:6} us/token  gap p50 {r['gap_ms']['p50']} ms  "
                f"client {r['client_cpu_pct']}%  in flight {r['mean_inflight']}  "
                f"others {r['other_processes_cpu_pct_before']}%"
            )
        note = (
            "" if abs(rate_gap) < 0.1 else f" (token rates differ by {rate_gap:+.0%}: busy machine)"
        )
        print(f"CPU per token, vllm / api: {ratio:.2f} (bound 1.5){note}")
        rounds.append({"engine": engine, "api": api, "ratio": round(ratio, 3)})
    ratios = sorted(r["ratio"] for r in rounds)
    print(f"ratios {ratios}; worst {ratios[-1]:.2f}")
    print(json.dumps(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
