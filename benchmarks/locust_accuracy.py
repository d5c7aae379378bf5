"""How exactly the Locust users measure: TTFT and TPOT against a server with known timing.

    python benchmarks/locust_accuracy.py [--users 50] [--seconds 30]

Starts `llmsim serve --ttft-ms 123 --tbt-ms 17` with zero jitter, runs Locust (chat.py, streaming,
64 tokens, ignore_eos) and, at the same time, an independent probe in another process: a plain
blocking socket sending one request at a time and timing the first content chunk. The probe
shows what the server itself delivers under that load, so the report separates the server's own
overshoot from the client's measurement error. Figures come from llm_metrics.json and from
Locust's own CSV (both carry our 0.1 ms / 3-significant-digit percentiles).
"""

from __future__ import annotations

import argparse
import csv
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from locust_common import REPO, Procs, cpu_seconds, load_results

CHAT = REPO / "locustfiles" / "chat.py"
TTFT, TBT = 123.0, 17.0


def probe(base_url: str, stop: threading.Event, out: list[float]) -> None:
    """Sequential requests over one keep-alive connection; TTFT of each, in ms."""
    u = urlsplit(base_url)
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "probe " * 40}],
            "stream": True,
            "max_tokens": 2,
            "ignore_eos": True,
        }
    ).encode()
    head = (
        f"POST {u.path}/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((u.hostname, u.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not stop.is_set():
        t0 = time.perf_counter()
        sock.sendall(head + body)
        buf, first = b"", None
        while not buf.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            if not data:
                return
            buf += data
            # the role chunk carries "content":"" ; the first token is the second "content"
            if first is None and buf.count(b'"content":') >= 2:
                first = time.perf_counter()
        out.append((first - t0) * 1000.0)
        time.sleep(0.05)


def main() -> None:
    """Probe the idle server for 2 s, then run Locust with the probe beside it; print the
    plan, the probe's TTFT idle and under load, Locust's TTFT, TPOT and ITL (llm_metrics.json
    and its CSV), the measured-minus-planned TTFT and Locust's steady-state CPU."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--spawn-rate", type=float, default=10)
    args = ap.parse_args()
    procs = Procs()
    out = Path(tempfile.mkdtemp(prefix="llmsim-locust-accuracy-"))
    try:
        host = procs.start_target(
            "-m",
            "llmsim",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ttft-ms",
            str(TTFT),
            "--ttft-stddev-ms",
            "0",
            "--tbt-ms",
            str(TBT),
            "--tbt-stddev-ms",
            "0",
        )
        idle: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=probe, args=(host, stop, idle))
        t.start()
        time.sleep(2)
        stop.set()
        t.join()

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
            "64",
            "--llm-ignore-eos",
            "--llm-prompt-tokens",
            "128",
        )
        loaded: list[float] = []
        stop = threading.Event()
        ramp = 2 + args.users / args.spawn_rate  # start-up and ramp-up
        time.sleep(ramp)
        t = threading.Thread(target=probe, args=(host, stop, loaded))
        t.start()
        window = max(1.0, args.seconds - ramp - 2)
        c0 = cpu_seconds(locust.pid)
        time.sleep(window)
        cpu_pct = 100 * (cpu_seconds(locust.pid) - c0) / window
        locust.wait(args.seconds + 60)
        stop.set()
        t.join()
        summary, rows = load_results(out)
        m = summary["metrics"]
        with (out / "locust_stats.csv").open(newline="") as fh:
            stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}
        ttft_row = stats[("TTFT", "/v1/chat/completions")]
        tpot_row = stats[("TPOT", "/v1/chat/completions")]
        print(f"server plan: TTFT {TTFT} ms, TBT {TBT} ms, no jitter; {args.users} Locust users")
        print(
            f"independent probe, idle server  : TTFT p50 {statistics.median(idle):.2f} ms"
            f" (n={len(idle)})"
        )
        p90 = statistics.quantiles(loaded, n=10)[-1] if len(loaded) > 10 else float("nan")
        print(
            f"independent probe, during load  : TTFT p50 {statistics.median(loaded):.2f} ms,"
            f" p90 {p90:.2f} ms (n={len(loaded)})"
        )
        print(
            f"Locust llm_metrics.json         : TTFT p50 {m['ttft_ms']['p50']} (mean"
            f" {m['ttft_ms']['mean']}, p99 {m['ttft_ms']['p99']}), TPOT p50 {m['tpot_ms']['p50']}"
            f" (mean {m['tpot_ms']['mean']}), ITL p50 {m['itl_ms']['p50']} p99"
            f" {m['itl_ms']['p99']}"
        )
        print(
            f"Locust CSV (TTFT/TPOT rows)     : TTFT 50% {ttft_row['50%']}, TPOT 50%"
            f" {tpot_row['50%']}"
        )
        print(
            f"measured - planned TTFT         : p50 {m['fidelity_ttft_ms']['p50']} ms,"
            f" p90 {m['fidelity_ttft_ms']['p90']} ms"
        )
        print(
            f"requests {summary['requests']['total']} (failed {summary['requests']['failed']}),"
            f" output tokens {summary['tokens']['output']} ({summary['tokens']['source']}),"
            f" all rows 64 tokens: {all(r['output_tokens'] == '64' for r in rows)}"
        )
        print(f"Locust CPU {cpu_pct:.1f} % of a core (steady state)")
        print(f"(outputs in {out})")
    finally:
        procs.close()


if __name__ == "__main__":
    main()
