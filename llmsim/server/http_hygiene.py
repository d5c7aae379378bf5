"""What the HTTP server refuses, and when it lets go of a connection.

gevent's WSGI handler, as it comes, accepts a request with both `Content-Length` and
`Transfer-Encoding` (dropping the length), takes the first of two different lengths, lets a
head grow to 100 lines of 64 KiB each (6.5 MB per connection, held for as long as the client
dribbles it), waits forever for a request to start or to finish its headers, and at the
file-descriptor limit leaves new clients hanging in the backlog while printing a traceback per
retry. Here:

- framing: several `Content-Length`s, a length that is not digits, `Transfer-Encoding` with a
  `Content-Length`, or a transfer coding other than `chunked` are a 400 (request smuggling
  starts where two parsers disagree on where a body ends);
- request line: one gevent refuses (8 KiB or longer, unparseable, an HTTP version outside
  0.9-1.x) is a 414 or 400 with a body, where gevent's own has none;
- size: a head beyond `max_header_bytes` or with more than `max_headers` fields is a 431, and
  no more than that is ever buffered for one connection;
- time: the request line and headers must arrive within `header_timeout_s` of the request's
  first byte (else 408), and an idle keep-alive connection is closed after
  `keepalive_timeout_s`;
- descriptors: at EMFILE/ENFILE one spare descriptor is given up to accept the waiting client,
  answer 503 and close; one log line per burst says how many were turned away.

The error bodies are OpenAI's error JSON; every one closes the connection.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from http import client as http_client
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gevent.socket import socket as GeventSocket

try:  # imported now: at the descriptor limit, importing it would need a descriptor
    import resource
except ImportError:  # pragma: no cover (not POSIX)
    resource = None  # type: ignore[assignment]

log = logging.getLogger("llmsim.server")

_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}  # fmt: skip


class ClientError(ValueError):
    """A request refused before it reaches the app; `status` is its HTTP status."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class HeaderTimeout(Exception):
    """The request's head did not arrive within header_timeout_s."""


