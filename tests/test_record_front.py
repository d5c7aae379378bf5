"""The recorder's own request reader (llmsim/record/front.py), driven over raw sockets: what
gevent's WSGI handler used to do for it (keep-alive, chunked bodies, 100-continue, HTTP/1.0)
and the simulator front end's refusals (400, 413, 414, 431), on a real `llmsim record`."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from llmsim.bench.preflight import free_port
from llmsim.record.bench_hook import RECORDING, RecorderProcess, start_recorder
from test_record_proxy import _wait_lines


@pytest.fixture(scope="module")
def rec(fast_server, tmp_path_factory) -> RecorderProcess:
    run_dir = tmp_path_factory.mktemp("front")
    recorder = start_recorder(fast_server.base_url, run_dir)
    recorder.run_dir = run_dir  # type: ignore[attr-defined]
    yield recorder
    recorder.stop()


def _connect(rec: RecorderProcess) -> socket.socket:
    host, port = rec.url.rsplit("//", 1)[1].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=20)
    return s


def _read_response(s: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, what follows) of one response with Content-Length or chunked framing."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before a response head: {buf!r}")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if m:
        n = int(m.group(1))
        while len(rest) < n:
            rest += s.recv(65536)
        return head, rest[:n], rest[n:]
    assert re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head), head
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += s.recv(65536)
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            rest += s.recv(65536)
        body, rest = body + rest[:size], rest[size + 2 :]
        if not size:
            return head, body, rest


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _chat_body(content: str, **extra) -> bytes:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps({**body, "max_tokens": 3}).encode()


def test_keep_alive_chunked_bodies_continue_and_http10(rec):
    s = _connect(rec)
    for i in range(3):  # several requests on one connection
        body = _chat_body(f"keep-alive {i}")
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))  # fmt: skip
        head, data, rest = _read_response(s)
        assert head.startswith(b"HTTP/1.1 200") and not rest
        assert json.loads(data)["usage"]["completion_tokens"] == 3
    # A chunked request body, split anywhere, with a chunk extension and a trailer.
    body = _chat_body("chunked", stream=True)
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:]))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    s.sendall(head + chunks + b"0\r\nX-T: 1\r\n\r\n")
    head, data, rest = _read_response(s)
    assert head.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data and not rest
    # Expect: 100-continue is answered before the body is sent.
    body = _chat_body("continue")
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
    interim = s.recv(100)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(body)
    head, data, _ = _read_response(s)
    assert head.startswith(b"HTTP/1.1 200") and json.loads(data)["choices"]
    s.close()
    # HTTP/1.0: a streamed (chunked upstream) reply comes as its payload, ending at the close.
    s = _connect(rec)
    body = _chat_body("http/1.0", stream=True)
    s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, payload = data.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    assert payload.startswith(b"data: {") and payload.rstrip().endswith(b"data: [DONE]")
    s.close()
    lines = _wait_lines(rec.run_dir / RECORDING, 6)
    assert [x["model"] for x in lines[-6:]] == ["gpt-4o"] * 6
    assert [x["stream"] for x in lines[-6:]] == [False, False, False, True, False, True]
    assert all(x["error_kind"] is None for x in lines[-6:])


@pytest.mark.parametrize(
    "request_bytes, status, code",
    [
        (b"GARBAGE\r\n\r\n", 400, "invalid_request_line"),
        (b"GET /health HTTP/2.0\r\n\r\n", 400, "invalid_request_line"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET /health HTTP/1.1\r\n" + b"X-Big: " + b"b" * 40000 + b"\r\n\r\n", 431,
         "header_too_large"),
        (b"GET /health HTTP/1.1\r\n" + b"X-A: 1\r\n" * 120 + b"\r\n", 431, "too_many_headers"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413,
         "request_too_large"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "conflicting_framing"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
         b"\r\n", 400, "invalid_content_length"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
         "invalid_chunked_body"),
    ],
)  # fmt: skip
def test_refusals_are_the_simulators_and_close_the_connection(rec, request_bytes, status, code):
    s = _connect(rec)
    s.sendall(request_bytes)
    head, data, _ = _read_response(s)
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert json.loads(data)["error"]["code"] == code
    assert b"connection: close" in head.lower() and _closed(s)
    s.close()
    assert httpx.get(rec.url + "/health", timeout=10).json()["status"] == "ok"


_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


def _one_stream_upstream(listener: socket.socket) -> socket.socket:
    """Accept one connection, read a request, send the head of a stream and one event."""
    conn, _ = listener.accept()
    conn.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    conn.sendall(head + b"%x\r\n%s\r\n" % (len(_EVENT), _EVENT))
    return conn


def _stream_request(recorder: RecorderProcess) -> socket.socket:
    s = _connect(recorder)
    body = _chat_body("a stream", stream=True)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))  # fmt: skip
    got = b""
    while b"hi" not in got:
        got += s.recv(65536)
    return s


def test_a_client_leaving_mid_stream_releases_the_upstream_and_sigterm_lets_one_finish(
    tmp_path,
):
    """A fake upstream that sends a stream's head and one event, then waits. First: the client
    hangs up, and the recorder must close its upstream connection (the upstream sees EOF).
    Then: SIGTERM while a stream is in flight, which must end whole and be recorded."""
    listener = socket.create_server(("127.0.0.1", free_port()))
    released = threading.Event()

    def upstream() -> None:
        conn = _one_stream_upstream(listener)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        released.set()
        conn.close()
        conn = _one_stream_upstream(listener)
        time.sleep(1.5)  # longer than gevent's own 1 s stop timeout: the drain's grace counts
        conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(_EVENT), _EVENT))
        conn.close()

    threading.Thread(target=upstream, daemon=True).start()
    recorder = start_recorder(f"http://127.0.0.1:{listener.getsockname()[1]}", tmp_path)
    try:
        _stream_request(recorder).close()
        assert released.wait(15), "the upstream connection was kept after the client left"
        (line,) = _wait_lines(tmp_path / RECORDING, 1)
        assert line["error_kind"] == "client_disconnect" and line["output_tokens"] == 1
        assert httpx.get(recorder.url + "/health", timeout=10).json()["in_flight"] == 0

        s = _stream_request(recorder)
        recorder.proc.send_signal(signal.SIGTERM)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            assert chunk, f"the stream was cut at SIGTERM: {data!r}"
            data += chunk
        assert data.count(b"hi") == 1  # the second event (the first came before the signal)
        assert recorder.proc.wait(15) == 0
        lines = _wait_lines(tmp_path / RECORDING, 2)
        assert lines[1]["error_kind"] is None and lines[1]["output_tokens"] == 2
    finally:
        recorder.stop()
        listener.close()


def test_https_upstream_and_head_go_through_urllib3_framed_by_the_front(
    llmsim_server, tmp_path, monkeypatch
):
    """What the hub relay does not take (a TLS upstream, HEAD) is written by the recorder
    itself: a streamed reply chunked as it arrives, HEAD without a body, on a kept-alive
    connection."""
    from conftest import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    up = llmsim_server(
        "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
        "--ttft-ms", "5", "--ttft-stddev-ms", "0", "--tbt-ms", "1", "--tbt-stddev-ms", "0",
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the recorder trusts the test's certificate
    recorder = start_recorder(up.base_url, tmp_path)
    try:
        s = _connect(recorder)
        s.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and not rest
        body = _chat_body("over tls", stream=True)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))  # fmt: skip
        head, data, _ = _read_response(s)  # the same connection: HEAD left no body behind
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
        assert data.count(b"data: {") >= 4 and data.rstrip().endswith(b"data: [DONE]")
        s.close()
        lines = _wait_lines(tmp_path / RECORDING, 2)
        assert [x["status"] for x in lines] == [200, 200]
        assert lines[1]["stream"] and lines[1]["output_tokens"] == 3
    finally:
        recorder.stop()


def test_at_the_descriptor_limit_clients_get_503_and_the_recorder_recovers(tmp_path):
    """As the simulator's front end: a client past the limit gets a 503, not a silent backlog."""
    from hardening_support import past_the_descriptor_limit, start_with_fd_limit

    limit = 96
    proc, url, lines = start_with_fd_limit(
        ["record", "--target", "http://127.0.0.1:9", "--host", "127.0.0.1", "--port", "0",
         "--out", str(tmp_path / "rec.jsonl")],
        limit, r" at (http://\S+) into ",
    )  # fmt: skip
    try:
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        answers = past_the_descriptor_limit(host, int(port), limit)
        assert any(a.startswith(b"HTTP/1.1 503") for a in answers), answers
        time.sleep(0.5)
        with httpx.Client(timeout=5) as c:
            assert c.get(url + "/health").status_code == 200  # recovered
        assert "Traceback" not in "".join(lines)
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout:
            proc.stdout.close()
