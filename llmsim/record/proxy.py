"""`llmsim record`: a transparent proxy that writes one recording line per request.

Each upstream read is forwarded the moment it arrives (no buffering: an SSE event reaches the
client as soon as it reaches us), and timed. The analysis of an exchange (SSE parsing, token
counting) happens after its last byte was forwarded, in the analysis process, so it never
sits between an event and the client.

Requests are read by the recorder's own HTTP/1.1 front end (`front.py`, no WSGI). Two ways to
forward. A plain-http upstream goes through `hub_relay` (no greenlet per stream: the hub reads
the upstream and writes the client). Otherwise (an https upstream, or a HEAD request) urllib3 is
the upstream client: connection pools with keep-alive, TLS, timeouts and `read1()` (return
whatever one socket read brings), in the connection's greenlet. Both hand the recording the
same captures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from llmsim import __version__
from llmsim.record.front import ClientConn, Request
from llmsim.record.recording import Capture, analyse

if TYPE_CHECKING:
    from llmsim.record.hub_relay import HubRelays

# Headers of one hop, not of the message (RFC 9110 §7.6.1), plus the ones urllib3 sets itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",  # the body is sent with the head: no 100 Continue to wait for
    }
)
_SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
log = logging.getLogger("llmsim.record")

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_CAPTURE_BYTES = 16 * 1024 * 1024  # per response; beyond it the line says "truncated"
# Captures waiting for the analysis process, in all. It runs at a lower priority and only has
# to keep up on average; if it falls behind for good (a saturated machine), exchanges beyond
# this are forwarded as always but not recorded, and counted, rather than growing the
# proxy's memory without bound.
MAX_QUEUED_BYTES = 256 * 1024 * 1024
# What a kept read costs beside its bytes (the bytes object, its list slot, its arrival time).
_READ_OVERHEAD = 100


class RecordError(RuntimeError):
    """`llmsim record` cannot start; str() is one line."""


@dataclass(frozen=True)
class RecordConfig:
    """What `llmsim record` was asked to do."""

    target: str
    out: str
    host: str = "127.0.0.1"
    port: int = 8090
    with_bodies: bool = False
    timeout_s: float = 600.0
    grace_period_s: float = 10.0


def split_target(target: str) -> tuple[str, str]:
    """(origin, path prefix) of the upstream; a trailing /v1 of the prefix is dropped because
    the clients' paths carry their own."""
    parts = urlsplit(target.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RecordError(f"--target {target!r}: expected an http(s) URL such as http://host:port")
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}", prefix


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if len(s) >= 8:
            text = text.replace(s, "[redacted]")
    return text


class LineWriter:
    """Turns finished exchanges into recording lines and appends them to a file."""

    def __init__(self, out: TextIO, with_bodies: bool) -> None:
        from llmsim.engine.tokens import count_tokens

        self.out = out
        self.with_bodies = with_bodies
        self.count_tokens = count_tokens
        self.written = 0

    def __call__(self, cap: Capture) -> None:
        """Analyse one exchange and append its line (a bad one is reported, not fatal)."""
        try:
            line = analyse(cap, self.count_tokens, self.with_bodies)
            if isinstance(line.get("error"), str):
                line["error"] = _scrub(line["error"], cap.secrets)
            self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.written += 1
        except Exception as exc:  # one odd exchange must not stop the recording
            print(f"llmsim record: could not record {cap.path}: {exc!r}", file=sys.stderr)


