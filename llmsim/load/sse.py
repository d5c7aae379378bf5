"""Incremental Server-Sent Events reading: each event is handed over as soon as its bytes arrive.

Locust's `iter_lines()`/`iter_content(1024)` wait for 1,024 bytes or the end of the stream, which
delays a slow stream's first event by hundreds of milliseconds. Here every `recv()` is parsed as
it returns and stamped with the time it returned, so TTFT and inter-token gaps measure the wire,
not our parsing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

# One SSE event: (event name or None for the default "message", data as bytes).
Event = tuple[bytes | None, bytes]

RECV_SIZE = 65536


class SSEParser:
    """Feed arbitrary byte chunks, get complete events (WHATWG SSE rules, any line ending)."""

    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the previous chunk ended in CR: a following LF belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        events: list[Event] = []
        start = 0
        find = buf.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            # Fast path: the single "data: ..." line every OpenAI-style server sends.
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append((None, block[6:]))
            elif block:
                _parse_block(block, events)
        self._buf = buf[start:] if start else buf
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated by a blank line."""
        return self._buf


def _parse_block(block: bytes, events: list[Event]) -> None:
    name: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line:
            # A blank line here means the block began with one: dispatch what we have.
            if data:
                events.append((name, b"\n".join(data)))
            name, data = None, []
            continue
        if line.startswith(b":"):
            continue  # comment (keep-alive, "OPENROUTER PROCESSING", ...)
        field, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value or None
    if data:
        events.append((name, b"\n".join(data)))


class StreamClosed(Exception):
    """The connection closed before the HTTP response body was complete."""


def iter_body_chunks(response: Any, recv_size: int = RECV_SIZE) -> Iterator[tuple[float, bytes]]:
    """Yield (perf_counter when received, body bytes) from a geventhttpclient response.

    Reads the socket directly: the response's own `read(n)` waits for n bytes, and its iterator
    for a 4 KiB block, both of which would hold back small SSE events.
    """
    raw = getattr(response, "_response", response)  # accept CompatResponse or the raw response
    body = getattr(raw, "_body_buffer", None)
    if body is None or not hasattr(raw, "feed"):
        yield from _iter_lines_fallback(raw)
        return
    perf = time.perf_counter
    if body:
        data = bytes(body)
        del body[:]
        yield perf(), data
    while not raw.message_complete:
        sock = raw._sock
        if sock is None:
            raise StreamClosed("connection released before the response was complete")
        try:
            data = sock.recv(recv_size)
            now = perf()
            raw.feed(data)  # llhttp strips chunked framing into _body_buffer; b"" means EOF
        except BaseException:
            raw.release()
            raise
        if body:
            chunk = bytes(body)
            del body[:]
            yield now, chunk
        if not data and not raw.message_complete:
            raw.release()
            raise StreamClosed("connection closed mid-stream")


def _iter_lines_fallback(raw: Any) -> Iterator[tuple[float, bytes]]:
    # For response objects without the internals used above: a line as soon as it arrives.
    perf = time.perf_counter
    while True:
        line = raw.readline(b"\n")
        if not line:
            return
        yield perf(), line
