"""The stream loop's cost and timing, as same-run ratios against a send() floor.

    python benchmarks/loop_speed.py            # ~2 minutes
    python benchmarks/loop_speed.py --quick    # shorter phases (~1 minute)

Everything runs on 127.0.0.1; the server (or the floor's sender) is pinned to core 0 and the
reader to core 1 (taskset). Phases:

  floor    one Python send() of a 180-byte event per connection per 20 ms round over 200
           loopback connections (TCP_NODELAY), read by a selectors loop: CPU per send.
           The issue's floor: a round's sends go back to back. Beside it the paced floor:
           the same sends, each at its own time (i/200 of the round), the sender sleeping
           until each: what pacing itself costs a bare Python sender (a wake-up per event,
           and each send wakes an idle reader), with no HTTP, rendering or bookkeeping.
  paced    200 streams of 50 tokens (TTFT 200 ms, 20 ms per token, exact) read by
           serve_timing.py: server CPU per streamed token, for llmsim and for a naive server
           with one gevent.sleep per token (serve_baselines.py paced). Ratio against the floor.
  1000     1,000 concurrent streams of the same timing on one worker: TTFT and gap
           percentiles, server CPU.
  idle     50 sequential streams, one at a time: how late the first event left the server
           against its plan, from the server's own event log (GET /llmsim/requests/{id}).

The paced and 1000 phases run llmsim twice: with the default coalescing window and with
--coalesce-ms 0, so the window's effect is measured in the same run.

Prints a table and, last, one JSON line (`LOOP_SPEED {...}`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_speed import (  # noqa: E402
    CLIENT_CPU,
    PY,
    SERVER_CPU,
    Meter,
    baseline_cmd,
    llmsim_cmd,
    run_client,
    start_server,
    stop_all,
    wait_quiet,
    warm,
)

EXACT = ("--ttft-ms", "200", "--ttft-stddev-ms", "0", "--tbt-ms", "20", "--tbt-stddev-ms", "0")
GOALS = {
    "paced_cpu_ratio": 2.0,
    "ttft_p99_ms": 210.0,
    "gap_p50_ms": (19.5, 20.5),
    "gap_p99_ms": 25.0,
    "server_cpu_pct": 90.0,
    "idle_first_late_p50_ms": 0.5,
}
EVENT = b"x" * 180
NO_COALESCE = ("--coalesce-ms", "0")  # the loop's sweeps at most 0.25 ms apart at any load


# --------------------------------------------------------------------------- the floor


def floor_sender(port: int, conns: int, rounds: int, period: float, paced: bool = False) -> None:
    """Accept `conns` connections, then send one 180-byte event per connection per round.

    Batched (the issue's floor): the round's sends go back to back, one sleep per round.
    Paced: connection i's event is due at i/conns of the period into each round, as paced
    streams' events are, and the sender sleeps until each one: the least a paced sender in
    Python pays (a wake-up per event, and each send wakes an idle reader), without HTTP,
    rendering or bookkeeping."""
    lst = socket.create_server(("127.0.0.1", port))
    socks = []
    while len(socks) < conns:
        s, _ = lst.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.monotonic()
    sends = 0
    step = period / conns
    for _ in range(rounds):
        if paced:
            for i, s in enumerate(socks):
                delay = t + i * step - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                s.send(EVENT)
                sends += 1
        else:
            for s in socks:
                s.send(EVENT)
                sends += 1
        t += period
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    print(json.dumps({"sends": sends, "cpu_s": cpu}), flush=True)
    for s in socks:
        s.close()


def floor_reader(port: int, conns: int, total: int) -> None:
    """Open `conns` connections to the floor sender and read until `total` 180-byte events
    have come, or 120 s pass."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    got = 0
    deadline = time.monotonic() + 120
    while got < total * len(EVENT) and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(key.fileobj)
                continue
            got += len(data)


def phase_floor(duration: float, paced: bool = False) -> dict:
    """One floor run over 200 connections, `duration` s of 20 ms rounds, the sender on the
    server's core and the reader on the client's: the sender's sends, CPU (s) and us per send."""
    from llmsim.bench.preflight import free_port

    port = free_port()
    conns, period = 200, 0.02
    rounds = int(duration / period)
    me = [PY, str(Path(__file__).resolve())]
    sender = subprocess.Popen(
        [
            "taskset",
            "-c",
            SERVER_CPU,
            *me,
            "_floor_sender",
            str(port),
            str(conns),
            str(rounds),
            "paced" if paced else "batched",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    reader = subprocess.Popen(
        ["taskset", "-c", CLIENT_CPU, *me, "_floor_reader", str(port), str(conns),
         str(conns * rounds)],
    )  # fmt: skip
    out, _ = sender.communicate(timeout=duration + 60)
    reader.wait(timeout=60)
    r = json.loads(out.strip().splitlines()[-1])
    r["us_per_send"] = round(1e6 * r["cpu_s"] / r["sends"], 2)
    return r


# --------------------------------------------------------------------------- paced streams


def timing_run(url: str, streams: int, tokens: int, duration: float) -> dict:
    """serve_timing.py's timing result for `streams` streams of `tokens` tokens against `url`,
    `duration` s measured after a 2.2 s ramp, the client on its own core."""
    return run_client(
        ["timing", "--url", url, "--streams", str(streams), "--tokens", str(tokens),
         "--ramp-s", "2.2", "--duration-s", f"{duration:g}"],
        CLIENT_CPU,
        timeout=duration + 90,
    )  # fmt: skip


def measure(
    name: str, cmd: list[str], streams: int, tokens: int, duration: float, tmp: Path
) -> dict:
    """Start the server `cmd` on its core, warm it and read it with timing_run under a Meter:
    the client's figures, the server's and other processes' CPU, and the server's CPU per
    content token (us)."""
    server = start_server(name, cmd, SERVER_CPU, tmp)
    try:
        warm(server.url, True, 2, n=4)
        meter = Meter(server)
        r = timing_run(server.url, streams, tokens, duration)
        r.update(meter.stop(r["client_cpu_s"]))
    finally:
        server.stop()
    # Content tokens the client received (events minus role, finish and [DONE] per stream).
    per_stream = tokens + 3
    completed = r["events_total"] / per_stream
    r["tokens_total"] = round(completed * tokens)
    r["server_cpu_us_per_token"] = round(1e6 * r["server_cpu_s"] / max(1, r["tokens_total"]), 2)
    return r


def phase_idle(tmp: Path, n: int) -> dict:
    """`n` 5-token streams to an idle llmsim, one at a time: how late each first event left
    against its plan, from the server's event log (ms, p50 / p90 / max)."""
    import http.client

    server = start_server("llmsim-idle", llmsim_cmd(*EXACT), SERVER_CPU, tmp)
    late = []
    try:
        warm(server.url, True, 2, n=4)
        wait_quiet()
        host, port = server.url.removeprefix("http://").split(":")
        body = json.dumps(
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "ignore_eos": True,
                "stream": True,
            }
        )
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        for _ in range(n):
            conn.request("POST", "/v1/chat/completions", body,
                         {"Content-Type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            rid = resp.getheader("x-request-id")
            resp.read()
            conn.request("GET", f"/llmsim/requests/{rid}")
            log = json.loads(conn.getresponse().read())
            first = log["events"][0]
            late.append(first["sent_ms"] - first["planned_ms"])
            time.sleep(0.05)
        conn.close()
    finally:
        server.stop()
    late.sort()
    return {
        "n": n,
        "first_late_ms_p50": round(statistics.median(late), 3),
        "first_late_ms_p90": round(late[int(0.9 * (len(late) - 1))], 3),
        "first_late_ms_max": round(late[-1], 3),
    }


def main(argv: list[str] | None = None) -> int:
    """The floor / llmsim / naive rounds, the 1,000-stream runs with and without coalescing,
    and the idle phase; prints the table of figures and goals, then the `LOOP_SPEED` line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    duration = 5.0 if args.quick else 10.0
    data: dict = {}
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            # Rounds of floor, llmsim, naive, back to back: on a shared machine the load
            # changes from minute to minute, and each ratio uses its own round's floor.
            rounds = []
            for _ in range(2 if args.quick else 3):
                fl = phase_floor(min(duration, 4.0))
                pf = phase_floor(min(duration, 4.0), paced=True)
                a = measure("llmsim-paced", llmsim_cmd(*EXACT), 200, 50, duration, tmp)
                a0 = measure("llmsim-paced-exact", llmsim_cmd(*EXACT, *NO_COALESCE), 200, 50,
                             duration, tmp)  # fmt: skip
                b = measure("naive-paced", baseline_cmd("paced"), 200, 50, duration, tmp)
                rounds.append(
                    {
                        "floor_us_per_send": fl["us_per_send"],
                        "paced_floor_us_per_send": pf["us_per_send"],
                        "llmsim_us_per_token": a["server_cpu_us_per_token"],
                        "naive_us_per_token": b["server_cpu_us_per_token"],
                        "no_coalesce_us_per_token": a0["server_cpu_us_per_token"],
                        "ratio": round(a["server_cpu_us_per_token"] / fl["us_per_send"], 2),
                        "naive_ratio": round(b["server_cpu_us_per_token"] / fl["us_per_send"], 2),
                        "paced_floor_ratio": round(
                            a["server_cpu_us_per_token"] / pf["us_per_send"], 2
                        ),
                        "other_cpu_pct": [a["other_cpu_pct"], b["other_cpu_pct"]],
                        "llmsim_gap_ms": a["gap_ms"],
                        "llmsim_ttft_ms": a["ttft_ms"],
                    }
                )
            data["paced_rounds"] = rounds
            ratio = statistics.median(r["ratio"] for r in rounds)
            naive_ratio = statistics.median(r["naive_ratio"] for r in rounds)
            data["paced_cpu_ratio"], data["naive_cpu_ratio"] = ratio, naive_ratio
            floors = " / ".join(f"{r['floor_us_per_send']:.2f}" for r in rounds)
            rows.append(("send() floor, us CPU per 180-byte send (200 conns), per round",
                         floors, ""))  # fmt: skip
            paced_ratio = statistics.median(r["paced_floor_ratio"] for r in rounds)
            data["paced_floor_ratio"] = paced_ratio
            rows.append(("paced send() floor: each send at its own time (200 conns), per round",
                         " / ".join(f"{r['paced_floor_us_per_send']:.2f}" for r in rounds),
                         ""))  # fmt: skip
            rows.append(("llmsim, us CPU per paced token (200 streams), per round",
                         " / ".join(f"{r['llmsim_us_per_token']:.2f}" for r in rounds)
                         + f" (median {ratio:.2f}x floor, {paced_ratio:.2f}x paced floor)",
                         f"goal <= {GOALS['paced_cpu_ratio']:g}x floor"))  # fmt: skip
            rows.append(("  the same with --coalesce-ms 0 (a sweep at most every 0.25 ms)",
                         " / ".join(f"{r['no_coalesce_us_per_token']:.2f}" for r in rounds),
                         ""))  # fmt: skip
            rows.append(("naive one-sleep-per-token server, us CPU per token, per round",
                         " / ".join(f"{r['naive_us_per_token']:.2f}" for r in rounds)
                         + f" (median {naive_ratio:.2f}x floor)", ""))  # fmt: skip
            rows.append(("  others' CPU during the llmsim / naive phases, % of a core",
                         " ; ".join(f"{r['other_cpu_pct'][0]:.0f}/{r['other_cpu_pct'][1]:.0f}"
                                    for r in rounds), ""))  # fmt: skip
            data["streams_1000"] = c = measure(
                "llmsim-1000", llmsim_cmd(*EXACT), 1000, 100, duration, tmp
            )
            data["streams_1000_no_coalesce"] = c0 = measure(
                "llmsim-1000-exact", llmsim_cmd(*EXACT, *NO_COALESCE), 1000, 100, duration, tmp
            )
            t, g = c["ttft_ms"], c["gap_ms"]
            rows.append(("1,000 streams: TTFT ms p50/p99/max",
                         f"{t['p50']:.1f}/{t['p99']:.1f}/{t['max']:.1f}",
                         f"goal p99 <= {GOALS['ttft_p99_ms']:g}"))  # fmt: skip
            t0, g0 = c0["ttft_ms"], c0["gap_ms"]
            rows.append(("  the same with --coalesce-ms 0: TTFT p50/p99, gap p99, server CPU",
                         f"{t0['p50']:.1f}/{t0['p99']:.1f}, {g0['p99']:.2f}, "
                         f"{c0['server_cpu_pct']:.0f}%", ""))  # fmt: skip
            rows.append(("1,000 streams: gap ms p50/p99/max",
                         f"{g['p50']:.2f}/{g['p99']:.2f}/{g['max']:.1f}",
                         "goal p50 20+-0.5, p99 <= 25"))  # fmt: skip
            rows.append(("1,000 streams: server CPU (% of its core), client CPU, others",
                         f"{c['server_cpu_pct']:.0f}%, {c['client_cpu_pct']:.0f}%, "
                         f"{c['other_cpu_pct']:.0f}%",
                         f"goal server < {GOALS['server_cpu_pct']:g}%"))  # fmt: skip
            data["idle"] = d = phase_idle(tmp, 30 if args.quick else 60)
            rows.append(("idle: first event late vs plan, ms p50/p90/max (server log)",
                         f"{d['first_late_ms_p50']:.3f}/{d['first_late_ms_p90']:.3f}/"
                         f"{d['first_late_ms_max']:.3f}",
                         f"goal p50 <= {GOALS['idle_first_late_p50_ms']:g}"))  # fmt: skip
        finally:
            stop_all()
    width = max(len(r[0]) for r in rows)
    for what, value, goal in rows:
        print(f"{what:<{width}}  {value:<28} {goal}")
    print("LOOP_SPEED " + json.dumps(data))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_floor_sender":
        floor_sender(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 0.02,
                     paced=sys.argv[5] == "paced")  # fmt: skip
    elif len(sys.argv) > 1 and sys.argv[1] == "_floor_reader":
        floor_reader(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
    os._exit(0)
