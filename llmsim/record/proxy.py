"""`llmsim record`: a transparent proxy that writes one recording line per request.

Each upstream read is forwarded the moment it arrives (no buffering: an SSE event reaches the
client as soon as it reaches us), and timed. The analysis of an exchange (SSE parsing, token
counting) happens after its last byte was forwarded, in a writer greenlet, so it never sits
between an event and the client.

urllib3 is the upstream client: connection pools with keep-alive, chunked decoding, TLS,
timeouts and `read1()` (return whatever one socket read brings) are what a hand-written client
would have to get right, and it runs on gevent's patched sockets unchanged.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from llmsim import __version__
from llmsim.record.apis import read_request
from llmsim.record.recording import Capture, analyse

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


class Recorder:
    """The proxy's WSGI app and its writer (needs a gevent hub: run under gevent)."""

    def __init__(self, cfg: RecordConfig, out: TextIO) -> None:
        import gevent.queue
        import urllib3

        from llmsim.engine.tokens import count_tokens

        self.cfg = cfg
        self.origin, self.prefix = split_target(cfg.target)
        self.pool = urllib3.PoolManager(maxsize=4096, block=False, retries=False)
        self.timeout = urllib3.Timeout(connect=10.0, read=cfg.timeout_s)
        self.errors = (urllib3.exceptions.HTTPError, OSError)
        self.queue: gevent.queue.Queue = gevent.queue.Queue()
        self.out = out
        self.count_tokens = count_tokens
        self.recorded = 0
        self.in_flight = 0

    # The writer: analysis and file writes, off the forwarding path.
    def write_loop(self) -> None:
        """Analyse finished exchanges and append their lines until None arrives."""
        import gevent

        while True:
            cap = self.queue.get()
            if cap is None:
                break
            try:
                line = analyse(cap, self.count_tokens, self.cfg.with_bodies)
                if isinstance(line.get("error"), str):
                    line["error"] = _scrub(line["error"], cap.info.secrets)
                self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
                self.recorded += 1
            except Exception as exc:  # one odd exchange must not stop the recording
                print(f"llmsim record: could not record {cap.path}: {exc!r}", file=sys.stderr)
            if self.queue.empty():
                self.out.flush()
            gevent.sleep(0)  # let streams run between two analyses

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        from llmsim.server.pipeline import SOCKET_KEY, START_KEY

        start = environ.get(START_KEY) or time.monotonic()
        path = environ.get("PATH_INFO", "")
        if path == "/health":
            return self._json(start_response, "200 OK", self.health())
        method = environ.get("REQUEST_METHOD", "GET")
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return self._json(
                start_response,
                "413 Request Entity Too Large",
                {"error": {"message": f"llmsim record: body above {MAX_BODY_BYTES} bytes"}},
            )
        body = environ["wsgi.input"].read(int(length)) if length.isdigit() else b""
        if not length.isdigit() and "HTTP_TRANSFER_ENCODING" in environ:
            body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
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
        info = read_request(path, query, body)
        info.secrets = secrets
        cap = Capture(time.time() - (time.monotonic() - start), start, method, path, info)
        upstream_path = self.prefix + path
        url = self.origin + upstream_path + (f"?{query}" if query else "")
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
            cap.status, cap.outcome, cap.end = 502, "upstream_unreachable", time.monotonic()
            cap.detail = f"{type(exc).__name__}: {exc}"
            self.queue.put(cap)
            return self._json(
                start_response,
                "502 Bad Gateway",
                {
                    "error": {
                        "message": f"llmsim record: upstream {self.origin} unreachable",
                        "type": "upstream_error",
                    }
                },
            )
        cap.first_byte = time.monotonic()
        cap.status = resp.status
        cap.headers = list(resp.headers.items())
        out_headers = [(k, v) for k, v in cap.headers if k.lower() not in _HOP]
        if "content-length" in resp.headers and "transfer-encoding" not in resp.headers:
            out_headers.append(("Content-Length", resp.headers["content-length"]))
        start_response(f"{resp.status} {resp.reason or ''}".strip(), out_headers)
        return _Relay(self, resp, cap, environ.get(SOCKET_KEY))

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
    from gevent import monkey

    monkey.patch_all()
    import signal

    import gevent
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer

    from llmsim.engine.tokens import preload_encodings
    from llmsim.server.runner import ServeError, _make_handler, base_url, bind_listener, drain

    out = out or sys.stdout
    split_target(cfg.target)
    try:
        sock = bind_listener(cfg.host, cfg.port)
    except ServeError as exc:
        raise RecordError(str(exc)) from None
    try:
        f = open(cfg.out, "a", encoding="utf-8")  # noqa: SIM115  (open for the server's life)
    except OSError as exc:
        sock.close()
        raise RecordError(f"--out {cfg.out}: cannot write it ({exc.strerror})") from None
    preload_encodings()  # else the first analysis would hold the hub ~0.4 s
    rec = Recorder(cfg, f)
    server = WSGIServer(sock, rec, handler_class=_make_handler(False), spawn=Pool(), log=None)
    server.handlers = weakref.WeakSet()  # what drain() looks at
    writer = gevent.spawn(rec.write_loop)
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
        f.close()
    print(f"llmsim record: {rec.recorded} requests recorded in {cfg.out}", file=out, flush=True)
    return 0
