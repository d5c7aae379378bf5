"""Soak: 100 streams in a closed loop against `llmsim serve` (default timing) for a long time.

Prints the server's RSS and the streams' gaps and TTFT every minute and, at the end, the RSS
growth from the first sample after warm-up (the first minute, when caches and pools fill) to
the last. The issue asks for under
5 % over 30 minutes:

    python benchmarks/soak.py --minutes 30          # the real run
    python benchmarks/soak.py --minutes 3           # a short check

The load comes from benchmarks/serve_timing.py (raw sockets, cheap enough not to be the
bottleneck), restarted every minute (a fresh client each time; the server keeps running).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from conftest import start_server  # noqa: E402

if TYPE_CHECKING:
    from conftest import ServerProcess


def rss_mb(pid: int) -> float:
    """RSS (MB of 10^6 bytes) of a process and its direct children."""
    proc = psutil.Process(pid)
    return (proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children())) / 1e6


def main() -> None:
    """Start a server and load it a minute at a time until --minutes pass, printing each
    minute's RSS, gap and TTFT p99; then a JSON line with the RSS growth (%) from the first
    sample after --warmup-s to the last."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--warmup-s", type=float, default=60.0)
    args = p.parse_args()
    server = start_server()
    threading_drain(server)
    end = time.monotonic() + args.minutes * 60
    samples: list[tuple[float, float]] = []
    streams_done = errors = 0
    gap_p99: list[float] = []
    gap_max: list[float] = []
    ttft_p99: list[float] = []
    start = time.monotonic()
    try:
        while time.monotonic() < end:
            left = end - time.monotonic()
            chunk = max(5.0, min(60.0, left - 3))  # one RSS sample a minute
            load = subprocess.run(
                [sys.executable, str(HERE / "serve_timing.py"), "timing", "--url", server.url,
                 "--streams", str(args.streams), "--tokens", "50", "--ramp-s", "1",
                 "--duration-s", str(chunk), "--drain-s", "2"],
                capture_output=True, text=True, timeout=chunk + 120,
            )  # fmt: skip
            try:
                report = json.loads(load.stdout.strip().splitlines()[-1])
                streams_done += int(report.get("streams_done") or 0)
                errors += int(report.get("errors") or 0)
                gaps, ttft = report.get("gap_ms") or {}, report.get("ttft_ms") or {}
                if gaps.get("p99") is not None:
                    gap_p99.append(gaps["p99"])
                    gap_max.append(gaps["max"])
                if ttft.get("p99") is not None:
                    ttft_p99.append(ttft["p99"])
            except (ValueError, IndexError):
                print("load client said:", load.stdout[-500:], load.stderr[-500:])
            t = time.monotonic() - start
            samples.append((t, rss_mb(server.proc.pid)))
            timing = (
                f"  gap p99 {gap_p99[-1]:6.1f} ms max {gap_max[-1]:6.1f} ms  TTFT p99 "
                f"{ttft_p99[-1]:6.1f} ms"
                if gap_p99 and ttft_p99
                else ""
            )
            print(f"{t / 60:6.1f} min  RSS {samples[-1][1]:7.1f} MB{timing}", flush=True)
    finally:
        server.stop()
    base = next((r for t, r in samples if t >= args.warmup_s), samples[0][1])
    last = samples[-1][1]
    growth = (last - base) / base * 100
    print(json.dumps({"minutes": round((time.monotonic() - start) / 60, 1),
                      "streams": args.streams, "rss_after_warmup_mb": round(base, 1),
                      "rss_end_mb": round(last, 1), "growth_pct": round(growth, 2),
                      "streams_completed": streams_done, "errors": errors,
                      "worst_minute_gap_p99_ms": max(gap_p99, default=None),
                      "median_minute_gap_p99_ms": sorted(gap_p99)[len(gap_p99) // 2]
                      if gap_p99 else None,
                      "gap_max_ms": max(gap_max, default=None),
                      "worst_minute_ttft_p99_ms": max(ttft_p99, default=None)}))  # fmt: skip


def threading_drain(server: ServerProcess) -> None:
    """Read the server's output so a full pipe never blocks it."""
    import threading

    threading.Thread(target=lambda: [None for _ in server.proc.stdout], daemon=True).start()


if __name__ == "__main__":
    main()
