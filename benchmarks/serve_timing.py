"""An independent streaming client: raw non-blocking sockets and epoll, no HTTP library.

Two modes, both printing one JSON object on stdout at the end:

  timing  N keep-alive connections, each a closed loop of streamed chat completions; every SSE
          event is timestamped when epoll reports its bytes readable. TTFT is request sent →
          first chunk with non-empty content; a gap is the time between consecutive content
          chunks of one stream. Only streams sent after the ramp (when all N are open) count.
  hold    open N streams of a slow server, print `READY <n>` once every stream has received its
          first content chunk, then hold them until a line arrives on stdin (or --hold-s passes).

The client's own CPU use is reported: past ~80 % of a core its timestamps are not trustworthy.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import socket
import sys
import time
from urllib.parse import urlsplit

# Reads of 16 KB: a 256 KB recv() cost the client most of its time (each call allocates the
# whole buffer, above malloc's mmap threshold). An event is ~250 bytes.
CONTENT = b'"delta":{"content":'
DONE = b"data: [DONE]"
END = b"0\r\n\r\n"


def build_request(host: str, port: int, body: dict) -> bytes:
    """The bytes of one POST /v1/chat/completions (keep-alive) carrying `body` as JSON."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


class Conn:
    """One keep-alive connection and its current response: unparsed bytes, status, the times
    of its content chunks and the events counted so far."""

    __slots__ = ("buf", "content", "counted", "done", "events", "ok", "sent", "sock", "times")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reset(0.0)

    def reset(self, sent: float) -> None:
        """Start a new response to a request sent at `sent` (monotonic s)."""
        self.sent = sent
        self.buf = b""
        self.times: list[float] = []
        self.done = False
        self.ok = None  # status line checked on the first bytes
        self.events = 0
        self.counted = False

    def feed(self, data: bytes, t: float) -> bool:
        """Take bytes read at time t; True when the response is complete.

        Whole events only (up to the last blank line), counted with bytes.count: the client
        must stay far from a full core, or its own delays would show up as the server's.
        """
        buf = self.buf + data if self.buf else data
        if self.ok is None:
            if len(buf) < 12:
                self.buf = buf
                return False
            self.ok = buf.startswith(b"HTTP/1.1 200")
        if not self.done:
            whole, sep, rest = buf.rpartition(b"\n\n")
            if sep:
                self.events += whole.count(b"\n\n") + 1
                n = whole.count(CONTENT)
                if n:
                    self.times.extend([t] * n)
                if DONE in whole:
                    self.done = True
                buf = rest
        self.buf = buf
        return self.done and buf.endswith(END)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99 and max of `values` (s) in ms to 1 µs, each percentile the sorted
    list's element int(p x n); None for each when there are none."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    v = sorted(values)
    n = len(v)

    def q(p: float) -> float:
        return round(v[min(n - 1, int(p * n))] * 1000, 3)

    return {"n": n, "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(v[-1] * 1000, 3)}


def connect(host: str, port: int) -> socket.socket:
    """A non-blocking TCP_NODELAY connection to host:port."""
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return s


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_timing(args: argparse.Namespace) -> dict:
    """The timing mode: --streams connections opened over --ramp-s, each a closed loop for
    --duration-s, then up to --drain-s for streams in flight. TTFT and gap percentiles (ms)
    of the streams sent after the ramp, counts, mean in flight and the client's CPU (% of a
    core over the measured time)."""
    u = urlsplit(args.url)
    host, port = u.hostname, u.port
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
        "max_tokens": args.tokens,
        "ignore_eos": True,
        "stream": True,
    }
    request = build_request(host, port, body)
    # --unique: each request's message carries its number, so a proxy's recording of it can be
    # matched to what this client measured (per_request in the result: message -> TTFT ms).
    per_request: dict[str, float] = {}
    seq = 0
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    n = args.streams
    t0 = time.monotonic()
    ramp = args.ramp_s
    measure_from = t0 + ramp
    stop_sending = measure_from + args.duration_s
    hard_stop = stop_sending + args.drain_s
    ttfts: list[float] = []
    gaps: list[float] = []
    streams = errors = short = 0
    events_total = 0  # every SSE event received, measured or not
    opened = 0
    cpu0 = None
    cpu_at_measure = 0.0
    inflight_samples: list[int] = []
    next_sample = measure_from

    def send(c: Conn, now: float) -> None:
        nonlocal seq
        c.reset(now)
        if args.unique is not None:
            seq += 1
            c.content = f"Tell me a story about a fox. {args.unique}#{seq}"
            body["messages"][0]["content"] = c.content
            c.sock.send(build_request(host, port, body))
            return
        c.sock.send(request)  # small: fits the socket buffer, never partial

    while True:
        now = time.monotonic()
        # Ramp: open connection i at t0 + i * ramp / n, so arrivals are spread over one stream.
        while opened < n and now >= t0 + opened * ramp / n:
            s = connect(host, port)
            c = Conn(s)
            conns[s.fileno()] = c
            ep.register(s.fileno(), select.EPOLLIN)
            send(c, time.monotonic())
            opened += 1
        if cpu0 is None and now >= measure_from:
            cpu0 = cpu_seconds()
            cpu_at_measure = now
        if now >= next_sample and now < stop_sending:
            inflight_samples.append(sum(1 for c in conns.values() if c.sent))
            next_sample += 0.25
        if not conns or now >= hard_stop:
            break
        timeout = 0.001 if opened < n else 0.05
        ready = ep.poll(timeout)
        t = time.monotonic()
        for fd, _ev in ready:
            c = conns[fd]
            try:
                data = c.sock.recv(16384)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                errors += 1
                ep.unregister(fd)
                c.sock.close()
                del conns[fd]
                continue
            before = c.events
            done = c.feed(data, t)
            events_total += c.events - before
            if done:
                if c.sent >= measure_from:
                    if not c.ok or not c.times:
                        errors += 1
                    else:
                        streams += 1
                        if len(c.times) != args.tokens:
                            short += 1
                        ts = c.times
                        ttfts.append(ts[0] - c.sent)
                        if args.unique is not None:
                            per_request[c.content] = round((ts[0] - c.sent) * 1000, 3)
                        gaps.extend(ts[i] - ts[i - 1] for i in range(1, len(ts)))
                if t < stop_sending:
                    send(c, t)
                else:
                    c.sent = 0.0
                    ep.unregister(fd)
                    c.sock.close()
                    del conns[fd]
    end = time.monotonic()
    cpu = cpu_seconds() - (cpu0 or 0.0)
    unfinished = len(conns)
    for c in conns.values():
        c.sock.close()
    ep.close()
    wall = end - (cpu_at_measure or t0)
    return {
        "mode": "timing",
        "streams_target": n,
        "streams_done": streams,
        "errors": errors,
        "events_total": events_total,
        "unfinished": unfinished,
        "wrong_token_count": short,
        "mean_inflight": round(sum(inflight_samples) / len(inflight_samples), 1)
        if inflight_samples
        else 0,
        "ttft_ms": percentiles(ttfts),
        "gap_ms": percentiles(gaps),
        "client_cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
        **({"per_request": per_request} if args.unique is not None else {}),
    }


