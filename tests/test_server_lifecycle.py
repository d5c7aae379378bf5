"""Start-up, graceful shutdown, worker processes and clients that vanish mid-stream."""

from __future__ import annotations

import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from streaming_client import stream_chat

SLOW = ("--ttft-ms", "100", "--ttft-stddev-ms", "0", "--tbt-ms", "20", "--tbt-stddev-ms", "0")
BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 40,
    "ignore_eos": True,
}


def test_startup_line_gives_the_sdk_base_url(llmsim_server):
    server = llmsim_server("--profile", "instant")
    line = server.lines[-1]
    assert f"base_url={server.base_url}" in line
    assert server.url.startswith("http://127.0.0.1:")


def _wait_in_flight(server, timeout: float = 15) -> None:
    """Until the server has a request in flight (its stats say so)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as c:
        while time.monotonic() < deadline:
            if c.get(server.url + "/llmsim/stats").json()["requests"]["active"] >= 1:
                return
            time.sleep(0.02)
    raise AssertionError("the stream never started")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_in_flight_streams_finish_on_shutdown(llmsim_server, sig):
    server = llmsim_server(*SLOW)
    results = []
    t = threading.Thread(target=lambda: results.append(stream_chat(server.base_url, BODY)))
    t.start()
    _wait_in_flight(server)  # a fixed 0.3 s sleep raced the client's connect at load 10
    server.proc.send_signal(sig)
    t.join(10)
    (r,) = results
    assert r.done and len(r.content_times) == 40, "the stream was cut by the shutdown"
    assert server.proc.wait(10) == 0
    u = urlsplit(server.url)
    with pytest.raises(OSError):
        socket.create_connection((u.hostname, u.port), timeout=2).close()


def test_grace_period_bounds_the_drain(llmsim_server):
    server = llmsim_server(*SLOW, "--grace-period-s", "0.5")
    body = {**BODY, "max_tokens": 500}  # 10 s of tokens

    def cut_short():
        with pytest.raises(httpx.RemoteProtocolError):  # the drain ended it
            stream_chat(server.base_url, body)

    t = threading.Thread(target=cut_short, daemon=True)
    t.start()
    time.sleep(0.3)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - start < 3
    t.join(5)


def test_two_workers_share_the_port_and_stop_together(llmsim_server):
    server = llmsim_server("--workers", "2", "--profile", "fast")
    parent = psutil.Process(server.proc.pid)
    children = parent.children()
    assert len(children) == 2
    with httpx.Client(timeout=10) as c:
        for _ in range(20):
            r = c.post(server.base_url + "/chat/completions", json={**BODY, "max_tokens": 3})
            assert r.status_code == 200
    r = stream_chat(server.base_url, {**BODY, "max_tokens": 5})
    assert r.done and len(r.content_times) == 5
    assert server.stop() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_client_disconnect_frees_the_stream(llmsim_server):
    server = llmsim_server(*SLOW)
    proc = psutil.Process(server.proc.pid)
    with httpx.Client(timeout=10) as c:  # warm up: one full request
        c.post(server.base_url + "/chat/completions", json={**BODY, "max_tokens": 1})
    base_fds = proc.num_fds()
    u = urlsplit(server.base_url)
    clients = []
    for _ in range(50):
        with (
            httpx.Client(timeout=10) as c,
            c.stream(
                "POST",
                server.base_url + "/chat/completions",
                json={**BODY, "max_tokens": 10_000, "stream": True},
            ) as r,
        ):
            assert r.status_code == 200
            next(r.iter_raw())  # first token arrived, then we hang up
        clients.append(u)
    # Each abandoned generation stops at its next token write and its socket is closed.
    deadline = time.monotonic() + 5
    while proc.num_fds() > base_fds + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.num_fds() <= base_fds + 2
    r = stream_chat(server.base_url, {**BODY, "max_tokens": 3})
    assert r.done and len(r.content_times) == 3
    assert server.proc.poll() is None


def test_sigterm_right_after_the_start_up_line_drains_and_exits_0(llmsim_server):
    # The start-up line is printed once the signal handlers are in place: a script that waits
    # for it and stops the server at once gets a clean exit, not a kill by SIGTERM (-15).
    for _ in range(3):
        server = llmsim_server()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
