"""Helpers for the hardening tests: a watcher that measures a server while it is attacked.

While a test throws bad input at the server, `Watch` keeps one paced stream running and polls
/health from a process of its own, and samples the server's RSS, so each row can assert that
nothing stalled the worker and its memory stayed bounded.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

STREAM_BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "watch"}],
    "max_tokens": 60,
    "ignore_eos": True,
    "stream": True,
}


@dataclass
class Window:
    """What the watcher saw between two marks."""

    health_max_s: float = 0.0
    health_polls: int = 0
    gap_max_s: float = 0.0
    gaps: int = 0
    rss_max: int = 0
    errors: list[str] = field(default_factory=list)


# Shared cells between the test and its watcher process.
_HEALTH_MAX, _POLLS, _GAP_MAX, _GAPS, _ERRORS, _STOP = range(6)


class Watch:
    """A paced stream + /health poller in a process of its own, and an RSS sampler.

    Its own process, so the test's own work (sending an 8 MB body, reading an 80 MB one)
    cannot stall the watcher and be mistaken for the server's stall.
    """

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.proc = psutil.Process(pid)
        ctx = multiprocessing.get_context("spawn")
        self._cells = ctx.Array("d", 6)
        self._child = ctx.Process(target=_watch_main, args=(url, self._cells), daemon=True)
        self._rss_stop = threading.Event()
        self._rss_max = 0
        self._rss_thread = threading.Thread(target=self._rss_loop, daemon=True)
        self.rss_start = self.proc.memory_info().rss

    def __enter__(self) -> Watch:
        self._child.start()
        self._rss_thread.start()
        deadline = time.monotonic() + 30
        while (self._cells[_GAPS] == 0 or self._cells[_POLLS] == 0) and time.monotonic() < deadline:
            time.sleep(0.05)  # the watcher's stream is flowing and /health answered
        return self

    def __exit__(self, *exc: object) -> None:
        self._cells[_STOP] = 1
        self._rss_stop.set()
        self._child.join(10)
        if self._child.is_alive():
            self._child.kill()

    def _rss_loop(self) -> None:
        while not self._rss_stop.wait(0.05):
            try:
                self._rss_max = max(self._rss_max, self.proc.memory_info().rss)
            except psutil.Error:
                return

    @contextlib.contextmanager
    def window(self):
        """Collect figures for the block; the Window is filled when the block ends."""
        cells = self._cells
        with cells.get_lock():
            for i in (_HEALTH_MAX, _POLLS, _GAP_MAX, _GAPS, _ERRORS):
                cells[i] = 0.0
        self._rss_max = 0
        out = Window()
        try:
            yield out
        finally:
            time.sleep(0.05)  # let a stall that began at the end show up in a gap
            deadline = time.monotonic() + 5
            while cells[_POLLS] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)  # at least one /health answer inside every window
            with cells.get_lock():
                out.health_max_s, out.gap_max_s = cells[_HEALTH_MAX], cells[_GAP_MAX]
                out.health_polls, out.gaps = int(cells[_POLLS]), int(cells[_GAPS])
                if cells[_ERRORS]:
                    out.errors.append(f"{int(cells[_ERRORS])} watcher requests failed")
            out.rss_max = max(self._rss_max, self.proc.memory_info().rss)


def _watch_main(url: str, cells: Any) -> None:
    """The watcher process: one stream after another, and /health every 50 ms."""

    def note(index: int, value: float, count: int) -> None:
        with cells.get_lock():
            cells[index] = max(cells[index], value)
            cells[count] += 1

    def fail() -> None:
        with cells.get_lock():
            cells[_ERRORS] += 1

    def stream_loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not cells[_STOP]:
                try:
                    with client.stream("POST", url + "/v1/chat/completions", json=STREAM_BODY) as r:
                        last = None
                        for _ in r.iter_raw():
                            now = time.monotonic()
                            if last is not None:
                                note(_GAP_MAX, now - last, _GAPS)
                            last = now
                except httpx.HTTPError:
                    fail()
                    time.sleep(0.05)

    threading.Thread(target=stream_loop, daemon=True).start()
    with httpx.Client(timeout=5) as client:
        while not cells[_STOP]:
            start = time.monotonic()
            try:
                client.get(url + "/health").raise_for_status()
                note(_HEALTH_MAX, time.monotonic() - start, _POLLS)
            except httpx.HTTPError:
                fail()
            time.sleep(0.05)


def raw_request(url: str, data: bytes, wait: float = 5.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it (or `wait`)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"Connection: close" not in out.split(b"\r\n\r\n")[0]:
                head, _, body = out.partition(b"\r\n\r\n")
                length = [
                    ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def past_the_descriptor_limit(host: str, port: int, limit: int) -> list[bytes]:
    """Open `limit` + 20 idle connections (more than a server under `ulimit -n limit` can hold),
    read what the last 10 got within 5 s each, close them all, and return those answers."""
    held = []
    try:
        for _ in range(limit + 20):
            held.append(socket.create_connection((host, port), timeout=5))
        time.sleep(0.5)
        answers = []
        for s in held[-10:]:
            s.settimeout(5)
            try:
                answers.append(s.recv(4096))
            except OSError:
                answers.append(b"")
        return answers
    finally:
        for s in held:
            s.close()


def start_with_fd_limit(args: list[str], limit: int, url_pattern: str, cwd: Any = None):
    """Start `python -m llmsim ARGS` under `ulimit -n limit`; (process, its URL, its output so
    far and from now on, appended by a thread). `url_pattern`'s group 1 is the URL."""
    import os
    import re
    import resource
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSIM_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmsim", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    url = None
    while url is None:
        line = proc.stdout.readline()
        assert line, lines
        lines.append(line)
        m = re.search(url_pattern, line)
        url = m.group(1) if m else None
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, url, lines
