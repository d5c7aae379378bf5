"""The recorder's fast path: every response is relayed from the gevent hub, none by a greenlet.

A relayed stream has no greenlet of its own. The client connection's greenlet (`front.py` read
the request) sends the request upstream and parks; one libev read watcher on the upstream
socket runs a callback in the hub that takes what one `recv()` brings, timestamps it, and writes
it straight to the client's socket (a raw non-blocking `send()`, as the simulator's stream loop
does in `server/takeover.py`). The response head is parsed in that callback too, so the first
event goes out with the head in one send, without a greenlet switch.

Bytes pass through unchanged: a chunked upstream body is forwarded with its own framing (the
client's response is chunked too), a Content-Length body as it is. The callback follows the
chunk framing only far enough to know where the message ends (`framing.ChunkEnd`: no payload
copied out) and keeps each read as it came, with its arrival time; everything else the
recording needs (the payload, SSE events, tokens, the request's own JSON) is worked out in the
analysis process after the exchange (`recording.Capture`).

Backpressure: a client socket that does not take everything keeps the rest, the upstream
watcher stops (so the upstream's own socket buffers fill and slow it down) and a write watcher
flushes the rest before reading resumes. A read watcher on the client notices a hang-up while
the upstream is still thinking, and the upstream request is abandoned at once.

Plain-http upstreams only: a TLS upstream is read through its SSL object on urllib3's path.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from llmsim.record.framing import ChunkEnd, Dechunker, ProtocolError
from llmsim.record.recording import Capture
from llmsim.server.fastio import hung_up

_READ, _WRITE = 1, 2
MAX_HEAD_BYTES = 64 * 1024
ADDR_TTL_S = 30.0
_RECV = 16384  # an SSE event is ~250 bytes; a larger buffer costs its allocation every read
# What the old path answered on an upstream that never replied (urllib3 raised on the read).
UNREACHABLE = "upstream_unreachable"


class UpstreamPool:
    """Idle keep-alive connections to one plain-http origin (gevent sockets)."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 10.0) -> None:
        self.host, self.port = host, port
        self.host_header = host if port == 80 else f"{host}:{port}"
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[Any] = []
        self.max_idle = 4096
        self._addr: tuple[Any, ...] | None = None
        self._addr_at = 0.0

    def get(self) -> tuple[Any, bool]:
        """(connection, reused): an idle one that is still open, else a new one (may raise)."""
        while self.idle:
            conn = self.idle.pop()
            if _still_open(conn._sock):
                return conn, True
            conn.close()
        return self.connect(), False

    def connect(self) -> Any:
        """A new connection (raises OSError when the upstream cannot be reached)."""
        import gevent.socket

        # The address is resolved once per ADDR_TTL_S, not per connection: gevent resolves
        # in a thread pool, which cost 0.5-1.5 ms per new connection here, on the TTFT of
        # every request that found no idle connection.
        now = time.monotonic()
        if self._addr is None or now - self._addr_at > ADDR_TTL_S:
            self._addr = gevent.socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
            self._addr_at = now
        family, kind, proto, _, sockaddr = self._addr
        conn = gevent.socket.socket(family, kind, proto)
        conn.settimeout(self.connect_timeout_s)
        try:
            conn.connect(sockaddr)
        except OSError:
            conn.close()
            self._addr = None  # resolve again next time: the address may have moved
            raise
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def put(self, conn: Any) -> None:
        """Keep `conn` for the next request (its response was read to the end)."""
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        while self.idle:
            self.idle.pop().close()


def _still_open(raw: socket.socket) -> bool:
    try:
        return raw.recv(1, socket.MSG_PEEK) is None  # data on an idle connection: not HTTP
    except BlockingIOError:
        return True
    except OSError:
        return False


