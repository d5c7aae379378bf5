"""Reading response bodies as they arrive: one hub callback per readable socket, per process.

Why not `sock.recv()` in each user's greenlet: measured with py-spy at 200 streams, gevent's
recv (a Timeout object per wait, a switch to the hub and back per token) and the hub's loop took
half of Locust's CPU per token; parsing took a quarter. Here the stream's socket gets a libev
read watcher whose callback runs in the hub: `recv()`, parse, stamp, done; the user's greenlet
sleeps once per request, not once per token. Idle streams time out from one 1 s timer that
checks them all.

TLS sockets (whose readability says nothing about decrypted bytes) and response objects without
geventhttpclient's internals are read by the blocking loop in the user's greenlet instead: the
same consumer, the same clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.hub import Waiter

from llmsim.load.chunked import ChunkError, Dechunker
from llmsim.load.sse import StreamClosed
from llmsim.load.stream import iter_lines_fallback

RECV_SIZE = 65536
Consume = Callable[[float, bytes], None]


class _Stream:
    __slots__ = ("consume", "dechunk", "last", "raw", "recv", "timeout", "waiter", "watcher")

    def __init__(
        self, raw: Any, recv: Any, consume: Consume, timeout: float, dechunk: Dechunker | None
    ) -> None:
        self.raw = raw
        self.recv = recv
        self.consume = consume
        self.dechunk = dechunk
        self.timeout = timeout
        self.last = time.perf_counter()
        self.waiter: Waiter = Waiter()
        self.watcher: Any = None


class Reactor:
    """Every plain-TCP stream of one process (one per gevent hub)."""

    def __init__(self) -> None:
        self.hub = gevent.get_hub()
        self.streams: set[_Stream] = set()
        self._timer: Any = None

    def read(
        self, raw: Any, recv: Any, consume: Consume, timeout: float, dechunk: Dechunker | None
    ) -> float:
        """Feed the body of `raw` to `consume` until it is complete; the time of its last byte.

        `dechunk`: decode chunked framing here instead of in llhttp (see chunked.py). Raises
        what the consumer raised, StreamClosed, or TimeoutError after `timeout` s without a byte.
        """
        s = _Stream(raw, recv, consume, timeout, dechunk)
        w = s.watcher = self.hub.loop.io(raw._sock.fileno(), 1)
        self.streams.add(s)
        if self._timer is None:
            self._timer = self.hub.loop.timer(1.0, 1.0)
            self._timer.start(self._check_timeouts)
        w.start(self._readable, s)
        try:
            end, error = s.waiter.get()
        finally:
            w.stop()
            w.close()
            self.streams.discard(s)
        if error is not None:
            raise error
        return end

    def _readable(self, s: _Stream) -> None:
        # Runs in the hub: must never block and never raise.
        try:
            data = s.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._finish(s, 0.0, e)
            return
        now = time.perf_counter()
        s.last = now
        raw = s.raw
        try:
            dechunk = s.dechunk
            if dechunk is not None:
                chunk = dechunk.feed(data)
                if chunk:
                    s.consume(now, chunk)
                if dechunk.done:
                    raw.message_complete = True  # llhttp never saw the body: tell the pool
                    raw.release()  # keep-alive: the connection goes back to the pool
                    self._finish(s, now, None)
                elif not data:
                    self._finish(s, now, StreamClosed("connection closed mid-stream"))
                return
            raw.feed(data)  # llhttp strips chunked framing into _body_buffer; b"" means EOF
            body = raw._body_buffer
            if body:
                chunk = bytes(body)
                del body[:]
                s.consume(now, chunk)
            if raw.message_complete:
                self._finish(s, now, None)
            elif not data:
                self._finish(s, now, StreamClosed("connection closed mid-stream"))
        except ChunkError as e:
            self._finish(s, now, StreamClosed(f"invalid chunked body ({e})"))
        except BaseException as e:  # the consumer's LLMError, a parser error
            self._finish(s, now, e)

    def _finish(self, s: _Stream, end: float, error: BaseException | None) -> None:
        s.watcher.stop()
        self.streams.discard(s)
        s.waiter.switch((end, error))

    def _check_timeouts(self) -> None:
        now = time.perf_counter()
        late = [s for s in self.streams if now - s.last > s.timeout]
        for s in late:
            self._finish(s, now, TimeoutError("no bytes within the timeout"))
        if not self.streams and self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None


_reactors: dict[Any, Reactor] = {}


def reactor() -> Reactor:
    """This process's reactor (a forked Locust worker gets its own, with its own hub)."""
    hub = gevent.get_hub()
    r = _reactors.get(hub)
    if r is None:
        _reactors.clear()  # a hub from before a fork is dead
        r = _reactors[hub] = Reactor()
    return r


def _plain_recv(raw: Any) -> Any:
    """The non-blocking recv of a plain TCP socket under `raw`, or None (TLS, other objects)."""
    sock = getattr(raw, "_sock", None)
    if sock is None or not hasattr(raw, "feed") or not hasattr(raw, "_body_buffer"):
        return None
    if hasattr(sock, "_sslobj") or hasattr(sock, "getpeercert"):
        return None
    inner = getattr(sock, "_sock", None)  # gevent's socket wraps a non-blocking _socket.socket
    if inner is None or inner.gettimeout() != 0.0:
        return None
    return inner.recv


def read_body(response: Any, consume: Consume, timeout: float) -> float:
    """Hand each piece of a streamed body to `consume(now, bytes)`; the time of its last byte.

    `response` is a geventhttpclient response (or Locust's CompatResponse around one). The
    caller releases the connection if this raises (the rest of the body is unread).
    """
    raw = getattr(response, "_response", response)
    body = getattr(raw, "_body_buffer", None)
    if body is None or not hasattr(raw, "feed"):
        end = time.perf_counter()
        for now, line in iter_lines_fallback(raw):
            end = now
            consume(now, line)
        return end
    end = time.perf_counter()
    if body:  # bytes that came in with the headers
        chunk = bytes(body)
        del body[:]
        consume(end, chunk)
    if raw.message_complete:
        return end
    recv = _plain_recv(raw)
    if recv is not None:
        dechunk = None
        if (
            "chunked" in str(raw.get("transfer-encoding") or "").lower()
            and raw.get_remaining_content_length() == 0  # llhttp sits at a chunk boundary
        ):
            dechunk = Dechunker()
        return reactor().read(raw, recv, consume, timeout, dechunk)
    return _read_blocking(raw, consume)


def _read_blocking(raw: Any, consume: Consume) -> float:
    """The user's greenlet reads (TLS): the socket's own timeout applies."""
    body = raw._body_buffer
    end = time.perf_counter()
    while not raw.message_complete:
        sock = raw._sock
        if sock is None:
            raise StreamClosed("connection released before the response was complete")
        data = sock.recv(RECV_SIZE)
        end = time.perf_counter()
        raw.feed(data)
        if body:
            chunk = bytes(body)
            del body[:]
            consume(end, chunk)
        if not data and not raw.message_complete:
            raise StreamClosed("connection closed mid-stream")
    return end