def run_hold(args: argparse.Namespace) -> dict:
    """The hold mode: open --streams streams, print `READY <live>` once each has a content
    chunk (or 30 s after --ramp-s), hold them for --hold-s or until stdin has a line; how many
    were live and how long opening took (s)."""
    u = urlsplit(args.url)
    host, port = u.hostname, u.port
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
        "max_tokens": args.tokens,
        "ignore_eos": True,
        "stream": True,
    }
    request = build_request(host, port, body)
    ep = select.epoll()
    conns: dict[int, Conn] = {}
    t0 = time.monotonic()
    for i in range(args.streams):
        s = connect(host, port)
        c = Conn(s)
        conns[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLIN)
        c.reset(time.monotonic())
        s.send(request)
        if i % 100 == 99:
            _drain(ep, conns, 0)
    ready_at = None
    deadline = t0 + args.ramp_s + 30
    ep.register(sys.stdin.fileno(), select.EPOLLIN)
    hold_until = None
    while True:
        live = sum(1 for c in conns.values() if c.times)
        now = time.monotonic()
        if ready_at is None and (live >= args.streams or now > deadline):
            ready_at = now
            print(f"READY {live}", flush=True)
            hold_until = now + args.hold_s
        if hold_until is not None and now >= hold_until:
            break
        if _drain(ep, conns, 0.05):
            break
    result = {
        "mode": "hold",
        "streams_target": args.streams,
        "streams_live": sum(1 for c in conns.values() if c.times),
        "open_s": round((ready_at or time.monotonic()) - t0, 3),
    }
    for c in conns.values():
        c.sock.close()
    return result


def _drain(ep: select.epoll, conns: dict[int, Conn], timeout: float) -> bool:
    """Read what is ready; True when stdin says stop."""
    t = time.monotonic()
    for fd, _ev in ep.poll(timeout):
        if fd == sys.stdin.fileno():
            return True
        c = conns.get(fd)
        if c is None:
            continue
        try:
            data = c.sock.recv(16384)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            ep.unregister(fd)
            c.sock.close()
            del conns[fd]
            continue
        c.feed(data, t)
        if len(c.buf) > 4096:
            c.buf = c.buf[-4096:]
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the chosen mode and print its result as one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("timing", "hold"))
    p.add_argument("--url", required=True)
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--model", default="gpt-4o")
    p.add_argument("--ramp-s", type=float, default=2.2, help="spread connection starts over this")
    p.add_argument("--duration-s", type=float, default=8.0, help="measured time after the ramp")
    p.add_argument("--drain-s", type=float, default=10.0, help="wait for in-flight streams")
    p.add_argument("--hold-s", type=float, default=30.0)
    p.add_argument("--unique", metavar="TAG", help="number each request's message, after TAG")
    args = p.parse_args(argv)
    result = run_timing(args) if args.mode == "timing" else run_hold(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