def _write_child(read_fd: int, cfg: RecordConfig) -> None:
    """The analysis process: captures arrive pickled on a pipe, lines go to the file.

    Its own process because parsing every event and counting its tokens cost about as much CPU
    as forwarding it (measured: 98 against 62 µs per event at 100 streams); in the proxy's
    process that time would sit between other streams' events and their clients.
    """
    import signal
    import struct

    from llmsim.engine.tokens import preload_encodings

    # Ctrl-C reaches the whole process group: this process ends when the pipe does, after
    # the proxy has handed over its last exchange.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Below the proxy's priority: this process only has to keep up on average, the proxy's
    # every event is waiting for its CPU. On two cores the analysis (about 35 µs per event at
    # 100 streams, measured) otherwise runs ahead of the next event's forwarding.
    with contextlib.suppress(OSError):
        os.nice(5)
    preload_encodings()
    with open(cfg.out, "a", encoding="utf-8") as f, os.fdopen(read_fd, "rb") as pipe:
        write = LineWriter(f, cfg.with_bodies)
        while True:
            head = pipe.read(4)
            if len(head) < 4:
                break
            data = pipe.read(struct.unpack("!I", head)[0])
            write(Capture.from_wire(data))
            f.flush()
    os._exit(0)


class _PipeSink:
    """Hands a capture to the analysis process without blocking the hub."""

    def __init__(self, fd: int) -> None:
        from gevent.os import make_nonblocking

        self.fd = fd
        make_nonblocking(fd)

    def __call__(self, cap: Capture) -> None:
        import struct

        from gevent.os import nb_write

        data = cap.to_wire()
        view = memoryview(struct.pack("!I", len(data)) + data)
        while view:
            view = view[nb_write(self.fd, view) :]