def request_bytes(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes
) -> bytes:
    """The HTTP/1.1 request sent upstream (headers as the client gave them, minus hop ones)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, reason, headers) of a response head (without its final blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


# Response headers of one hop (RFC 9110 §7.6.1): not forwarded. Transfer-Encoding and
# Content-Length are, with the body framed as the upstream framed it.
_HOP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)


_FRAMING = frozenset({b"transfer-encoding", b"content-length"})


def _forwarded_head(raw_head: bytes, close: bool, reframe: bytes | None = None) -> bytes:
    """The upstream's response head for the client: its lines minus the hop-by-hop ones.

    `reframe`: the body is framed differently for this client (b"chunked": chunked by us;
    b"": sent as it is, ending with the connection); the upstream's framing lines are dropped."""
    drop = _HOP_RESPONSE if reframe is None else _HOP_RESPONSE | _FRAMING
    lines = raw_head.split(b"\r\n")
    kept = [lines[0].replace(b"HTTP/1.0", b"HTTP/1.1", 1)]
    for line in lines[1:]:
        if line.split(b":", 1)[0].strip().lower() not in drop:
            kept.append(line)
    if reframe:
        kept.append(b"Transfer-Encoding: " + reframe)
    if close:
        kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n"


class HubRelay:
    """One exchange on the fast path, answered on a `front.ClientConn`.

    `run()` starts the watchers and parks the connection's greenlet until the response is over
    (the hub wrote everything); `failure` is then set when the upstream never answered.
    """

    def __init__(
        self, relays: HubRelays, client: Any, request: bytes, conn: Any, reused: bool
    ) -> None:
        import gevent.event

        self.relays, self.front = relays, client  # the client's ClientConn
        self.request, self.conn, self.reused = request, conn, reused
        # Set by the recorder before run() (the request is parsed meanwhile).
        self.cap: Capture = None  # type: ignore[assignment]
        self.client = client.raw
        self.up = conn._sock
        self.loop = relays.loop
        self.buf_in, self.view = relays.buf_in, relays.view
        self.done = gevent.event.Event()
        self.buf = b""  # the response head while it is incomplete
        self.mode = ""  # how the body ends: "chunked", "length", "close", "none"
        self.frame = False  # wrap payload in chunk framing for the client (upstream had none)
        self.payload_only = False  # upstream chunked, client not: send the payload alone
        self.dechunk: ChunkEnd | Dechunker | None = None  # follows a chunked body's framing
        self.left = 0  # Content-Length bytes still due
        self.pending: bytes | None = None
        self.complete = False  # the whole upstream message is in
        self.keep = True  # the upstream connection may serve another request
        self.failure = ""  # set when the exchange ended badly before a head was sent
        self.last = time.monotonic()
        self.up_watch: Any = None
        self.client_watch: Any = None
        self.write_watch: Any = None

    def run(self) -> None:
        """Relay the response; returns when it is over (or abandoned)."""
        try:
            while True:
                self._start()
                self.done.wait()
                if self.failure != "retry":
                    break
                # The idle connection had been closed upstream before our request reached it
                # (nothing came back): once more, on a new connection.
                self.failure = ""
                self.cap.detail = None
                self.done.clear()
                self.conn, self.reused = self.relays.pool.connect(), False
                self.up = self.conn._sock
                self.conn.sendall(self.request)
        except Exception as exc:  # connecting or sending again failed: an unreachable upstream
            self.failure = UNREACHABLE
            self.cap.detail = f"{type(exc).__name__}: {exc}"
            self._end(UNREACHABLE)
        finally:
            if not self.done.is_set():  # the greenlet was killed (shutdown): abandon it
                self._end("client_disconnect")
                self.front.close_connection = True

    def _start(self) -> None:
        self.relays.active.add(self)
        self.up_watch = self.loop.io(self.up.fileno(), _READ)
        self.up_watch.start(self._on_upstream)
        if self.client_watch is None:
            with contextlib.suppress(OSError, ValueError):
                self.client_watch = self.loop.io(self.client.fileno(), _READ)
                self.client_watch.start(self._on_client)

    # --- hub callbacks ---------------------------------------------------------------------

    def _on_client(self) -> None:
        gone = hung_up(self.client)
        if gone is None:
            return
        self._stop("client_watch")
        if gone:  # the client hung up: abandon the upstream request too
            self._end("client_disconnect")

    def _on_upstream(self) -> None:
        try:
            # Into one buffer shared by every relay (the hub runs one callback at a time),
            # then copied out at its size: recv(16384) allocated 16 KB and shrank it per read.
            data = self.view[: self.up.recv_into(self.buf_in)].tobytes()
        except BlockingIOError:
            return
        except OSError as exc:
            self.cap.detail = type(exc).__name__
            data = b""
        now = time.monotonic()
        self.last = now
        try:
            if not data:
                self._upstream_eof(now)
                return
            if self.cap.first_byte is None:
                out = self._head(data, now)
                if out is None:
                    return
            else:
                out = self._body(data, now)
        except ProtocolError as exc:
            self.cap.detail = str(exc)
            self.keep = False
            if self.cap.first_byte is None or not self.front.headers_sent:
                self.failure = UNREACHABLE
                self._end(UNREACHABLE)
            else:
                self._break_off(now)
            return
        self._send(out)
        if self.complete and self.pending is None:
            self._end("ok", now)

    def _upstream_eof(self, now: float) -> None:
        self.keep = False
        if not self.front.headers_sent:
            if self.reused and not self.buf and self.cap.first_byte is None:
                self.failure = "retry"
                self._end("retry")
            else:
                self.failure = UNREACHABLE
                self.cap.detail = self.cap.detail or "upstream closed before a response"
                self._end(UNREACHABLE)
        elif self.mode == "close":  # the end of a body delimited by the connection's close
            self.complete = True
            if self.frame:
                self._send(b"0\r\n\r\n")
            if self.pending is None:
                self._end("ok", now)
        else:
            self.cap.detail = self.cap.detail or "upstream closed mid-reply"
            self._break_off(now)

    def _break_off(self, now: float) -> None:
        # The upstream broke off mid-reply: break off to the client too, as it would have.
        self.cap.outcome = "drop"
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)
        self._end("drop", now)

    def _head(self, data: bytes, now: float) -> bytes | None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                self.buf = buf
                return None
            raw_head = buf[:end]
            status, _, headers = parse_head(raw_head)
            buf = buf[end + 4 :]
            if status >= 200 or status == 101:
                break  # interim responses (100 Continue) are not the answer
        self.buf = b""
        cap, h = self.cap, self.front
        cap.first_byte = now
        cap.status = status
        cap.headers = headers
        lower = {k.lower(): v for k, v in headers}
        if "close" in lower.get("connection", "").lower() or status == 101:
            self.keep = False
        te = lower.get("transfer-encoding", "").lower()
        if status in (204, 304) or 100 <= status < 200:
            self.mode = "none"
        elif te.rsplit(",", 1)[-1].strip() == "chunked":
            self.mode = "chunked"
            cap.chunked = True  # the reads are kept framed; the analysis takes the payload out
        elif te:
            raise ProtocolError(f"transfer-encoding {te!r}")
        elif "content-length" in lower:
            try:
                self.left = int(lower["content-length"])
            except ValueError:
                raise ProtocolError("bad content-length") from None
            self.mode = "length"
        else:
            self.mode = "close"
            self.keep = False
        h.headers_sent = True
        reframe = None
        if status == 101:
            h.close_connection = True  # an upgrade is not relayed: the connection ends
        elif h.version == "HTTP/1.1" and self.mode == "close":
            self.frame, reframe = True, b"chunked"  # its end is our last chunk
        elif h.version != "HTTP/1.1":  # HTTP/1.0 has no chunks: the body ends with the close
            h.close_connection = True
            if self.mode == "chunked":
                self.payload_only, reframe = True, b""
        if self.mode == "chunked":
            # Only where the body ends, on the forwarding path; its payload too only for an
            # HTTP/1.0 client, which gets the payload alone.
            self.dechunk = Dechunker() if self.payload_only else ChunkEnd()
        # The upstream's own head, minus its hop-by-hop lines, as it came (no header
        # rebuilding per response: this runs between the upstream's first event and the
        # client). close_connection was set from the client's own Connection header.
        return self._first(_forwarded_head(raw_head, h.close_connection, reframe), buf, now)

    def _first(self, head: bytes, buf: bytes, now: float) -> bytes:
        """The head and whatever body bytes came with it."""
        if self.mode == "none":
            if buf:
                raise ProtocolError("a body after a response that has none")
            self.complete = True
            return head
        return head + self._body(buf, now) if buf else head

    def _body(self, data: bytes, now: float) -> bytes:
        # The forwarding path: where the body ends, and the read kept as it came (no payload
        # copied out, no parsing: the analysis process does that after the exchange).
        if self.mode == "chunked":
            dechunk = self.dechunk
            payload = dechunk.feed(data)  # type: ignore[union-attr]
            self.complete = dechunk.done  # type: ignore[union-attr]
            out = payload if self.payload_only else data
        elif self.mode == "length":
            if len(data) > self.left:
                raise ProtocolError("more bytes than the content-length")
            self.left -= len(data)
            self.complete = not self.left
            out = data
        else:
            out = b"%x\r\n%s\r\n" % (len(data), data) if self.frame else data
        if data:
            self.cap.keep(now, data, self.relays.max_capture)
        return out

    def _send(self, buf: bytes) -> None:
        if not buf:
            return
        if self.pending is not None:
            self.pending += buf
            return
        try:
            n = self.client.send(buf)
        except BlockingIOError:
            n = 0
        except OSError:
            self._end("client_disconnect")
            return
        if n < len(buf):
            # The client is slower than the upstream: stop reading it until this is flushed.
            self.pending = buf[n:]
            if self.up_watch is not None:
                self.up_watch.stop()
            self.write_watch = self.loop.io(self.client.fileno(), _WRITE)
            self.write_watch.start(self._flush)

    def _flush(self) -> None:
        assert self.pending is not None
        try:
            n = self.client.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.pending = None
            self._end("client_disconnect")
            return
        self.pending = self.pending[n:] or None
        if self.pending is not None:
            return
        self._stop("write_watch")
        if self.complete:
            self._end("ok")
        elif self.up_watch is not None:
            self.up_watch.start(self._on_upstream)

    # --- the end ---------------------------------------------------------------------------

    def _stop(self, name: str) -> None:
        watcher = getattr(self, name)
        if watcher is not None:
            watcher.stop()
            setattr(self, name, None)

    def _end(self, outcome: str, now: float | None = None) -> None:
        """Stop everything; give the upstream connection back if it can serve again."""
        if self.done.is_set():
            return
        self._stop("up_watch")
        self._stop("client_watch")
        self._stop("write_watch")
        self.relays.active.discard(self)
        if outcome == "retry":
            self.conn.close()
            self.done.set()
            return
        if outcome == "ok" and self.keep and self.complete:
            self.relays.pool.put(self.conn)
        else:
            self.conn.close()
        if outcome not in ("ok", UNREACHABLE):
            self.front.close_connection = True
            if outcome == "client_disconnect" and self.cap.outcome == "ok":
                self.cap.outcome = outcome
        if outcome == UNREACHABLE:
            self.cap.status, self.cap.outcome = 502, UNREACHABLE
        self.cap.end = now or time.monotonic()
        self.relays.finished(self.cap)
        self.done.set()


