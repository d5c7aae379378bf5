"""The issue-11 attacks at full size, against one `llmsim serve`, with the figures they cause.

For each attack: its status, how long the server took, the worst /health latency and the
worst gap in a paced stream (20 ms a token) on the same worker meanwhile, and the server's
RSS. The test suite runs tiny versions (tests/test_hardening.py); this prints the real ones.
Everything is on loopback. Other processes' CPU over the run is printed: on a busy machine
the gaps include their scheduling, so read the gap figures against that.

    python benchmarks/hardening_attacks.py            # ~2 minutes
    python benchmarks/hardening_attacks.py --only prompt --only embeddings --repeat 3 --streams 100

`--streams N` keeps N more paced streams open on the same worker meanwhile (a process of its
own reads them), so the loop has real work while the attack is served.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import selectors
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import start_server
from hardening_support import Watch, raw_request, status_of

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def rf(schema: dict, **extra: object) -> dict:
    """A chat body asking for a json_schema response_format of `schema`, plus `extra` fields."""
    return {**CHAT, **extra, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": schema}}}  # fmt: skip


ATTACKS = [
    ("chat max_tokens 10M ignore_eos stream", "/v1/chat/completions",
     {**CHAT, "max_tokens": 10_000_000, "ignore_eos": True, "stream": True}),
    ("n 128 x max_tokens 1M", "/v1/chat/completions", {**CHAT, "n": 128, "max_tokens": 1_000_000}),
    ("Responses stream max_output_tokens 5M", "/v1/responses",
     {"model": "gpt-4o", "input": "hi", "stream": True, "max_output_tokens": 5_000_000}),
    ("schema minProperties 500", "/v1/chat/completions",
     rf({"type": "object", "minProperties": 500}, max_tokens=300)),
    ("schema minLength 1M", "/v1/chat/completions",
     rf({"type": "string", "minLength": 1_000_000}, max_tokens=100)),
    ("schema nested minItems 150^3", "/v1/chat/completions",
     rf({"type": "array", "minItems": 150, "items": {"type": "array", "minItems": 150,
         "items": {"type": "array", "minItems": 150}}})),
    ("schema pattern \\d{10000000}", "/v1/chat/completions",
     rf({"type": "string", "pattern": "\\d{10000000}"})),
    ("prompt of 8,000,000 'a'", "/v1/chat/completions",
     {**CHAT, "max_tokens": 1, "messages": [{"role": "user", "content": "a" * 8_000_000}]}),
    ("embeddings 2,048 x text-embedding-3-large float", "/v1/embeddings",
     {"model": "text-embedding-3-large", "input": [f"input number {i}" for i in range(2048)]}),
    # 8 MB bodies of tiny values: the parse holds the GIL for as long as it builds objects.
    ("8 MB of [[],[],...] in a chat body", "/v1/chat/completions",
     {**CHAT, "metadata": {"x": [[]] * 2_600_000}}),
    ("a dict of 600,000 distinct keys", "/v1/chat/completions",
     {**CHAT, "metadata": {f"k{i}": 1 for i in range(600_000)}}),
    ("450,000 ints (under the value bound)", "/v1/chat/completions",
     {**CHAT, "metadata": {"x": [1] * 450_000}}),
    ("Anthropic 100,000 stop_sequences", "/v1/messages",
     {"model": "claude-sonnet-4", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
      "stop_sequences": [f"s{i}" for i in range(100_000)]}),
]  # fmt: skip


CHUNKED = "9 MB chunked body"
BACKGROUND = json.dumps({**CHAT, "max_tokens": 500, "ignore_eos": True, "stream": True}).encode()


def _background(url: str, n: int, stop: object) -> None:
    """Keep n streams (500 tokens at the server's pace) open, each started again when it ends."""
    u = urlsplit(url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.hostname}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BACKGROUND)}\r\n\r\n"
    ).encode()
    sel = selectors.DefaultSelector()

    def open_one() -> None:
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(head + BACKGROUND)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)

    for _ in range(n):
        open_one()
    while not stop.is_set():  # type: ignore[attr-defined]
        for key, _ in sel.select(0.2):
            sock = key.fileobj
            try:
                data = sock.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                open_one()


def _chunked_attack(url: str, watch: Watch) -> tuple[int, float, object]:
    big = b"a" * (9 << 20)
    chunks = b"".join(b"%x\r\n%s\r\n" % (65536, big[i : i + 65536])
                      for i in range(0, len(big), 65536))  # fmt: skip
    with watch.window() as w:
        t = time.monotonic()
        out = raw_request(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
                          wait=60)  # fmt: skip
    return status_of(out), time.monotonic() - t, w


def main() -> None:
    """Run the chosen attacks (--repeat times each, then the chunked body) against one server
    (TTFT 5 ms, 20 ms a token, no jitter) with --streams background streams; print a row per
    attack, the machine's CPU over the run and, last, the worst gap and /health latency (ms)
    as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only the attacks whose name contains this (repeatable)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="run each attack this many times")
    ap.add_argument("--streams", type=int, default=0, help="background paced streams meanwhile")
    args = ap.parse_args()
    attacks = [a for a in ATTACKS if not args.only or any(o in a[0] for o in args.only)]
    server = start_server(
        "--ttft-ms", "5", "--ttft-stddev-ms", "0", "--tbt-ms", "20", "--tbt-stddev-ms", "0"
    )  # fmt: skip
    me, srv = psutil.Process(), psutil.Process(server.proc.pid)
    machine_start = psutil.cpu_times()
    own_start = sum(srv.cpu_times()[:2]) + sum(me.cpu_times()[:2])
    wall = time.monotonic()
    rows = []
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    load = ctx.Process(target=_background, args=(server.url, args.streams, stop), daemon=True)
    if args.streams:
        load.start()
    try:
        with Watch(server.url, server.proc.pid) as watch, httpx.Client(timeout=600) as c:
            time.sleep(1)
            for name, path, body in attacks:
                for _ in range(args.repeat):
                    with watch.window() as w:
                        t = time.monotonic()
                        r = c.post(server.url + path, json=body)
                        took = time.monotonic() - t
                    rows.append((name, r.status_code, took, w))
            if not args.only or any(o in CHUNKED for o in args.only):
                rows.append((CHUNKED, *_chunked_attack(server.url, watch)))
        own = sum(srv.cpu_times()[:2]) + sum(me.cpu_times()[:2]) - own_start
    finally:
        stop.set()
        if args.streams:
            load.join(5)
        server.stop()
    elapsed = time.monotonic() - wall
    busy = psutil.cpu_times()
    total = sum(busy[:3]) - sum(machine_start[:3])  # user+nice+system of the whole machine
    print(f"{'attack':48} {'status':>6} {'time s':>7} {'health max ms':>14} {'gap max ms':>11} "
          f"{'RSS MB':>7}")  # fmt: skip
    for name, status, took, w in rows:
        print(f"{name:48} {status:>6} {took:7.2f} {w.health_max_s * 1000:14.1f} "
              f"{w.gap_max_s * 1000:11.1f} {w.rss_max / 1e6:7.0f}")  # fmt: skip
    print(
        f"machine CPU over the run: {total / elapsed:.2f} cores busy, of which this script "
        f"and the server {own / elapsed:.2f}, other processes {(total - own) / elapsed:.2f}"
    )
    print(
        json.dumps(
            {
                "max_gap_ms": round(max(w.gap_max_s for *_, w in rows) * 1000, 1),
                "max_health_ms": round(max(w.health_max_s for *_, w in rows) * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
