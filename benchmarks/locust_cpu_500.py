"""CPU of one Locust process driving 500 streaming users against the gpt-5 profile.

    python benchmarks/locust_cpu_500.py [--users 500] [--seconds 45]

`llmsim serve --profile gpt-5` (TTFT 600±150 ms, 40±12 ms between tokens), chat.py with 128
output tokens (ignore_eos). Locust's CPU (user+system) is sampled over the steady state, after
the ramp-up, and so is the server's, to show which side of the machine is busy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil
from locust_common import REPO, Procs, cpu_seconds, load_results, rows_in_window

CHAT = REPO / "locustfiles" / "chat.py"


def main() -> None:
    """Run Locust against `llmsim serve --profile gpt-5`, sample Locust's and the server's CPU
    (and Locust's RSS) over the steady window after the ramp-up, and print them with the
    window's request and event rates and the run's TTFT, TPOT and fidelity figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=45)
    ap.add_argument("--spawn-rate", type=float, default=50)
    args = ap.parse_args()
    procs = Procs()
    out = Path(tempfile.mkdtemp(prefix="llmsim-locust-cpu-"))
    try:
        host = procs.start_target(
            "-m", "llmsim", "serve", "--host", "127.0.0.1", "--port", "0", "--profile", "gpt-5"
        )
        server = next(p for p in procs.procs if p.args[1:3] == ["-m", "llmsim"])
        locust = procs.start_locust(
            CHAT,
            host,
            out,
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{args.seconds}s",
            "--llm-max-tokens",
            "128",
            "--llm-ignore-eos",
        )
        ramp = 3 + args.users / args.spawn_rate
        time.sleep(ramp)
        window = args.seconds - ramp - 3
        t0 = time.time()
        lc0, sc0 = cpu_seconds(locust.pid), cpu_seconds(server.pid)
        rss = []
        end = t0 + window
        while time.time() < end:
            time.sleep(1)
            rss.append(psutil.Process(locust.pid).memory_info().rss)
        lcpu = cpu_seconds(locust.pid) - lc0
        scpu = cpu_seconds(server.pid) - sc0
        locust.wait(args.seconds + 60)
        summary, rows = load_results(out)
        done = rows_in_window(rows, t0, t0 + window)
        events = sum(int(r["output_tokens"] or 0) + 4 for r in done)
        m = summary["metrics"]
        print(f"{args.users} users, gpt-5 profile, 128 tokens; steady window {window:.0f} s")
        print(
            f"Locust CPU {100 * lcpu / window:.1f} % of a core,"
            f" server CPU {100 * scpu / window:.1f} %; Locust RSS {max(rss) / 2**20:.0f} MiB"
        )
        print(
            f"in window: {len(done) / window:.1f} req/s, {events / window:,.0f} SSE events/s,"
            f" {1e6 * lcpu / max(1, events):.1f} us of Locust CPU per event (all costs)"
        )
        print(
            f"TTFT p50 {m['ttft_ms']['p50']} ms (plan 600), TPOT p50 {m['tpot_ms']['p50']}"
            f" (plan 40), measured-planned TTFT p50 {m['fidelity_ttft_ms']['p50']}"
            f" p99 {m['fidelity_ttft_ms']['p99']}; failed {summary['requests']['failed']}"
            f" of {summary['requests']['total']}"
        )
        print(f"(outputs in {out})")
    finally:
        procs.close()


if __name__ == "__main__":
    main()
