"""Incremental Server-Sent Events parsing: each event is handed over as soon as its bytes arrive.

Locust's `iter_lines()`/`iter_content(1024)` wait for 1,024 bytes or the end of the stream, which
delays a slow stream's first event by hundreds of milliseconds. Here every `recv()` is parsed as
it returns (llmsim/load/reactor.py reads the bytes), so TTFT and inter-token gaps measure the
wire, not our parsing.
"""

from __future__ import annotations

# One SSE event: (event name or None for the default "message", data as bytes).
Event = tuple[bytes | None, bytes]


class SSEParser:
    """Feed arbitrary byte chunks, get complete events (WHATWG SSE rules, any line ending)."""

    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the previous chunk ended in CR: a following LF belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by `chunk` (bytes of the stream as they arrived)."""
        if (
            chunk[:6] == b"data: "
            and not self._buf
            and not self._cr
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk[-1:] == b"\n"
            and b"\r" not in chunk
        ):
            # Fastest path: exactly one "data: ...\n\n" event, what every OpenAI-style server
            # sends per write (and so per recv).
            return [(None, chunk[6:-2])]
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
