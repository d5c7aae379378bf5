"""A tiny OpenAI-style chat server that misbehaves on request, for testing load clients.

    python -m llmsim.load.fakeserver [--port 0] [--tbt-ms 0]

The request's "model" picks the behaviour: ok (stream max_tokens tokens), burst (the whole
stream in one write, for client throughput benchmarks), http_500, http_429, no_done, malformed,
error_event, error_object, not_sse, drop (close mid-stream), hangup (close before responding),
slow (stall 5 s before the headers), no_usage. It prints "listening on http://127.0.0.1:PORT/v1".
`GET /fake/stats` answers {"events": N}: SSE events sent so far (benchmarks count with it).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from functools import lru_cache
from typing import Any

import gevent
from gevent.server import StreamServer

TOKENS = ("Hello", " world", ",", " this", " is", " a", " fake", " stream", ".")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _delta(i: int, content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    if i == 0:
        delta = {"role": "assistant", "content": ""}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


@lru_cache(maxsize=64)
def stream_events(n: int, usage: bool, prompt_tokens: int = 10) -> tuple[bytes, ...]:
    """The SSE events of an `n`-token stream: a role chunk, `n` content chunks, a finish_reason
    "length" chunk and, with `usage`, a usage chunk; no [DONE] (the caller sends it).

    Cached, so requests of the same length reuse the encoded bytes.
    """
    events = [_event(_delta(0))]
    events += [_event(_delta(1, TOKENS[i % len(TOKENS)])) for i in range(n)]
    events.append(_event(_delta(1, None, "length")))
    if usage:
        u = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": n + 10}
        events.append(_event({"id": "chatcmpl-fake", "choices": [], "usage": u}))
    return tuple(events)


def _read_request(sock: socket.socket, buf: bytes) -> tuple[dict[str, Any], bytes] | None:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    if head.startswith(b"GET /fake/stats"):
        return {"model": "__stats__"}, rest
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            return None
        rest += data
    try:
        body = json.loads(rest[:length] or b"{}")
    except ValueError:
        body = {}
    return body, rest[length:]


def _head(status: str, ctype: str, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}x-llmsim-ttft-ms: 0.000\r\n"
    ).encode()


class FakeServer:
    """The fake chat API, served on each accepted socket; `tbt_ms` (ms) is the pause before each
    streamed event, and `events_sent` the count GET /fake/stats reports.
    """

    def __init__(self, tbt_ms: float = 0.0) -> None:
        self.tbt = tbt_ms / 1000.0
        self.events_sent = 0

    def handle(self, sock: socket.socket, _addr: Any) -> None:
        """Serve one connection's requests in turn (keep-alive) until the client closes it, a mode
        closes it, or a socket error; then close the socket.
        """
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                req = _read_request(sock, buf)
                if req is None:
                    return
                body, buf = req
                if not self.respond(sock, body):
                    return
        except OSError:
            return
        finally:
            sock.close()

    def respond(self, sock: socket.socket, body: dict[str, Any]) -> bool:
        """Send one response; False when the connection must close."""
        mode = str(body.get("model", "ok"))
        if mode == "__stats__":
            payload = json.dumps({"events": self.events_sent}).encode()
            sock.sendall(
                _head("200 OK", "application/json")
                + b"Content-Length: %d\r\n\r\n" % len(payload)
                + payload
            )
            return True
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if mode.startswith("http_"):
            code = int(mode[5:])
            err = {"error": {"message": f"fake {code}", "type": "fake_error", "code": code}}
            payload = json.dumps(err).encode()
            sock.sendall(
                _head(f"{code} Error", "application/json")
                + b"Content-Length: %d\r\n\r\n" % len(payload)
                + payload
            )
            return True
        if mode == "hangup":
            return False
        if mode == "slow":
            gevent.sleep(5)
        if mode == "not_sse" or not body.get("stream"):
            text = "".join(TOKENS[i % len(TOKENS)] for i in range(n))
            obj = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": n + 10},
            }
            payload = json.dumps(obj).encode()
            sock.sendall(
                _head("200 OK", "application/json")
                + b"Content-Length: %d\r\n\r\n" % len(payload)
                + payload
            )
            return True
        sock.sendall(
            _head("200 OK", "text/event-stream", "Transfer-Encoding: chunked\r\n") + b"\r\n"
        )
        events = list(stream_events(n, usage and mode != "no_usage"))
        if mode == "burst":
            sock.sendall(_chunk(b"".join(events) + b"data: [DONE]\n\n") + b"0\r\n\r\n")
            self.events_sent += len(events)  # as the paced path counts: [DONE] is not one
            return True
        if mode == "malformed":
            events = [*events[:2], b"data: {not json\n\n"]
        elif mode == "error_event":
            events = [*events[:2], b'event: error\ndata: {"error":{"message":"overloaded"}}\n\n']
        elif mode == "error_object":
            events = [*events[:2], _event({"error": {"message": "overloaded", "type": "x"}})]
        elif mode == "drop":
            for ev in events[:3]:
                sock.sendall(_chunk(ev))
                self.events_sent += 1
            sock.shutdown(socket.SHUT_RDWR)
            return False
        for ev in events:
            if self.tbt:
                gevent.sleep(self.tbt)
            sock.sendall(_chunk(ev))
            self.events_sent += 1
        if mode not in ("no_done", "malformed", "error_event", "error_object"):
            sock.sendall(_chunk(b"data: [DONE]\n\n"))
        sock.sendall(b"0\r\n\r\n")
        return True


def main(argv: list[str] | None = None) -> None:
    """Serve on --host/--port (0: any free port), print the base URL, and run until Ctrl-C."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tbt-ms", type=float, default=0.0)
    args = ap.parse_args(argv)
    server = StreamServer((args.host, args.port), FakeServer(args.tbt_ms).handle, backlog=1024)
    server.start()
    print(f"listening on http://{args.host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
