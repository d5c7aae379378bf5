"""Cheaper versions of three steps gevent's WSGIHandler takes for every request.

Profiled on a 16-token reply, these were a fifth of the server's time per request:

- request headers: gevent parses them with the `email` package (FeedParser, ~10 %). Plain
  `Name: value` lines are split here instead; anything unusual (folded lines, malformed
  names, stray CR) goes to the email parser exactly as gevent does, so the result is the
  same object with the same contents either way.
- response headers and the first body bytes are sent with one send() instead of two (one
  syscall and one packet fewer).
- gevent's socket.sendall() asks the kernel for SO_SNDBUF (a getsockopt syscall) on every
  call; one send() almost always takes the whole write, and sendall finishes the rest.

And the Date header, which gevent formats for every response (time.gmtime and a %-format), is
formatted once a second (`http_date`).
"""

from __future__ import annotations

import email.parser
import re
import socket
import time
from typing import TYPE_CHECKING, BinaryIO

from gevent.pywsgi import OldMessage, format_date_time

from llmsim.server.http_hygiene import check_framing, read_head_lines

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIHandler
    from gevent.socket import socket as GeventSocket

_MAXHEADERS = 100
# A header line the email parser (compat32 policy) reads as name, ':', value with leading
# blanks dropped and the line end removed; nothing else takes the fast path.
_SIMPLE = re.compile(r"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n\Z")


def read_headers(
    fp: BinaryIO, max_bytes: int = 32 * 1024, max_lines: int = _MAXHEADERS
) -> OldMessage:
    """What gevent.pywsgi.headers_factory(fp) returns, without the email parser when possible.

    At most max_bytes and max_lines are read (http_hygiene's 431 beyond), and the framing
    headers are checked (its 400), whichever parser reads the lines.
    """
    lines = read_head_lines(fp, max_bytes, max_lines)
    msg = _parse(lines)
    check_framing(msg)
    return msg


_date = [0, b""]  # [the second, its Date header value]


def http_date() -> bytes:
    """The Date header's value for now (RFC 9110 IMF-fixdate), as gevent writes it."""
    now = int(time.time())
    if now != _date[0]:
        _date[1] = format_date_time(now)
        _date[0] = now
    return _date[1]


def _parse(lines: list[bytes]) -> OldMessage:
    msg = OldMessage()
    items = msg._headers
    match = _SIMPLE.match
    for line in lines[:-1]:
        m = match(line.decode("latin-1"))
        if m is None:
            # The general case, as http.client.parse_headers does it.
            text = b"".join(lines).decode("iso-8859-1")
            return email.parser.Parser(_class=OldMessage).parsestr(text)
        items.append((m.group(1), m.group(2)))
    return msg


def head_and_body(handler: WSGIHandler, data: bytes) -> bytearray:
    """The status line, headers and first body bytes of a response, as one buffer.

    gevent's WSGIHandler._write_with_headers, except that the body is appended instead of
    sent separately. `handler.finalize_headers()` must have been called.
    """
    out = bytearray(b"HTTP/1.1 ")
    out += handler.status
    out += b"\r\n"
    for header, value in handler.response_headers:
        out += header
        out += b": "
        out += value
        out += b"\r\n"
    out += b"\r\n"
    if data:
        if handler.response_use_chunked:
            out += b"%x\r\n" % len(data)
            out += data
            out += b"\r\n"
        else:
            out += data
    return out


def send_all(sock: GeventSocket, data: bytes | bytearray) -> None:
    """sock.sendall(data) for a gevent socket, without its per-call getsockopt."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def hung_up(sock: socket.socket) -> bool | None:
    """Whether a readable client socket was closed by its peer (True), holds bytes (False),
    or had nothing to read after all (None: a spurious wake-up). Peeks, consuming nothing."""
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except OSError:
        return True
