"""HTTP/1.1 chunked transfer decoding for streamed bodies, cheaper per event than llhttp's.

geventhttpclient's parser (llhttp, in C) calls back into Python for every piece of body and
appends it to a bytearray that we then copy out: about 2.5 us per SSE event here, a tenth of
Locust's whole cost per token. A streaming server writes one chunk per event, so the common
`recv()` is exactly `<hex>\\r\\n<event>\\r\\n`, which one `find` and two slices decode.

The reactor switches to this decoder only at a chunk boundary (llhttp has no body bytes pending
and no chunk left to read), so the two never disagree about where a chunk starts.
"""

from __future__ import annotations


class ChunkError(ValueError):
    """Invalid chunked framing."""


class Dechunker:
    """Feed raw bytes after the headers; get body bytes. `done` once the last chunk is read."""

    __slots__ = ("_buf", "_crlf", "_need", "_trailers", "done")

    def __init__(self) -> None:
        self._buf = b""  # an incomplete size or trailer line
        self._need = 0  # data bytes left in the current chunk
        # After a chunk's data: 2 expects CR, 1 expects LF, 0 a size line. It starts at 3, an
        # optional CRLF: llhttp may have stopped right after a chunk's data, before its CRLF.
        self._crlf = 3
        self._trailers = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes in `data` (b"" if none); raises ChunkError on bad framing."""
        if not self._buf and not self._need and self._crlf == 0 and not self._trailers:
            # Fast path: exactly one whole chunk.
            eol = data.find(b"\r\n", 0, 18)
            if eol > 0:
                try:
                    size = int(data[:eol], 16)
                except ValueError:
                    size = -1
                if size > 0 and len(data) == eol + size + 4 and data[-2:] == b"\r\n":
                    return data[eol + 2 : -2]
        return self._slow(data)

    def _slow(self, data: bytes) -> bytes:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n and not self.done:
            if self._need:
                take = min(self._need, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._need -= take
                if not self._need:
                    self._crlf = 2
                continue
            if self._crlf:
                c = data[pos : pos + 1]
                if self._crlf == 3:  # maybe a CRLF left over from llhttp's last chunk
                    if c == b"\r":
                        self._crlf, pos = 1, pos + 1
                    else:
                        self._crlf = 0
                    continue
                if c != (b"\r" if self._crlf == 2 else b"\n"):
                    raise ChunkError(f"expected CRLF after chunk data, got {c!r}")
                self._crlf, pos = self._crlf - 1, pos + 1
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if n - pos > 1024:
                    raise ChunkError("chunk size line too long")
                self._buf = data[pos:]
                break
            line = data[pos:eol]
            pos = eol + 2
            if self._trailers:
                if not line:
                    self.done = True
                continue
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ChunkError(f"bad chunk size line {line[:40]!r}") from None
            if size < 0:
                raise ChunkError(f"bad chunk size line {line[:40]!r}")
            if size == 0:
                self._trailers = True
            else:
                self._need = size
        return b"".join(out)