class HubRelays:
    """The recorder's fast-path state: the upstream pool, the relays in flight, the timeout."""

    def __init__(self, rec: Any, host: str, port: int, timeout_s: float) -> None:
        import gevent

        self.rec = rec
        self.pool = UpstreamPool(host, port)
        self.loop = gevent.get_hub().loop
        self.timeout_s = timeout_s
        self.max_capture = rec.max_capture
        self.buf_in = bytearray(_RECV)  # what one upstream read lands in (see _on_upstream)
        self.view = memoryview(self.buf_in)
        self.active: set[HubRelay] = set()
        # One timer for every relay's read timeout, rather than a timer per stream re-armed on
        # every read.
        self._timer = self.loop.timer(1.0, 1.0)
        self._timer.start(self._check_timeouts)

    def start(
        self, client: Any, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> HubRelay:
        """Send the request upstream (in the client connection's greenlet) and return the
        relay that answers it on `client` (a ClientConn). Raises OSError when the upstream
        cannot be reached."""
        request = request_bytes(method, target, self.pool.host_header, headers, body)
        conn, reused = self.pool.get()
        try:
            conn.sendall(request)
        except OSError:
            conn.close()
            if not reused:
                raise
            conn, reused = self.pool.connect(), False  # the idle connection was gone
            conn.sendall(request)
        self.rec.in_flight += 1
        return HubRelay(self, client, request, conn, reused)

    def finished(self, cap: Capture) -> None:
        """Hand a finished exchange to the recorder's writer (never blocks the hub)."""
        self.rec.in_flight -= 1
        self.rec.enqueue(cap)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        for relay in [r for r in self.active if now - r.last > self.timeout_s]:
            relay.cap.detail = f"no bytes from the upstream for {self.timeout_s:g} s"
            if relay.front.headers_sent:
                relay.keep = False
                relay._break_off(now)
            else:
                relay.failure = UNREACHABLE
                relay._end(UNREACHABLE)

    def close(self) -> None:
        """Stop the timeout timer and close idle connections."""
        self._timer.stop()
        self.pool.close()