class Recorder:
    """The proxy: answers each request the front end read, and writes (needs a gevent hub).

    `sink(capture)` records a finished exchange: a LineWriter in this process, or the pipe to
    the analysis process that `run` starts."""

    def __init__(self, cfg: RecordConfig, sink: Any) -> None:
        import gevent.queue
        import urllib3

        from llmsim.record.hub_relay import HubRelays

        self.cfg = cfg
        self.origin, self.prefix = split_target(cfg.target)
        self.pool = urllib3.PoolManager(maxsize=4096, block=False, retries=False)
        self.timeout = urllib3.Timeout(connect=10.0, read=cfg.timeout_s)
        self.errors = (urllib3.exceptions.HTTPError, OSError)
        self.queue: gevent.queue.Queue = gevent.queue.Queue()
        self.sink = sink
        self.recorded = 0
        self.in_flight = 0
        self.queued_bytes = 0
        self.max_queued_bytes = MAX_QUEUED_BYTES
        self.dropped = 0  # exchanges forwarded but not recorded: the analysis fell behind
        self._dropping = False
        self.max_capture = MAX_CAPTURE_BYTES
        self.hub: HubRelays | None = None
        parts = urlsplit(self.origin)
        if parts.scheme == "http":  # TLS upstreams are read through urllib3's SSL sockets
            self.hub = HubRelays(self, parts.hostname or "", parts.port or 80, cfg.timeout_s)

    def write_loop(self) -> None:
        """Hand finished exchanges to the sink until None arrives (off the forwarding path)."""
        while True:
            item = self.queue.get()
            if item is None:
                break
            cap, size = item
            try:
                self.sink(cap)
            finally:
                self.queued_bytes -= size
            self.recorded += 1

    def enqueue(self, cap: Capture) -> None:
        """Hand a finished exchange to the writer, unless the captures already waiting for it
        hold `max_queued_bytes` (then it is counted in `dropped` instead)."""
        size = len(cap.body) + sum(len(r) for r in cap.reads) + _READ_OVERHEAD * len(cap.reads)
        if self.queued_bytes + size > self.max_queued_bytes:
            if not self._dropping:  # one line per stretch of dropped exchanges
                self._dropping = True
                log.warning(
                    "the analysis process is behind (%d MiB of exchanges waiting): exchanges "
                    "are forwarded but not recorded until it catches up",
                    self.queued_bytes >> 20,
                )
            self.dropped += 1
            return
        self._dropping = False
        self.queued_bytes += size
        self.queue.put((cap, size))

    def handle(self, req: Request, client: ClientConn) -> None:
        """Answer one request read by the front end on `client` (in its greenlet)."""
        start = req.start
        if req.path == "/health":
            client.send_json("200 OK", self.health())
            return
        headers = {}
        secrets = []
        for k, v in req.headers:
            name = k.lower()
            if name not in _HOP:
                headers[name] = v
            if name in _SECRET_HEADERS:
                secrets += [v, v.split(" ", 1)[-1]]
        path, query, body, method = req.path, req.query, req.body, req.method
        wall = time.time() - (time.monotonic() - start)
        upstream_path = self.prefix + path + (f"?{query}" if query else "")
        if self.hub is not None and method != "HEAD":
            try:
                relay = self.hub.start(client, method, upstream_path, headers, body)
            except OSError as exc:
                relay, error = None, exc
            # The request is parsed (model, key, max_tokens) in the analysis process, after
            # the exchange: its JSON is parsed neither between the client and the upstream
            # nor between this process's other streams' events and their clients.
            cap = Capture(wall, start, method, path, query, body, secrets)
            if relay is None:
                self._unreachable(client, cap, error)
                return
            relay.cap = cap
            relay.run()
            if relay.failure:
                client.send_json("502 Bad Gateway", self.unreachable_body())
            return
        cap = Capture(wall, start, method, path, query, body, secrets)
        self._relay_urllib3(client, cap, upstream_path, headers, body)

    def _relay_urllib3(
        self,
        client: ClientConn,
        cap: Capture,
        upstream_path: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        """An https upstream (or a HEAD request): urllib3 reads it, one read at a time."""
        try:
            resp = self.pool.urlopen(
                cap.method,
                self.origin + upstream_path,
                body=body or None,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                timeout=self.timeout,
            )
        except self.errors as exc:
            self._unreachable(client, cap, exc)
            return
        cap.first_byte = time.monotonic()
        cap.status = resp.status
        cap.headers = list(resp.headers.items())
        lines = [f"HTTP/1.1 {resp.status} {resp.reason or ''}".strip()]
        lines += [f"{k}: {v}" for k, v in cap.headers if k.lower() not in _HOP]
        bodiless = cap.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
        chunked = False
        if "content-length" in resp.headers and "transfer-encoding" not in resp.headers:
            lines.append(f"Content-Length: {resp.headers['content-length']}")
        elif not bodiless:
            if client.version == "HTTP/1.1":
                chunked = True
                lines.append("Transfer-Encoding: chunked")
            else:
                client.close_connection = True  # HTTP/1.0: the body ends with the connection
        if client.close_connection:
            lines.append("Connection: close")
        self.in_flight += 1
        try:
            client.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            client.headers_sent = True
            while not bodiless:
                try:
                    data = resp.read1(65536, decode_content=False)
                except self.errors as exc:
                    # The upstream broke off mid-reply: break off to the client too.
                    cap.outcome, cap.detail = "drop", f"{type(exc).__name__}"
                    client.close_connection = True
                    with contextlib.suppress(OSError):
                        client.raw.shutdown(socket.SHUT_RDWR)
                    break
                now = time.monotonic()
                if not data:
                    cap.end = now
                    if chunked:
                        client.send(b"0\r\n\r\n")
                    break
                cap.keep(now, data, self.max_capture)
                client.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        except OSError:
            cap.outcome = "client_disconnect"
            client.close_connection = True
        finally:
            self.in_flight -= 1
            cap.end = cap.end or time.monotonic()
            if cap.outcome == "ok":
                resp.release_conn()
            else:
                resp.close()
            self.enqueue(cap)

    def _unreachable(self, client: ClientConn, cap: Capture, exc: Exception) -> None:
        cap.status, cap.outcome, cap.end = 502, "upstream_unreachable", time.monotonic()
        cap.detail = f"{type(exc).__name__}: {exc}"
        self.enqueue(cap)
        client.send_json("502 Bad Gateway", self.unreachable_body())

    def unreachable_body(self) -> dict[str, Any]:
        """The 502 answer when the upstream cannot be reached or sent no valid reply."""
        return {
            "error": {
                "message": f"llmsim record: upstream {self.origin} unreachable",
                "type": "upstream_error",
            }
        }

    def health(self) -> dict[str, Any]:
        """What /health answers: the recorder's own state, not the upstream's."""
        return {
            "status": "ok",
            "version": __version__,
            "recording": self.cfg.out,
            "target": self.cfg.target,
            "recorded": self.recorded,
            "in_flight": self.in_flight,
            "not_recorded": self.dropped,
        }


def run(cfg: RecordConfig, out: TextIO | None = None) -> int:
    """Run `llmsim record` until SIGTERM/SIGINT; the file is complete when it returns."""
    from llmsim.server.runner import ServeError, bind_listener

    out = out or sys.stdout
    split_target(cfg.target)
    try:
        open(cfg.out, "a", encoding="utf-8").close()
    except OSError as exc:
        raise RecordError(f"--out {cfg.out}: cannot write it ({exc.strerror})") from None
    try:
        sock = bind_listener(cfg.host, cfg.port)
    except ServeError as exc:
        raise RecordError(str(exc)) from None
    read_fd, write_fd = os.pipe()
    child = os.fork()  # before gevent patches anything: the writer is a plain process
    if child == 0:
        sock.close()
        os.close(write_fd)
        try:
            _write_child(read_fd, cfg)
        finally:
            os._exit(1)
    os.close(read_fd)
    try:
        return _serve(cfg, sock, write_fd, out)
    finally:
        os.waitpid(child, 0)


def _serve(cfg: RecordConfig, sock: socket.socket, write_fd: int, out: TextIO) -> int:
    from gevent import monkey

    monkey.patch_all()
    import functools
    import signal

    import gevent
    import gevent.event
    from gevent.pool import Pool
    from gevent.server import StreamServer

    from llmsim import gcpolicy
    from llmsim.record.front import Limits, serve_connection
    from llmsim.server.http_hygiene import FdGuard, guarded
    from llmsim.server.runner import base_url, drain

    rec = Recorder(cfg, _PipeSink(write_fd))
    handlers: weakref.WeakSet[ClientConn] = weakref.WeakSet()  # what drain() looks at
    limits = Limits.from_settings(MAX_BODY_BYTES)
    handle = functools.partial(serve_connection, rec, limits, handlers)
    # At the descriptor limit a client gets a 503 and the recorder recovers, as the simulator.
    server = guarded(StreamServer)(sock, handle, spawn=Pool())
    server.fd_guard = FdGuard()
    server.handlers = handlers
    writer = gevent.spawn(rec.write_loop)
    # Time-driven GC, as in the simulator's workers: an automatic full scan stalls every
    # stream being relayed (see gcpolicy.py). What exists now is frozen out of the scans.
    gcpolicy.install()
    stopped = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    gevent.signal_handler(signal.SIGINT, stopped.set)
    # Not serve_forever(): on its way out it stops the handlers with gevent's own 1 s timeout,
    # which cut every stream in flight after 1 s whatever the grace period. The drain owns it.
    server.start()
    url = base_url(sock)
    print(
        f"llmsim {__version__} recording {cfg.target} at {url} into {cfg.out}",
        file=out,
        flush=True,
    )
    try:
        stopped.wait()
        drain(server, cfg.grace_period_s)
    finally:
        rec.queue.put(None)
        writer.join(timeout=30)
        if rec.hub is not None:
            rec.hub.close()
        # The analysis process writes what is left, then ends. Closed through a file object:
        # gevent's patched os.close defers the close to a loop iteration that never comes.
        open(write_fd, "wb", buffering=0).close()
    print(f"llmsim record: {rec.recorded} requests recorded in {cfg.out}", file=out, flush=True)
    if rec.dropped:
        print(
            f"llmsim record: {rec.dropped} requests were forwarded but not recorded: the "
            f"analysis process fell behind ({MAX_QUEUED_BYTES >> 20} MiB waiting)",
            file=out,
            flush=True,
        )
    return 0
