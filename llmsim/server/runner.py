"""Run the app on gevent's WSGI server: TCP_NODELAY, worker processes, graceful shutdown."""

from __future__ import annotations

import contextlib
import errno
import gc
import signal
import socket
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from llmsim import __version__
from llmsim.engine.tokens import preload_encodings
from llmsim.server import arrival
from llmsim.server.peer_logs import PeerLogs
from llmsim.server.state import Shared
from llmsim.server.supervisor import Supervisor
from llmsim.settings import Settings

if TYPE_CHECKING:
    from gevent.pywsgi import OldMessage, WSGIHandler, WSGIServer
    from gevent.socket import socket as GeventSocket


class ServeError(RuntimeError):
    """The server cannot start (port taken, address not available…); str() is one line."""


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """Bind before forking so every worker accepts on the same socket."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    # Accepted connections inherit it: their first segments are stamped on arrival too, even
    # if they arrive before the worker accepts them (arrival.py).
    arrival.enable_stamps(sock)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def base_url(sock: socket.socket, tls: bool = False) -> str:
    """`http[s]://host:port` of the bound listener, an IPv6 host in brackets (no /v1)."""
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def check_tls(settings: Settings) -> None:
    """Load the certificate and key once before serving, so a bad pair is one line, not a
    traceback from the first handshake."""
    if not settings.ssl_certfile:
        return
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.ssl_certfile, settings.ssl_keyfile
        )
    except (ssl.SSLError, OSError) as exc:
        raise ServeError(
            f"cannot use --ssl-certfile {settings.ssl_certfile} with --ssl-keyfile "
            f"{settings.ssl_keyfile}: {getattr(exc, 'reason', None) or exc}"
        ) from None


def _make_handler(access_log: bool = True, settings: Settings | None = None) -> type[WSGIHandler]:
    # gevent is imported here, not at module level, so a parent that only forks never
    # starts a hub of its own.
    import gevent
    from gevent.pywsgi import WSGIHandler

    from llmsim.server import fastio, http_hygiene
    from llmsim.server.pipeline import SOCKET_KEY, START_KEY
    from llmsim.server.takeover import HANDLER_KEY

    settings = settings or Settings()
    head_s, idle_s = settings.header_timeout_s, settings.keepalive_timeout_s
    head_bytes, head_lines = settings.max_header_bytes, settings.max_headers

    class NoDelayHandler(WSGIHandler):
        """Sets TCP_NODELAY: gevent sends headers and body in separate writes, and Nagle plus
        the client's delayed ACK would hold every response (and every SSE event) ~40 ms."""

        def __init__(
            self,
            sock: GeventSocket,
            address: Any,
            server: WSGIServer,
            rfile: BinaryIO | None = None,
        ) -> None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP (e.g. a unix socket in tests)
            if rfile is None:  # one whose reads keep the kernel's receive times (arrival.py)
                rfile = arrival.stamped_rfile(sock)
            super().__init__(sock, address, server, rfile)
            self.busy = False
            self.served = 0
            self.head_timer = None
            self.arrived = 0.0
            self.ready_at = 0.0  # the earliest the connection's next request can have come
            self.sent_all_at = 0.0  # when the stream loop sent a response's last bytes
            server.handlers.add(self)

        def handle_one_request(self) -> bool | tuple[str, bytes] | None:
            """gevent's, plus the keep-alive idle limit (idle_s) before a next request and the
            head deadline (head_s) from its first byte; a head that misses it gets a 408, a
            request line too long for gevent a 414 with an error body."""
            self.busy = False  # between requests: a keep-alive connection waiting to be read
            if self.served:
                # When the last response's last bytes left (the stream loop writes them, and
                # this greenlet may wake up later), or now.
                self.ready_at = self.sent_all_at or time.monotonic()
                self.sent_all_at = 0.0
            if self.served and self.rfile is not None and not self.rfile.closed:
                # Idle keep-alive: wait for the next request's first byte, at most idle_s.
                started = None
                with gevent.Timeout(idle_s, False):
                    started = self.rfile.peek(1)
                if not started:
                    return None  # idle too long, or the client closed
            self.served += 1
            # From here the whole head must arrive within head_s (a slow-loris client that
            # sends a byte a second keeps no connection open for good).
            self.head_timer = gevent.Timeout(head_s, http_hygiene.HeaderTimeout)
            self.head_timer.start()
            try:
                result = super().handle_one_request()
                if isinstance(result, tuple) and result[0] == "414":
                    # gevent's own 414 (a request line of MAX_REQUEST_LINE bytes or more) has
                    # an empty body: give it the error JSON every other refusal has.
                    return "414", http_hygiene.request_line_too_long()
                return result
            except http_hygiene.HeaderTimeout as exc:  # while reading the request line
                return http_hygiene.client_error_response(exc)
            finally:
                self._cancel_head_timer()
                env = getattr(self, "environ", None)
                if env is not None:  # the response is over: no handler <-> environ cycle
                    env.pop(HANDLER_KEY, None)

        def _cancel_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.close()
                self.head_timer = None

        def finalize_headers(self) -> None:
            """gevent's, with the Date header from fastio.http_date (formatted once a second)."""
            if self.provided_date is None:  # gevent would format the date for each response
                self.response_headers.append((b"Date", fastio.http_date()))
                self.provided_date = True
            super().finalize_headers()

        def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
            """The (status, response bytes) for a refused head: http_hygiene's 400/408/431, or
            for what gevent itself refuses (a request line it cannot parse, an HTTP version
            other than 0.9 to 1.x) a 400; all in OpenAI's error shape."""
            self._cancel_head_timer()
            ours = http_hygiene.client_error_response(ex)
            if ours is not None:
                return ours
            # gevent logs the refusal; its answer is an empty 400, which a client cannot tell
            # from a broken server.
            super()._handle_client_error(ex)
            return "400", http_hygiene.bad_request_line()

        def read_request(self, raw_requestline: str) -> bool:
            """gevent's, after noting that a request is in progress and when it arrived."""
            self.busy = True
            # The request's clock starts when its first line arrived (the kernel's receive
            # stamp, arrival.py), not when it was read or after the headers and the environ
            # are built: a real server's TTFT counts from arrival, a wait in the socket included.
            self.arrived = arrival.arrival(self.rfile, self.ready_at, time.monotonic())
            return super().read_request(raw_requestline)

        def get_environ(self) -> dict[str, Any]:
            """gevent's environ plus the arrival time (monotonic s), the client socket and
            this handler, for the pipeline and the stream loop."""
            self._cancel_head_timer()  # the head is in: the app's time is the app's
            env = super().get_environ()
            env[START_KEY] = self.arrived or time.monotonic()
            self.arrived = 0.0
            env[SOCKET_KEY] = self.socket
            env[HANDLER_KEY] = self  # the stream loop writes streamed responses itself
            return env

        # The per-request steps fastio makes cheaper (see its docstring).
        def MessageClass(self, fp: BinaryIO, *args: object) -> OldMessage:
            """The request headers, read by fastio within the head's byte and line limits."""
            return fastio.read_headers(fp, head_bytes, head_lines)

        def _write_with_headers(self, data: bytes) -> None:
            """gevent's, sending the head and the first body bytes in one send()."""
            self.headers_sent = True
            self.finalize_headers()
            self._sendall(fastio.head_and_body(self, data))

        def _sendall(self, data: bytes | bytearray) -> None:
            """gevent's, without the per-call SO_SNDBUF lookup (fastio.send_all)."""
            try:
                fastio.send_all(self.socket, data)
            except OSError as ex:  # as gevent's own _sendall
                self.status = f"socket error: {ex}"
                if self.code > 0:
                    self.code = -self.code
                raise
            self.response_length += len(data)

        if not access_log:
            # gevent formats an access-log line for every request even when it has nowhere
            # to write it (~3 % of a small request's time).
            def log_request(self) -> None:
                """Writes nothing (no access log)."""
                pass

    return NoDelayHandler


