"""`llmsim record`: a transparent proxy that writes one recording line per request.

Each upstream read is forwarded the moment it arrives (no buffering: an SSE event reaches the
client as soon as it reaches us), and timed. The analysis of an exchange (SSE parsing, token
counting) happens after its last byte was forwarded, in the analysis process, so it never
sits between an event and the client.

Two ways to forward. A plain-http upstream, with the client on a gevent handler's socket, goes
through `hub_relay` (no greenlet per stream: the hub reads the upstream and writes the client).
Otherwise (an https upstream, a HEAD request, or a WSGI test client without a socket) urllib3
is the upstream client: connection pools with keep-alive, chunked decoding, TLS, timeouts and
`read1()` (return whatever one socket read brings), one greenlet per stream. Both hand the
recording the same captures.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from llmsim import __version__
from llmsim.record.apis import read_request
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
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_CAPTURE_BYTES = 16 * 1024 * 1024  # per response; beyond it the line says "truncated"


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
                line["error"] = _scrub(line["error"], cap.info.secrets)
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
    import pickle
    import signal
    import struct

    from llmsim.engine.tokens import preload_encodings

    # Ctrl-C reaches the whole process group: this process ends when the pipe does, after
    # the proxy has handed over its last exchange.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    preload_encodings()
    with open(cfg.out, "a", encoding="utf-8") as f, os.fdopen(read_fd, "rb") as pipe:
        write = LineWriter(f, cfg.with_bodies)
        while True:
            head = pipe.read(4)
            if len(head) < 4:
                break
            data = pipe.read(struct.unpack("!I", head)[0])
            write(pickle.loads(data))
            f.flush()
    os._exit(0)


class _PipeSink:
    """Hands a capture to the analysis process without blocking the hub."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, cap: Capture) -> None:
        import pickle
        import struct

        from gevent.os import make_nonblocking, nb_write

        make_nonblocking(self.fd)
        data = pickle.dumps(cap, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(struct.pack("!I", len(data)) + data)
        while view:
            view = view[nb_write(self.fd, view) :]


class Recorder:
    """The proxy's WSGI app and its writer (needs a gevent hub: run under gevent).

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
        self.max_capture = MAX_CAPTURE_BYTES
        self.hub: HubRelays | None = None
        parts = urlsplit(self.origin)
        if parts.scheme == "http":  # TLS upstreams are read through urllib3's SSL sockets
            self.hub = HubRelays(self, parts.hostname or "", parts.port or 80, cfg.timeout_s, _HOP)

    def write_loop(self) -> None:
        """Hand finished exchanges to the sink until None arrives (off the forwarding path)."""
        while True:
            cap = self.queue.get()
            if cap is None:
                break
            cap.info.body = None  # not part of the line; can be megabytes
            self.sink(cap)
            self.recorded += 1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        from llmsim.server.pipeline import SOCKET_KEY, START_KEY
        from llmsim.server.takeover import HANDLER_KEY

        start = environ.get(START_KEY) or time.monotonic()
        path = environ.get("PATH_INFO", "")
        if path == "/health":
            return self._json(start_response, "200 OK", self.health())
        method = environ.get("REQUEST_METHOD", "GET")
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit():
            body = b"" if int(length) > MAX_BODY_BYTES else environ["wsgi.input"].read(int(length))
            too_large = int(length) > MAX_BODY_BYTES
        else:  # chunked, or no body
            body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
            too_large = len(body) > MAX_BODY_BYTES
        if too_large:
            return self._json(
                start_response,
                "413 Request Entity Too Large",
                {"error": {"message": f"llmsim record: body above {MAX_BODY_BYTES} bytes"}},
            )
        headers = {}
        secrets = []
        for k, v in environ.items():
            if k.startswith("HTTP_"):
                name = k[5:].replace("_", "-").lower()
                if name not in _HOP:
                    headers[name] = v
                if name in _SECRET_HEADERS:
                    secrets += [v, v.split(" ", 1)[-1]]
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        query = environ.get("QUERY_STRING", "")
        wall = time.time() - (time.monotonic() - start)
        upstream_path = self.prefix + path + (f"?{query}" if query else "")
        handler = environ.get(HANDLER_KEY)
        if self.hub is not None and method != "HEAD" and _raw_socket(handler) is not None:
            try:
                relay = self.hub.start(
                    handler, start_response, method, upstream_path, headers, body
                )
            except OSError as exc:
                relay, error = None, exc
            # Parsed while the upstream works on it: a long prompt's JSON is not parsed
            # between the client and the upstream.
            info = read_request(path, query, body)
            info.secrets = secrets
            cap = Capture(wall, start, method, path, info)
            if relay is None:
                return self._unreachable(start_response, cap, error)
            relay.cap = cap
            return relay
        info = read_request(path, query, body)
        info.secrets = secrets
        cap = Capture(wall, start, method, path, info)
        url = self.origin + upstream_path
        try:
            resp = self.pool.urlopen(
                method,
                url,
                body=body or None,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=False,
                timeout=self.timeout,
            )
        except self.errors as exc:
            return self._unreachable(start_response, cap, exc)
        cap.first_byte = time.monotonic()
        cap.status = resp.status
        cap.headers = list(resp.headers.items())
        out_headers = [(k, v) for k, v in cap.headers if k.lower() not in _HOP]
        if "content-length" in resp.headers and "transfer-encoding" not in resp.headers:
            out_headers.append(("Content-Length", resp.headers["content-length"]))
        start_response(f"{resp.status} {resp.reason or ''}".strip(), out_headers)
        return _Relay(self, resp, cap, environ.get(SOCKET_KEY))

    def _unreachable(self, start_response: Any, cap: Capture, exc: Exception) -> list[bytes]:
        cap.status, cap.outcome, cap.end = 502, "upstream_unreachable", time.monotonic()
        cap.detail = f"{type(exc).__name__}: {exc}"
        self.queue.put(cap)
        return self._json(start_response, "502 Bad Gateway", self.unreachable_body())

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
        }

    @staticmethod
    def _json(start_response: Any, status: str, payload: Any) -> list[bytes]:
        data = json.dumps(payload).encode()
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return [data]


def _raw_socket(handler: Any) -> Any:
    """The OS socket under a gevent handler's client socket (None: no handler, or TLS)."""
    sock = getattr(handler, "socket", None)
    if sock is None or hasattr(sock, "getpeercert"):
        return None
    return getattr(sock, "_sock", None)


class _Relay:
    """The response body: each upstream read forwarded as it arrives, and timed."""

    def __init__(self, rec: Recorder, resp: Any, cap: Capture, client: Any) -> None:
        self.rec, self.resp, self.cap, self.client = rec, resp, cap, client
        self.size = 0
        self.done = False
        rec.in_flight += 1

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.done:
            raise StopIteration
        try:
            data = self.resp.read1(65536, decode_content=False)
        except self.rec.errors as exc:
            # The upstream broke off mid-reply: break off to the client too, as it would have.
            self.cap.outcome, self.cap.detail = "drop", f"{type(exc).__name__}"
            if self.client is not None:
                with contextlib.suppress(OSError):
                    self.client.shutdown(socket.SHUT_RDWR)
            self._finish()
            raise StopIteration from None
        now = time.monotonic()
        if not data:
            self._finish(now)
            raise StopIteration
        self.size += len(data)
        if self.size <= MAX_CAPTURE_BYTES:
            self.cap.chunks.append((now, data))
        else:
            self.cap.truncated = True
        return data

    def _finish(self, now: float | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.rec.in_flight -= 1
        self.cap.end = now or time.monotonic()
        if self.cap.outcome == "ok":
            self.resp.release_conn()
        else:
            self.resp.close()
        self.rec.queue.put(self.cap)

    def close(self) -> None:
        """Called by the server when it is done, also when the client went away mid-reply."""
        if not self.done:
            self.cap.outcome = "client_disconnect"
            self._finish()


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
    import signal

    import gevent
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    from llmsim import gcpolicy
    from llmsim.server.runner import _make_handler, base_url, drain

    rec = Recorder(cfg, _PipeSink(write_fd))
    server = WSGIServer(sock, rec, handler_class=_make_handler(False), spawn=Pool(), log=None)
    server.handlers = weakref.WeakSet()  # what drain() looks at
    writer = gevent.spawn(rec.write_loop)
    # Time-driven GC, as in the simulator's workers: an automatic full scan stalls every
    # stream being relayed (see gcpolicy.py). What exists now is frozen out of the scans.
    gcpolicy.install()
    stopping: list[Any] = []

    def stop() -> None:
        if not stopping:
            stopping.append(gevent.spawn(drain, server, cfg.grace_period_s))

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    url = base_url(sock)
    print(
        f"llmsim {__version__} recording {cfg.target} at {url} into {cfg.out}",
        file=out,
        flush=True,
    )
    try:
        server.serve_forever()
        if stopping:
            stopping[0].join()
    finally:
        rec.queue.put(None)
        writer.join(timeout=30)
        if rec.hub is not None:
            rec.hub.close()
        # The analysis process writes what is left, then ends. Closed through a file object:
        # gevent's patched os.close defers the close to a loop iteration that never comes.
        open(write_fd, "wb", buffering=0).close()
    print(f"llmsim record: {rec.recorded} requests recorded in {cfg.out}", file=out, flush=True)
    return 0