def error_bytes(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response carrying OpenAI's error shape, closing the connection."""
    typ = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": typ, "param": None, "code": code}})
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return (head + "\r\n" + body).encode()


def request_line_too_long() -> bytes:
    """The 414 for a request line at or over gevent's MAX_REQUEST_LINE (8 KiB)."""
    from gevent.pywsgi import MAX_REQUEST_LINE

    return error_bytes(
        414,
        f"Request line too long: it must be shorter than {MAX_REQUEST_LINE} bytes.",
        "request_line_too_long",
    )


def bad_request_line() -> bytes:
    """The 400 for a request line gevent cannot parse (not `METHOD target HTTP/1.x`)."""
    return error_bytes(
        400,
        "Malformed request line: expected 'METHOD /path HTTP/1.1'.",
        "invalid_request_line",
    )


def read_head_lines(fp: Any, max_bytes: int, max_lines: int) -> list[bytes]:
    """The header lines up to and including the blank one, within the limits (else 431)."""
    lines: list[bytes] = []
    left = max_bytes
    readline = fp.readline
    while True:
        line = readline(left + 1)
        left -= len(line)
        if left < 0:
            raise ClientError(
                431,
                f"Request headers too large: the limit is {max_bytes} bytes.",
                "header_too_large",
            )
        lines.append(line)
        if line in (b"\r\n", b"\n", b""):
            return lines
        if len(lines) > max_lines:
            raise ClientError(
                431, f"Too many request headers: the limit is {max_lines}.", "too_many_headers"
            )


def check_framing(headers: Any) -> None:
    """Refuse a head whose body framing two HTTP parsers could read differently."""
    lengths = headers.get_all("Content-Length") or []
    codings = headers.get_all("Transfer-Encoding") or []
    if len(lengths) > 1:
        raise ClientError(400, "Several Content-Length headers.", "invalid_content_length")
    if lengths and not lengths[0].strip().isdigit():
        raise ClientError(
            400, "Content-Length must be a number of bytes.", "invalid_content_length"
        )
    if codings:
        if lengths:
            raise ClientError(
                400,
                "A request may not have both Content-Length and Transfer-Encoding.",
                "conflicting_framing",
            )
        if len(codings) > 1 or codings[0].strip().lower() != "chunked":
            raise ClientError(
                400, "Only 'Transfer-Encoding: chunked' is supported.", "invalid_transfer_encoding"
            )


def client_error_response(ex: BaseException) -> tuple[str, bytes] | None:
    """The (status, bytes) gevent's handler sends for one of our refusals, else None."""
    if isinstance(ex, ClientError):
        return str(ex.status), error_bytes(ex.status, str(ex), ex.code)
    if isinstance(ex, HeaderTimeout):
        return "408", error_bytes(408, "The request headers did not arrive in time.", "timeout")
    if isinstance(ex, http_client.HTTPException):  # e.g. the email parser's own limits
        return "431", error_bytes(431, str(ex) or "Request headers too large.", "header_too_large")
    return None


class FdGuard:
    """At the descriptor limit, answer the client that cannot be accepted with a 503.

    One descriptor is kept open on /dev/null; when accept() fails with EMFILE/ENFILE it is
    closed, the waiting connection accepted into its place, answered and closed, and the spare
    reopened. Without this the client waits in the backlog with no reply at all.
    """

    BURST_S = 10.0  # refusals closer together than this are one burst, logged once

    def __init__(self) -> None:
        self.spare: int | None = self._open_spare()
        self.refused = 0
        self._burst_start = 0.0
        self._last = 0.0
        self._logged = 0

    @staticmethod
    def _open_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def refuse(self, listener: socket.socket) -> bool:
        """Accept one pending client and answer 503; False when nothing could be done."""
        if self.spare is not None:
            # Not os.close: under gevent's monkey patching (the recorder) it defers closing a
            # character device to the end of the loop's turn, after the accept that needs the
            # descriptor now. closerange is the plain close(2).
            os.closerange(self.spare, self.spare + 1)
            self.spare = None
        done = False
        try:
            # The raw accept: gevent's would wait (in the hub) if another worker took the
            # client first.
            fd, _ = listener._accept()
        except OSError:
            fd = None
        if fd is not None:
            try:
                os.write(
                    fd, error_bytes(503, "The server is out of file descriptors.", "overloaded")
                )
            except OSError:
                pass
            os.closerange(fd, fd + 1)  # now, not deferred (see above)
            done = True
        self.spare = self._open_spare()
        self._note()
        return done

    def _note(self) -> None:
        now = time.monotonic()
        if now - self._last > self.BURST_S:
            self._burst_start = now
            self._logged = self.refused
            log.warning(
                "file-descriptor limit reached: answering new connections with 503 until "
                "descriptors free up (ulimit -n is %s)",
                _nofile(),
            )
        self.refused += 1
        self._last = now

    def flush(self) -> None:
        """Log how the last burst ended, once, when connections are accepted again."""
        if self.refused > self._logged and time.monotonic() - self._last > 0.5:
            log.warning(
                "file-descriptor limit: %d connections answered 503 over %.1f s; accepting again",
                self.refused - self._logged,
                self._last - self._burst_start,
            )
            self._logged = self.refused


def _nofile() -> str:
    if resource is None:  # pragma: no cover
        return "unknown"
    return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def is_fd_exhaustion(exc: BaseException) -> bool:
    """Whether `exc` is accept() failing for lack of descriptors (EMFILE or ENFILE)."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


def guarded(server_class: type) -> type:
    """`server_class` (a gevent server) answering 503 at the descriptor limit (FdGuard).

    The instance needs a `fd_guard` attribute set after it is made."""

    class Guarded(server_class):  # type: ignore[misc, valid-type]
        """A gevent server whose accept loop survives EMFILE/ENFILE (http_hygiene.FdGuard)."""

        fd_guard: FdGuard

        def do_read(self) -> tuple[GeventSocket, Any] | None:
            """gevent's accept step, (client socket, address) or None; at the descriptor
            limit the waiting client is answered 503 by fd_guard and None returned."""
            try:
                accepted = super().do_read()
            except OSError as exc:
                if not is_fd_exhaustion(exc):
                    raise
                self.fd_guard.refuse(self.socket)
                return None
            if accepted:
                self.fd_guard.flush()
            return accepted

    Guarded.__name__ = f"Guarded{server_class.__name__}"
    return Guarded
