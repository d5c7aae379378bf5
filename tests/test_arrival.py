"""A request's clock starts when it reached the server, not when its handler got to read it.

The kernel stamps each segment as it arrives (llmsim/server/arrival.py). These tests stop the
server process (SIGSTOP) while a request arrives, so the request waits in its socket, and check
that the TTFT the client sees is still the planned one: the wait is inside the plan, not added
to it. The bounds leave ~150 ms of slack for a loaded machine and still fail by ~100 ms if the
clock started when the request was read.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time

from llmsim.server import arrival

TTFT_MS = 400
STOPPED_S = 0.25  # the server is stopped for this long while the request arrives
BODY = json.dumps(
    {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "ignore_eos": True,
        "stream": True,
    }
)


def test_a_read_keeps_the_kernels_receive_time_of_its_bytes():
    with socket.create_server(("127.0.0.1", 0)) as lst:
        client = socket.create_connection(lst.getsockname())
        conn, _ = lst.accept()
        with client, conn:
            rfile = arrival.stamped_rfile(conn)
            assert rfile is not None
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            sent = time.monotonic()
            time.sleep(0.2)  # the bytes wait in the socket
            assert rfile.readline() == b"GET / HTTP/1.1\r\n"
            read = time.monotonic()
            assert abs(rfile.raw.stamp - sent) < 0.05  # when they came, not when read
            assert read - rfile.raw.stamp > 0.15
            # The request's clock: the stamp, bounded by what the connection allows.
            assert arrival.arrival(rfile, 0.0, read) == rfile.raw.stamp
            assert arrival.arrival(rfile, sent + 0.1, read) == sent + 0.1
            assert arrival.arrival(object(), 0.0, read) == read  # no stamp: now


def test_sockets_that_cannot_stamp_keep_their_usual_reader():
    a, b = socket.socketpair()  # Unix sockets
    with a, b:
        assert arrival.stamped_rfile(a) is None


def _ttft_while_stopped(server, conn: http.client.HTTPConnection) -> float:
    """Send a streamed request while the server is stopped; the TTFT the client sees (s)."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        sent = time.monotonic()
        conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
        time.sleep(STOPPED_S)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    resp = conn.getresponse()
    assert resp.status == 200
    first = None
    while True:
        line = resp.readline()  # de-chunked, as each event arrives
        if not line:
            break
        if first is None and b'"content":"' in line and b'"content":""' not in line:
            first = time.monotonic()
    assert first is not None
    return first - sent


def test_a_request_that_waits_in_its_socket_still_gets_its_planned_ttft(llmsim_server):
    server = llmsim_server(
        "--ttft-ms", str(TTFT_MS), "--ttft-stddev-ms", "0", "--tbt-ms", "5",
        "--tbt-stddev-ms", "0", "--prefill-ms-per-1k", "0",
    )  # fmt: skip
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        # The first request of a new connection, then one on the kept-alive connection.
        for _ in range(2):
            ttft = _ttft_while_stopped(server, conn)
            # Counted from when it was read, it would be at least TTFT + STOPPED_S (650 ms).
            assert TTFT_MS / 1000 - 0.01 < ttft < TTFT_MS / 1000 + STOPPED_S - 0.1, ttft
    finally:
        conn.close()
