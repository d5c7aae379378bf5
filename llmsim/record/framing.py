"""HTTP/1.1 chunked framing as the recorder follows it: on the forwarding path only where a
body ends (`ChunkEnd`, no copies), and in the analysis process the payload itself (`Dechunker`).

The recorder forwards an upstream's chunked body with its own framing and keeps the reads as
they came; the payload is only needed for the recording, so it is taken out after the exchange,
in the analysis process, read by read (each read's payload keeps that read's arrival time).
"""

from __future__ import annotations

MAX_SIZE_LINE = 4096


class ProtocolError(Exception):
    """The upstream sent something that is not HTTP/1.1."""


def _whole_chunk(data: bytes) -> int:
    """Where the payload starts when `data` is exactly one whole chunk, `<hex>\r\n<payload>\r\n`
    (the common read: a server writes one chunk per event), else 0. int() takes the bytes and
    ignores the CR; a chunk extension or a bad size line is left to the long way."""
    j = data.find(b"\n", 0, 18)
    if j > 0:
        try:
            size = int(data[:j], 16)
        except ValueError:
            return 0
        if size > 0 and j + size + 3 == len(data):
            return j + 1
    return 0


def _next_line(framing: Dechunker | ChunkEnd, data: bytes, i: int) -> tuple[bytes | None, int]:
    """The size or trailer line that starts at `i` (joined with what an earlier read left in
    `framing.line`) and where the next one starts; (None, end) when the line goes on in the
    next read, which is kept."""
    j = data.find(b"\n", i)
    if j < 0:
        framing.line += data[i:]
        if len(framing.line) > MAX_SIZE_LINE:
            raise ProtocolError("chunk size line too long")
        return None, len(data)
    line = (framing.line + data[i:j] if framing.line else data[i:j]).strip()
    framing.line = b""
    return line, j + 1


def _chunk_size(line: bytes) -> int:
    """The size a chunk's size line gives (its extensions ignored); ProtocolError if none."""
    try:
        size = int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
    if size < 0:
        raise ProtocolError("negative chunk size")
    return size


class Dechunker:
    """Follows a chunked body as it arrives: the payload of each read, and where it ends."""

    __slots__ = ("done", "left", "line", "skip", "trailer")

    def __init__(self) -> None:
        self.left = 0  # payload bytes still due in the current chunk
        self.skip = 0  # CRLF bytes still due after a chunk's payload
        self.line = b""  # a size or trailer line split across reads
        self.trailer = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The payload in `data`; sets `done` at the end of the message (bytes beyond it are
        a protocol error, as are bad size lines)."""
        if not (self.left or self.skip or self.line or self.trailer):
            start = _whole_chunk(data)
            if start:
                return data[start:-2]
        out = []
        i, n = 0, len(data)
        while i < n:
            if self.done:
                raise ProtocolError("bytes after the end of a chunked body")
            if self.left:
                j = min(n, i + self.left)
                out.append(data[i:j])
                self.left -= j - i
                if not self.left:
                    self.skip = 2
                i = j
                continue
            if self.skip:
                j = min(n, i + self.skip)
                self.skip -= j - i
                i = j
                continue
            line, i = _next_line(self, data, i)
            if line is None:
                break
            if self.trailer:
                self.done = not line
                continue
            size = _chunk_size(line)
            if size:
                self.left = size
            else:
                self.trailer = True
        return out[0] if len(out) == 1 else b"".join(out)


class ChunkEnd:
    """Follows a chunked body's framing as it arrives, without taking its payload out: all the
    forwarding path needs is where the message ends (`done`). Per read that is one `find` and
    one `int` in the common case (a read holding one whole chunk), and nothing for a read that
    lies inside a chunk. Raises ProtocolError where `Dechunker` would."""

    __slots__ = ("done", "due", "line", "trailer")

    def __init__(self) -> None:
        self.due = 0  # bytes of the current chunk (payload and its CRLF) still to come
        self.line = b""  # a size or trailer line split across reads
        self.trailer = False
        self.done = False

    def feed(self, data: bytes) -> None:
        """Follow `data`; sets `done` at the end of the message."""
        i, n = self.due, len(data)
        if i >= n:  # inside a chunk
            self.due = i - n
            return
        if not i and not self.line and not self.trailer and _whole_chunk(data):
            return
        self.due = 0
        while i < n:
            if self.done:
                raise ProtocolError("bytes after the end of a chunked body")
            line, i = _next_line(self, data, i)
            if line is None:
                break
            if self.trailer:
                self.done = not line
                continue
            size = _chunk_size(line)
            if size:
                i += size + 2  # the payload and its CRLF
            else:
                self.trailer = True
        self.due = i - n
