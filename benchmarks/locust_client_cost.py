"""Locust's CPU per streamed token against the floor: one Python recv() per event, same run.

    python benchmarks/locust_client_cost.py [--users 200] [--tbt-ms 20] [--seconds 12]

A paced fake target (llmsim.load.fakeserver: one write per SSE event, --tbt-ms apart) streams
to N connections. Two clients read it in turn, each in its own process, its CPU (user+system)
sampled over a steady window:

- floor: a `selectors` loop over N sockets doing one `recv()` per readable socket and nothing
  else (no HTTP or SSE parsing), sending the next request when a reply ends;
- locust: `locustfiles/chat.py` with N users (llmsim's OpenAIChatUser: TTFT, ITL, TPOT, E2E,
  tokens, requests.csv rows).

Both are divided by the SSE events the target sent in the window (its /fake/stats counter, so
streams longer than the window count too); the ratio is the figure
(issue 12 asks for at most 2x). The order is floor, locust, floor, so drift from other load on the
machine shows as a difference between the two floor runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
from locust_common import REPO, Procs, clean_env, cpu_seconds, load_results

CHAT = REPO / "locustfiles" / "chat.py"

FLOOR = textwrap.dedent(
    '''
    """One recv() per readable socket over N keep-alive connections; counts SSE events."""
    import json, selectors, socket, sys, time
    host, port, n, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    body = json.dumps({"model": "ok", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": tokens, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\n"
           b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.sendall(req)
        sel.register(s, selectors.EVENT_READ)
    events = 0
    report = time.monotonic() + 1
    while True:
        for key, _ in sel.select(1.0):
            s = key.fileobj
            data = s.recv(65536)
            if not data:
                sys.exit(1)
            events += data.count(b"\\n\\n")
            if data.endswith(b"0\\r\\n\\r\\n"):
                s.send(req)
        now = time.monotonic()
        if now >= report:
            report = now + 1
            print(events, flush=True)
    '''
)


def sent(base: str) -> int:
    """SSE events the fake target has sent so far."""
    with urllib.request.urlopen(base.removesuffix("/v1") + "/fake/stats", timeout=10) as r:
        return int(json.loads(r.read())["events"])


def window_cost(base: str, pid: int, warmup: float, window: float) -> tuple[float, int]:
    """(CPU seconds of `pid`, events sent) over [warmup, warmup + window]."""
    time.sleep(warmup)
    c0, e0 = cpu_seconds(pid), sent(base)
    time.sleep(window)
    return cpu_seconds(pid) - c0, sent(base) - e0


def run_floor(
    base: str, port: int, users: int, tokens: int, warmup: float, window: float
) -> tuple[float, int]:
    """(CPU seconds, events) of the floor client over the window."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR, "127.0.0.1", str(port), str(users), str(tokens)],
        stdout=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        return window_cost(base, proc.pid, warmup, window)
    finally:
        proc.kill()
        proc.wait(5)


def run_locust(
    procs: Procs, host: str, users: int, tokens: int, warmup: float, window: float, out: Path
) -> tuple[float, int, dict]:
    """(CPU seconds, events, llm_metrics.json) of Locust over the window."""
    proc = procs.start_locust(
        CHAT,
        host,
        out,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{int(warmup + window + 2)}s",
        "--llm-model",
        "ok",
        "--llm-max-tokens",
        str(tokens),
        "--llm-prompt-tokens",
        "16",
    )
    cpu, events = window_cost(host, proc.pid, warmup, window)
    proc.wait(120)
    summary, _rows = load_results(out)
    return cpu, events, summary


def main() -> None:
    """Floor, Locust, floor again against one paced fake target: each run's CPU per SSE event
    (us), Locust's cost over the mean of both floors, its ITL and the machine's CPU split."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--tbt-ms", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    args = ap.parse_args()
    procs = Procs()
    warmup = 4.0 + args.users / 100
    try:
        host = procs.start_target(
            "-m", "llmsim.load.fakeserver", "--port", "0", "--tbt-ms", str(args.tbt_ms)
        )
        port = int(host.rsplit(":", 1)[1].split("/")[0])
        server = procs.procs[0]
        other0 = psutil.cpu_times()
        s0 = cpu_seconds(server.pid)
        t_start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="llmsim-client-cost-"))
        f1 = run_floor(host, port, args.users, args.tokens, warmup, args.seconds)
        lc = run_locust(procs, host, args.users, args.tokens, warmup, args.seconds, tmp)
        f2 = run_floor(host, port, args.users, args.tokens, warmup, args.seconds)
        wall = time.monotonic() - t_start
        server_cpu = cpu_seconds(server.pid) - s0
        other1 = psutil.cpu_times()
        busy = sum(
            getattr(other1, f) - getattr(other0, f)
            for f in ("user", "nice", "system", "irq", "softirq", "steal")
        )
        per = [1e6 * c / max(1, e) for c, e in (f1, lc[:2], f2)]
        floor = (per[0] + per[2]) / 2
        m = lc[2]["metrics"]
        print(
            f"{args.users} streams, {args.tokens} tokens, {args.tbt_ms:g} ms apart; "
            f"window {args.seconds:g} s each"
        )
        print(f"floor  (1 recv/event): {per[0]:5.1f} us/event  ({f1[1] / args.seconds:,.0f} ev/s)")
        print(f"locust (chat user)    : {per[1]:5.1f} us/event  ({lc[1] / args.seconds:,.0f} ev/s)")
        print(f"floor again          : {per[2]:5.1f} us/event  ({f2[1] / args.seconds:,.0f} ev/s)")
        print(f"=> Locust costs {per[1] / floor:.2f}x the floor (mean of both floor runs)")
        print(
            f"Locust's ITL p50 {m['itl_ms']['p50']} ms p99 {m['itl_ms']['p99']} ms "
            f"(target {args.tbt_ms:g}); failed {lc[2]['requests']['failed']}"
        )
        others = busy / wall - server_cpu / wall
        print(
            f"machine: {busy / wall:.2f} cores busy on average, fake server "
            f"{server_cpu / wall:.2f}, clients and everything else {others:.2f}"
        )
    finally:
        procs.close()


if __name__ == "__main__":
    main()