def drain(server: WSGIServer, grace_period_s: float) -> None:
    """Stop accepting, let requests in flight finish, then close what is left.

    Idle keep-alive connections are closed at once (they would otherwise hold the drain for the
    whole grace period); busy ones get up to grace_period_s, then are cut.
    """
    import gevent

    server.close()
    deadline = time.monotonic() + grace_period_s
    while len(server.pool) and time.monotonic() < deadline:
        for handler in list(server.handlers):
            if not handler.busy and getattr(handler, "socket", None) is not None:
                with contextlib.suppress(OSError):
                    handler.socket.shutdown(socket.SHUT_RDWR)
        gevent.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    server.pool.kill(block=True, timeout=1)


def _make_server_class() -> type[WSGIServer]:
    from gevent.pywsgi import WSGIServer

    from llmsim.server.http_hygiene import guarded

    return guarded(WSGIServer)


def serve_on_socket(
    settings: Settings,
    sock: socket.socket,
    worker: int = 0,
    shared: Shared | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve on an already-bound socket until SIGTERM/SIGINT, then drain and return.

    `ready` is called once the server accepts connections and handles the stop signals (so
    a script that reads the start-up line and sends SIGTERM at once gets a drain, not a kill).
    """
    import gevent
    import gevent.event
    from gevent.pool import Pool

    from llmsim import gcpolicy
    from llmsim.server.app import create_app
    from llmsim.server.http_hygiene import FdGuard

    # Signals first: one that arrives while the app is being built must drain, not kill.
    stopped = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    gevent.signal_handler(signal.SIGINT, stopped.set)
    if settings.seed is not None and worker:
        settings = replace(settings, seed=settings.seed + worker)
    if shared is not None:
        shared.bind_worker(worker)
    app = create_app(settings, shared=shared)
    tls = {}
    if settings.ssl_certfile:
        # gevent wraps each accepted connection; the handshake runs in its own greenlet.
        tls = {"certfile": settings.ssl_certfile, "keyfile": settings.ssl_keyfile}
    server = _make_server_class()(
        sock,
        app,
        **tls,
        handler_class=_make_handler(settings.access_log, settings),
        spawn=Pool(),  # a pool, so shutdown can wait for the requests in flight
        log=sys.stderr if settings.access_log else None,
        error_log=sys.stderr,
        # With workers sharing the listener, this makes gevent accept one connection per
        # wake-up (max_accept = 1) instead of up to 100: otherwise whichever worker wakes
        # first takes every connection of a burst and the others idle.
        environ={"wsgi.multiprocess": settings.workers > 1},
    )

    if shared is not None and shared.peer_logs is not None:
        state = app.extensions["llmsim.state"]
        shared.peer_logs.serve(worker, lambda rid: state.stream_loop().events.get(rid))
    server.handlers = weakref.WeakSet()
    server.fd_guard = FdGuard()
    # What exists now lives as long as the server: frozen out of the cyclic GC's scans, which
    # otherwise take ~8 ms per full collection for these objects alone, stalling every stream;
    # and no automatic old-generation scans while streams are timed (see gcpolicy.py).
    gcpolicy.install()
    # Not serve_forever(): on its way out it stops the handlers with its own 1 s timeout, which
    # cut every stream after 1 s whatever the grace period. The drain owns the shutdown.
    server.start()
    if ready is not None:
        ready()
    stopped.wait()
    drain(server, settings.grace_period_s)


def startup_line(settings: Settings, url: str) -> str:
    """The line printed once the server accepts connections: version, URL, workers, and the
    latency profile or engine preset."""
    profile = f"profile {settings.profile}" if settings.profile else "profile by model name"
    if settings.engine == "vllm":
        n = settings.replicas
        profile = f"engine vllm, preset {settings.preset}, {n} replica{'s' if n != 1 else ''}"
        if settings.workers > 1:
            profile += " per worker"
    workers = f"{settings.workers} worker{'s' if settings.workers != 1 else ''}"
    return (
        f"llmsim {__version__} serving the OpenAI API at {url}/v1 ({workers}, {profile}); "
        f"use base_url={url}/v1"
    )


def serve(settings: Settings, out: TextIO | None = None) -> int:
    """Run `llmsim serve`. Returns the exit status (0 after a graceful shutdown)."""
    out = out or sys.stdout
    check_tls(settings)
    sock = bind_listener(settings.host, settings.port)
    # Load the tokenizers before saying we are ready (and before forking, so workers share
    # them): otherwise the first request of each encoding pays ~0.4 s inside its TTFT.
    preload_encodings()
    # Likewise the app's modules (Flask and every API, ~0.2 s): imported after the start-up
    # line, they held the first request that long in the listen queue.
    import llmsim.server.app  # noqa: F401

    shared = Shared.create(settings)  # before forking: the workers share it
    gc.freeze()  # before forking too: a worker's GC then never writes to the shared pages
    url = base_url(sock, tls=bool(settings.ssl_certfile))
    if settings.workers == 1:
        serve_on_socket(
            settings,
            sock,
            0,
            shared,
            lambda: print(startup_line(settings, url), file=out, flush=True),
        )
        return 0
    shared.peer_logs = PeerLogs.create(settings.workers)
    # The parent keeps the listener open: a restarted worker accepts on it too.
    supervisor = Supervisor(settings, sock, shared, serve_on_socket)
    try:
        return supervisor.run(lambda: print(startup_line(settings, url), file=out, flush=True))
    finally:
        shared.peer_logs.remove()
