"""Baseline servers that `serve_speed.py` measures llmsim against, on the same stack.

    python benchmarks/serve_baselines.py flask   # minimal Flask-on-gevent, fixed chat completion
    python benchmarks/serve_baselines.py sse     # bare gevent WSGI loop, json.dumps per SSE chunk
    python benchmarks/serve_baselines.py paced   # naive paced SSE: one gevent.sleep per token
                                                 # (TTFT 200 ms, 20 ms per token)

Each binds 127.0.0.1 on a free port (or --port), sets TCP_NODELAY on every accepted socket
(without it gevent's server stalls ~40 ms per response: Nagle's algorithm holds the body behind
the client's delayed ACK) and prints one line `URL http://…` when it is ready. Each stops on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import BinaryIO

    from flask import Flask, Response
    from gevent.pywsgi import WSGIHandler, WSGIServer

# A fixed reply with the same shape and size as llmsim's 16-token answer.
# 16 tokens of the lorem generator's vocabulary (the text of one llmsim reply).
CONTENT_16 = "Side id area list end who care gold form keep often. Fact than force kind"
FIXED_COMPLETION = {
    "id": "chatcmpl-baab6c118a6a35611f936859",
    "object": "chat.completion",
    "created": 1795783313,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": CONTENT_16,
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "length",
        }
    ],
    "usage": {
        "prompt_tokens": 13,
        "completion_tokens": 16,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_llmsim_cc9c81",
}

_TEXT = (
    "the quick brown fox jumps over lazy dog and then some more words to make a reply that "
    "looks like text with a small vocabulary of common English filler"
)
WORDS = _TEXT.split()


def nodelay_handler() -> type[WSGIHandler]:
    """gevent's WSGIHandler setting TCP_NODELAY on each accepted socket (without it gevent
    stalls ~40 ms per response)."""
    from gevent.pywsgi import WSGIHandler

    class NoDelayHandler(WSGIHandler):
        def __init__(
            self,
            sock: socket.socket,
            address: tuple[str, int],
            server: WSGIServer,
            rfile: BinaryIO | None = None,
        ) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().__init__(sock, address, server, rfile)

    return NoDelayHandler


def flask_app() -> Flask:
    """The minimal endpoint: read the body, answer a fixed, pre-serialised chat completion."""
    from flask import Flask, Response, request

    app = Flask("baseline")
    body = json.dumps(FIXED_COMPLETION)

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        request.get_data()
        return Response(body, mimetype="application/json")

    return app


def sse_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """A bare WSGI loop (no Flask): one json.dumps'ed chunk per token, one write per chunk."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    req = json.loads(environ["wsgi.input"].read(length) or b"{}")
    n = int(req.get("max_tokens") or 100)
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    return _sse_events(n)


def paced_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """The naive paced server: sse_app's chunks, with a gevent.sleep before each one."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    req = json.loads(environ["wsgi.input"].read(length) or b"{}")
    n = int(req.get("max_tokens") or 100)
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    return _paced(_sse_events(n), 0.2, 0.02)


def _paced(events: Iterable[bytes], ttft_s: float, tbt_s: float) -> Iterator[bytes]:
    import gevent

    gevent.sleep(ttft_s)
    content = 0
    for data in events:
        if b'"delta": {"content": " ' in data:
            if content:
                gevent.sleep(tbt_s)
            content += 1
        yield data


def _sse_events(n: int) -> Iterator[bytes]:
    chunk = {
        "id": "chatcmpl-9ab7ff64b3979bccfc10adb0",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "gpt-4o",
        "service_tier": "default",
        "system_fingerprint": "fp_llmsim_cc9c81",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    choice = chunk["choices"][0]
    yield ("data: " + json.dumps(chunk) + "\n\n").encode()
    for i in range(n):
        choice["delta"] = {"content": " " + WORDS[i % len(WORDS)]}
        yield ("data: " + json.dumps(chunk) + "\n\n").encode()
    choice["delta"] = {}
    choice["finish_reason"] = "length"
    yield ("data: " + json.dumps(chunk) + "\n\n").encode()
    yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> int:
    """Serve the chosen baseline on 127.0.0.1 (--port, 0: a free port), print its `URL` line
    and serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("flask", "sse", "paced"))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    import gevent
    from gevent.pywsgi import WSGIServer

    app = {"flask": flask_app, "sse": lambda: sse_app, "paced": lambda: paced_app}[args.kind]()
    server = WSGIServer(
        ("127.0.0.1", args.port), app, handler_class=nodelay_handler(), log=None, error_log=None
    )
    server.start()
    print(f"URL http://127.0.0.1:{server.server_port}", flush=True)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
