"""The writes of one sweep leave back to back at its end (StreamLoop.outbox, SocketSink).

On loopback the sender pays for its reader's wake-up, so the sinks hold their writes while a
sweep renders and the sweep sends them together. These tests drive the real loop and the real
socket sink on a fake clock, with a fake raw socket that records what the kernel would get.
"""

from __future__ import annotations

from llmsim.engine.loop import OUTBOX_MAX, Stream, StreamLoop, TimedStream
from llmsim.server.takeover import SocketSink

LOG: list[tuple[str, object]] = []  # what happened, in order: ("fire", name) / ("send", bytes)


class FakeRaw:
    """The OS socket: records each send; `fail` makes sends fail as for a vanished client."""

    def __init__(self) -> None:
        self.fail = False

    def send(self, buf: bytes) -> int:
        if self.fail:
            raise BrokenPipeError
        LOG.append(("send", bytes(buf)))
        return len(buf)

    def fileno(self) -> int:
        return -1


class FakeHandler:
    """What SocketSink uses of gevent's WSGI handler (headers already sent, chunked body)."""

    def __init__(self) -> None:
        self.socket = type("S", (), {"_sock": FakeRaw()})()
        self.headers_sent = True
        self.response_use_chunked = True
        self.response_length = 0
        self.close_connection = False


class Owner:
    def __init__(self) -> None:
        self.ended_as: str | None = None

    def started(self, now: float) -> None:
        pass

    def ended(self, kind: str, tokens_sent: int) -> None:
        self.ended_as = kind


def _stream(loop: StreamLoop, name: str, tokens: int, handler: FakeHandler, owner: Owner):
    def events():
        for i in range(tokens):
            LOG.append(("fire", f"{name}{i}"))
            yield i, f"{name}{i}".encode()

    sink = SocketSink(handler)
    stream = Stream(loop, events(), lambda step: min(step + 1, tokens), sink, owner, 0.0)
    pacer = TimedStream(stream, lambda i: 0.001 * (i + 1), tokens)  # token i due at (i+1) ms
    loop.add(pacer, pacer.first_deadline())
    return stream, sink


def _sweep_at(loop: StreamLoop, now: list[float], t: float) -> None:
    now[0] = t
    loop.sweep()


def test_a_sweeps_writes_leave_together_after_it_has_rendered_them():
    LOG.clear()
    now = [0.0]
    loop = StreamLoop(clock=lambda: now[0])
    owners = [Owner(), Owner()]
    _stream(loop, "a", 3, FakeHandler(), owners[0])
    _stream(loop, "b", 3, FakeHandler(), owners[1])
    LOG.clear()  # (each stream renders its first event when it is made)
    _sweep_at(loop, now, 0.0011)  # token 0 of both streams is due; sending it renders the next
    kinds = [k for k, _ in LOG]
    assert kinds == ["fire", "fire", "send", "send"], LOG
    assert LOG[0][1] == "a1" and LOG[1][1] == "b1"
    assert LOG[2][1] == b"2\r\na0\r\n" and LOG[3][1] == b"2\r\nb0\r\n"
    assert loop.outbox == []


def test_a_stream_that_ends_in_a_sweep_sends_its_last_bytes_before_it_is_released():
    LOG.clear()
    now = [0.0]
    loop = StreamLoop(clock=lambda: now[0])
    owner = Owner()
    _, sink = _stream(loop, "c", 1, FakeHandler(), owner)
    _sweep_at(loop, now, 0.0011)
    assert owner.ended_as == "ok" and sink.done.is_set()
    assert LOG[-1] == ("send", b"2\r\nc0\r\n0\r\n\r\n")  # the terminating chunk went too


def test_a_write_that_fails_when_the_sweep_sends_it_ends_the_stream():
    LOG.clear()
    now = [0.0]
    loop = StreamLoop(clock=lambda: now[0])
    owner = Owner()
    handler = FakeHandler()
    stream, _ = _stream(loop, "d", 5, handler, owner)
    handler.socket._sock.fail = True  # the client is gone by the time the sweep writes
    _sweep_at(loop, now, 0.0011)
    assert stream.done and owner.ended_as == "client_disconnect"


def test_a_long_sweep_sends_in_batches():
    LOG.clear()
    now = [0.0]
    loop = StreamLoop(clock=lambda: now[0])
    n = 2 * OUTBOX_MAX + 5
    for i in range(n):
        _stream(loop, f"s{i}_", 2, FakeHandler(), Owner())
    LOG.clear()
    _sweep_at(loop, now, 0.0011)
    kinds = [k for k, _ in LOG]
    assert kinds.count("send") == n and kinds.count("fire") == n
    # Sends start after OUTBOX_MAX fires, not only at the sweep's end.
    assert kinds.index("send") == OUTBOX_MAX


def test_event_log_says_truncated_only_when_an_event_was_left_out() -> None:
    from llmsim.engine.loop import EventLog

    log = EventLog(size=2, max_events=3)
    whole, cut = log.open("whole", {"request_id": "whole"}), log.open("cut", {"request_id": "cut"})
    for step in range(3):
        log.add(whole, step, 1, step * 0.02, step * 0.02 + 0.001)
    for step in range(10):
        log.add(cut, step, 1, step * 0.02, step * 0.02)
    w, c = log.get("whole"), log.get("cut")
    assert w is not None and c is not None
    assert [e["step"] for e in w["events"]] == [0, 1, 2] and not w["truncated"]
    assert w["events"][1] == {"step": 1, "tokens": 1, "planned_ms": 20.0, "sent_ms": 21.0}
    assert [e["step"] for e in c["events"]] == [0, 1, 2] and c["truncated"]
    assert len(cut) == 4 * 4  # memory stays bounded: one event beyond the shown ones
    log.open("third", {})
    assert log.get("whole") is None  # the oldest request leaves the bounded log
