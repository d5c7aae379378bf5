"""The recorder's own HTTP/1.1 front end: it reads each request off the accepted socket itself.

gevent's WSGI handler builds an environ, a WSGI input object and a `start_response` per request
and turns the connection around through its own loop; for a proxy that hands the request
upstream as bytes and relays the reply from the hub (`hub_relay`), all of that sat between the
client and the upstream. Here one greenlet per connection reads the request line, the headers
(with the simulator's own reader and limits: `server.fastio.read_headers`, whose
`http_hygiene` checks answer 431 and 400), the body (Content-Length, or chunked through gevent's
own chunked reader), and hands a `Request` to the recorder, which answers on the `ClientConn`.

The same refusals as the simulator's front end, each answered in OpenAI's error shape and
closing the connection: a malformed request line 400, one above 8 KiB 414, a head too large or
with too many fields 431, ambiguous framing (two lengths, length and chunked, another coding)
400, a body above the recorder's limit 413, a bad chunked body 400, a head not complete within
`header_timeout_s` 408. An idle keep-alive connection is closed after `keepalive_timeout_s`.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from llmsim.server import fastio, http_hygiene
from llmsim.server.http_hygiene import ClientError, HeaderTimeout
from llmsim.settings import Settings

MAX_REQUEST_LINE = 8192  # as gevent's handler: beyond it 414
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # RFC 9110 §5.6.2: a method
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class Request:
    """One request as read off the wire (headers in the client's order and spelling)."""

    method: str
    path: str
    query: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: list[tuple[str, str]]
    body: bytes
    start: float  # time.monotonic() when its request line was in


@dataclass(frozen=True)
class Limits:
    """The bounds a request must keep (the simulator's settings of the same names)."""

    max_body_bytes: int
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 60.0

    @classmethod
    def from_settings(cls, max_body_bytes: int, settings: Settings | None = None) -> Limits:
        """The simulator's defaults (or `settings`) with the recorder's own body limit."""
        s = settings or Settings()
        return cls(
            max_body_bytes,
            s.max_header_bytes,
            s.max_headers,
            s.header_timeout_s,
            s.keepalive_timeout_s,
        )


class ClientConn:
    """One client connection: its socket, and how the current response is going.

    `busy` and `socket` are what `server.runner.drain` looks at on shutdown (an idle
    keep-alive connection is closed at once, a busy one gets the grace period)."""

    __slots__ = ("__weakref__", "busy", "close_connection", "headers_sent", "raw", "rfile",
                 "socket", "version")  # fmt: skip

    def __init__(self, sock: Any) -> None:
        self.socket = sock
        self.raw = sock._sock  # the OS socket under gevent's: the hub writes to it directly
        self.rfile = sock.makefile("rb")
        self.busy = False
        self.version = "HTTP/1.1"
        self.headers_sent = False  # the current response's head went out
        self.close_connection = False  # the connection ends after the current response

    def send(self, data: bytes) -> None:
        """Send it all (blocking this connection's greenlet, not the hub)."""
        fastio.send_all(self.socket, data)

    def send_json(self, status: str, payload: Any) -> None:
        """A complete JSON response, e.g. `send_json("200 OK", {...})`."""
        body = json.dumps(payload).encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n"
        if self.close_connection:
            head += "Connection: close\r\n"
        self.headers_sent = True
        self.send(head.encode("latin-1") + b"\r\n" + body)


def read_request(conn: ClientConn, limits: Limits, head_timer: Any = None) -> Request | None:
    """The next request on `conn` (None: the client closed between requests).

    `head_timer` (a gevent.Timeout) is closed once the head is in: the body's time is not the
    head's. Raises ClientError (a 4xx to answer) or OSError (the client went away mid-request)."""
    rfile = conn.rfile
    line = rfile.readline(MAX_REQUEST_LINE + 1)
    if line in (b"\r\n", b"\n"):  # RFC 9112 §2.2: an empty line before a request is ignored
        line = rfile.readline(MAX_REQUEST_LINE + 1)
    start = time.monotonic()
    if not line:
        return None
    if len(line) > MAX_REQUEST_LINE:
        raise ClientError(414, f"Request line above {MAX_REQUEST_LINE} bytes.", "uri_too_long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if (
        len(parts) != 3
        or not _TOKEN.match(parts[0])
        or not parts[1].startswith("/")
        or parts[2] not in ("HTTP/1.1", "HTTP/1.0")
    ):
        raise ClientError(400, f"Malformed request line {line[:80]!r}.", "invalid_request_line")
    method, target, version = parts
    conn.version = version
    msg = fastio.read_headers(rfile, limits.max_header_bytes, limits.max_headers)
    if head_timer is not None:
        head_timer.close()
    tokens = (msg.get("Connection") or "").lower()
    if version == "HTTP/1.1":
        conn.close_connection = "close" in tokens
    else:
        conn.close_connection = "keep-alive" not in tokens
    length = msg.get("Content-Length")
    chunked = msg.get("Transfer-Encoding") is not None  # check_framing: only "chunked"
    body = b""
    if length is not None or chunked:
        n = int(length) if length is not None else 0
        if n > limits.max_body_bytes:
            raise ClientError(413, _too_large(limits), "request_too_large")
        if (msg.get("Expect") or "").lower() == "100-continue" and version == "HTTP/1.1":
            conn.send(_CONTINUE)
        if chunked:
            body = _read_chunked(rfile, limits)
        elif n:
            body = rfile.read(n)
            if len(body) < n:
                raise ConnectionResetError("the client went away mid-body")
    path, _, query = target.partition("?")
    return Request(method, path, query, version, list(msg.items()), body, start)


def _read_chunked(rfile: Any, limits: Limits) -> bytes:
    from gevent.pywsgi import Input, _InvalidClientInput

    try:
        body = Input(rfile, None, chunked_input=True).read(limits.max_body_bytes + 1)
    except _InvalidClientInput as exc:
        raise ClientError(400, f"Bad chunked body: {exc}.", "invalid_chunked_body") from None
    if len(body) > limits.max_body_bytes:
        raise ClientError(413, _too_large(limits), "request_too_large")
    return body


def _too_large(limits: Limits) -> str:
    return f"llmsim record: request body above {limits.max_body_bytes} bytes."


def serve_connection(recorder: Any, limits: Limits, handlers: Any, sock: Any, _addr: Any) -> None:
    """Answer every request on one accepted connection until it closes (a StreamServer handle).

    `recorder.handle(request, conn)` answers each; a refused request gets its 4xx and the
    connection is closed (after a framing error nothing later on it can be trusted)."""
    import gevent

    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = ClientConn(sock)
    handlers.add(conn)
    try:
        served = 0
        while True:
            conn.busy = False
            if served:
                started = None
                with (
                    contextlib.suppress(OSError),
                    gevent.Timeout(limits.keepalive_timeout_s, False),
                ):
                    started = conn.rfile.peek(1)
                if not started:
                    return  # idle too long, or the client closed
            # From the request's first byte its whole head must arrive within the limit (a
            # client that sends a byte a second holds no connection for good).
            timer = gevent.Timeout(limits.header_timeout_s, HeaderTimeout)
            timer.start()
            try:
                req = read_request(conn, limits, timer)
            except (ClientError, HeaderTimeout) as exc:
                status_bytes = http_hygiene.client_error_response(exc)
                if status_bytes is not None:
                    with contextlib.suppress(OSError):
                        conn.send(status_bytes[1])
                return
            except OSError:
                return
            finally:
                timer.close()
            if req is None:
                return
            conn.busy = True
            conn.headers_sent = False
            served += 1
            try:
                recorder.handle(req, conn)
            except OSError:
                return  # the client went away while being answered (the exchange is recorded)
            if conn.close_connection:
                return
    finally:
        handlers.discard(conn)
        with contextlib.suppress(OSError):
            conn.rfile.close()
