"""Serve streams in-process, then report which of the simulator's objects ended up in cycles.

Run by tests/test_pauses.py in a subprocess (it turns the GC off and inspects garbage, which
must not happen inside the test runner). Prints one JSON line: {"garbage": {type: count}, ...}.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import sys

import gevent
import gevent.socket


def request(port: int, body: dict, headers: str = "", hang_up_after: int | None = None) -> None:
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{headers}Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    s = gevent.socket.create_connection(("127.0.0.1", port))
    s.sendall(head + data)
    got = b""
    while True:
        chunk = s.recv(65536)
        got += chunk
        if not chunk or got.endswith(b"0\r\n\r\n") or (not body.get("stream") and b"}" in chunk):
            break
        if hang_up_after is not None and got.count(b"data:") >= hang_up_after:
            break
    s.close()


def main() -> None:
    from llmsim.server.runner import bind_listener, serve_on_socket
    from llmsim.settings import Settings

    settings = Settings(
        port=0, ttft_ms=5, tbt_ms=2, ttft_stddev_ms=0, tbt_stddev_ms=0,
        allow_fault_header=True, access_log=False,
    )  # fmt: skip
    sock = bind_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    gevent.spawn(serve_on_socket, settings, sock)
    gevent.sleep(0.5)
    base = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}
    stream = {**base, "stream": True, "stream_options": {"include_usage": True}}
    jobs = []
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 10):
        jobs += [
            gevent.spawn(request, port, stream),
            gevent.spawn(request, port, base),
            gevent.spawn(request, port, stream, hang_up_after=3),
            gevent.spawn(request, port, stream, "x-llmsim-fault: drop\r\n"),
            gevent.spawn(request, port, stream, "x-llmsim-fault: stream-error\r\n"),
            gevent.spawn(request, port, {**base, "max_tokens": 10**9}),  # a 400
        ]
    gevent.joinall(jobs, timeout=30)
    gevent.sleep(0.5)  # hung-up streams end at their next event
    from llmsim import gcpolicy

    gcpolicy.active().stop()  # its young scans would free cycles before we can see them
    gc.collect()  # what existed before: not the point
    gc.disable()
    jobs = [gevent.spawn(request, port, stream) for _ in range(20)]
    jobs += [gevent.spawn(request, port, stream, hang_up_after=2) for _ in range(20)]
    gevent.joinall(jobs, timeout=30)
    gevent.sleep(0.5)
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    ours = collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}"
        for o in gc.garbage
        if type(o).__module__.startswith("llmsim")
    )
    print(json.dumps({"garbage": dict(ours), "total": len(gc.garbage)}), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
