"""The stream loop: one scheduler per worker process owns every response in flight.

A heap of deadlines and one timer. At each wake-up every entry that is due fires: a stream
renders its next event and writes it with one non-blocking send (a socket sink holds its
writes while the sweep runs and the sweep sends them back to back at its end, `outbox`); only a
socket whose buffer is full gets a write watcher (backpressure), and a failed write ends that
stream at once (its capacity slot, rate-limit reservation and stats are freed by its owner's
`ended`). No greenlet runs per token: handler greenlets stay parked until their response is over.

Deadlines, not sleeps: a source returns the absolute time of its next event, computed from the
request's arrival, so a late wake-up never shifts later events. A late event is still written on
its own (never joined with the stream's next one); only events planned for the same instant
(e.g. the `instant` profile) share a write.

Interface (what api mode uses, and what engine mode's replicas build on):

- `Clocked`: anything in the heap. `fire(deadline, now) -> float | None` does what is due and
  returns its next deadline (monotonic seconds) or None when it is done. api mode's per-stream
  pacer (`TimedStream`, built from `engine.timing`) is one; a batch-stepping replica is another
  (its deadline is its next step's end; when due it calls `emit` on every stream in the step).
- `Stream`: one response being written. A source drives it with
    `emit(n_tokens, now, planned=None) -> bool`  n more tokens exist: write every event they
                                                 complete (False once the stream is over);
    `finish()`                                   the reply is complete: write the rest;
    `fail(kind)`                                 end it now (`drop`, `stream-error`, ...).
  A stream is API-independent: it consumes the wire format's event iterator of (step, bytes)
  and maps steps to tokens with `step_end(step)` (the reply's chunking).
- `Sink`: where a stream's bytes go (`server/takeover.py` writes to the client socket itself;
  `QueueSink` hands them to a greenlet, for servers without a socket, e.g. test clients).
- `Owner`: told once when the first event leaves (`started(now)`) and once when the stream
  ends (`ended(kind, tokens_sent)`), whatever ended it.
- `EventLog`: the planned and actual send time of every event of the last N requests
  (`GET /llmsim/requests/{id}`).

The loop itself runs in the gevent hub as a timer callback: sending on non-blocking sockets
never waits, so nothing here may block except the short precise sleep described in `_fire`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from llmsim.engine.hrtimer import TimerFd

log = logging.getLogger("llmsim.loop")

# The loop wakes on a timerfd at the deadline itself (hrtimer.py). Without one (not Linux, or a
# fake clock), libev's timer wakes up to ~1 ms late (it waits in whole milliseconds), so it is
# set WAKE_EARLY_S before the deadline and the rest is slept precisely (see _fire).
WAKE_EARLY_S = 0.0011
# The precise sleep blocks the hub (no I/O meanwhile, and on a busy machine the scheduler may
# take milliseconds to give the CPU back): only while few entries are in flight, where it makes
# an idle server's first event exact. Busier loops rely on the timer alone (up to ~1 ms late,
# the same for every event, so gaps stay exact on average).
PRECISE_MAX_ENTRIES = 8
# An event this close to its deadline is sent now rather than after another wait.
EARLY_OK_S = 0.00005
# Under load, wake at most once per MIN_SWEEP_S: every event due by then goes out in that sweep.
MIN_SWEEP_S = 0.00025
# With a coalescing window (StreamLoop's `coalesce_s`, `--coalesce-ms`) the wait between sweeps
# grows with the event rate, reaching the whole window at COALESCE_FULL_RATE events a second
# (400 streams at 20 ms a token). Each sweep costs the server a wake-up, and each write of a
# sweep that finds its reader asleep wakes that reader too (on loopback the sender pays for the
# receiver's wake-up: a fifth of the server's CPU at 500 streams, measured with perf), so
# writes that leave back to back share both. The rate is measured over RATE_PERIOD_S.
COALESCE_FULL_RATE = 20_000.0
RATE_PERIOD_S = 0.1

# A sweep that keeps finding overdue events hands control back to the hub after this many, so
# new requests and other I/O are served even when the loop is behind.
MAX_FIRES_PER_SWEEP = 2000
# Sinks may hold their writes while a sweep runs (server/takeover.py); the sweep sends them back
# to back once this many hold some, and at its end, so no write waits for more than this many
# others to be rendered first (~0.3 ms).
OUTBOX_MAX = 32

# Results of Sink.send.
SENT, BLOCKED, GONE = 0, 1, 2


class Clocked(Protocol):
    """An entry of the loop's heap: a stream's pacer, or a replica stepping a batch."""

    def fire(self, deadline: float, now: float) -> float | None:
        """Do what was due at `deadline`; return the next deadline, or None when done."""
        ...


class Sink(Protocol):
    """Where a stream's bytes go."""

    def send(self, stream: Stream, data: bytes, last: bool) -> int:
        """Write `data` (the stream's last bytes when `last`): SENT, BLOCKED or GONE.

        BLOCKED: the sink keeps the rest and calls `stream.writable()` once it is flushed.
        """
        ...

    def close(self, stream: Stream, kind: str) -> None:
        """The stream is over ("ok", or why not): release the connection's handler."""
        ...


class Owner(Protocol):
    """The request a stream belongs to (stats, capacity slot, rate limits)."""

    def started(self, now: float) -> None:
        """The first event has left (monotonic seconds)."""

    def ended(self, kind: str, tokens_sent: int) -> None:
        """The stream is over: how ("ok" or a failure kind) and how many tokens were sent."""


class EventLog:
    """Planned and actual send times of every event of the last `size` requests (per worker).

    Each request shows at most `max_events` events (4 doubles each, one more kept to tell a
    cut log from a whole one), so memory is bounded by about size × max_events × 32 bytes
    whatever the replies' lengths.
    """

    def __init__(self, size: int = 256, max_events: int = 4096) -> None:
        self.size = size
        self.max_events = max_events
        # Doubles kept per request: one event more than is shown, whose presence says the log
        # was cut (a request with exactly max_events events is whole).
        self.max_values = (max_events + 1) * 4
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def open(self, request_id: str, info: dict[str, Any]) -> array | None:
        """Start the log of one request; returns its event array (None when the log is off)."""
        if self.size <= 0:
            return None
        events = array("d")
        self._entries[request_id] = {"info": info, "events": events}
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return events

    def add(
        self, events: array | None, step: int, tokens: int, planned: float, sent: float
    ) -> None:
        """Append one event to a request's log: its step, its tokens, and its planned and actual
        send times (seconds after the request's arrival). Nothing once the log is full or off."""
        if events is not None and len(events) < self.max_values:
            events.extend((step, tokens, planned, sent))

    def get(self, request_id: str) -> dict[str, Any] | None:
        """One request's planned and sent times, or None when it is not (or no longer) kept."""
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        ev = entry["events"]
        shown = min(len(ev), self.max_events * 4)
        rows = [
            {
                "step": int(ev[i]),
                "tokens": int(ev[i + 1]),
                "planned_ms": round(ev[i + 2] * 1000, 3),
                "sent_ms": round(ev[i + 3] * 1000, 3),
            }
            for i in range(0, shown, 4)
        ]
        return {**entry["info"], "events": rows, "truncated": len(ev) > shown}


class Lateness:
    """How late the loop's writes left against their planned times (per worker, bounded).

    Two histograms, first events and all events, in fixed buckets: bucket k counts writes
    between LATE_EDGES_MS[k-1] and LATE_EDGES_MS[k] late (bucket 0: on time or up to the
    first edge). Percentiles are read as a bucket's upper edge, so they are upper bounds.
    """

    __slots__ = ("events", "first", "max_event_s", "max_first_s")

    def __init__(self) -> None:
        self.first = [0] * (len(LATE_EDGES_MS) + 1)
        self.events = [0] * (len(LATE_EDGES_MS) + 1)
        self.max_first_s = 0.0
        self.max_event_s = 0.0

    def add(self, late_s: float, first: bool) -> None:
        """Count one write that left `late_s` seconds after its planned time."""
        k = bisect.bisect_left(LATE_EDGES_S, late_s)
        self.events[k] += 1
        if late_s > self.max_event_s:
            self.max_event_s = late_s
        if first:
            self.first[k] += 1
            if late_s > self.max_first_s:
                self.max_first_s = late_s

    @staticmethod
    def _summary(counts: list[int], max_s: float) -> dict[str, Any]:
        total = sum(counts)
        out: dict[str, Any] = {"count": total}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            if not total:
                out[f"{name}_ms"] = None
                continue
            rank, seen = q * total, 0
            for k, c in enumerate(counts):
                seen += c
                if seen >= rank:
                    edge = LATE_EDGES_MS[k] if k < len(LATE_EDGES_MS) else max_s * 1000
                    out[f"{name}_ms"] = min(edge, round(max_s * 1000, 3))
                    break
        out["max_ms"] = round(max_s * 1000, 3) if total else None
        return out

    def snapshot(self) -> dict[str, Any]:
        """Percentile upper bounds (ms) of first-event and all-event lateness."""
        return {
            "first_event": self._summary(self.first, self.max_first_s),
            "events": self._summary(self.events, self.max_event_s),
            # The raw counts, so a client can diff two snapshots (lateness over a window).
            "histogram": {
                "upper_edges_ms": [*LATE_EDGES_MS, None],
                "first_event": list(self.first),
                "events": list(self.events),
            },
        }


# Bucket edges of Lateness, in ms: fine where fidelity is judged (<= 10 ms), coarse beyond.
LATE_EDGES_MS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000)
LATE_EDGES_S = tuple(e / 1000 for e in LATE_EDGES_MS)


class StreamLoop:
    """The per-worker scheduler: a heap of (deadline, seq, Clocked) and one timer."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        min_sweep_s: float = MIN_SWEEP_S,
        log_size: int = 256,
        coalesce_s: float = 0.0,
    ) -> None:
        import gevent

        self.clock = clock
        self.min_sweep_s = min_sweep_s
        # The longest wait between sweeps under load (0: min_sweep_s always); `window` is the
        # wait in force, from the event rate (see COALESCE_FULL_RATE).
        self.coalesce_s = max(coalesce_s, min_sweep_s)
        self.window = min_sweep_s
        self._rate_t0 = clock()
        self._rate_fired0 = 0
        self.rate = 0.0  # entries fired per second, smoothed
        self.events = EventLog(log_size)
        self.lateness = Lateness()
        self._hub_loop = gevent.get_hub().loop
        # A timerfd wakes the loop at the exact deadline (hrtimer.py); libev's whole-ms timer,
        # with the precise sleep below, is the fallback (and what a test's fake clock gets).
        self._precise: TimerFd | None = None
        if clock is time.monotonic:
            try:
                self._precise = TimerFd(self._fire_precise)
            except (OSError, AttributeError):
                self._precise = None
        self._heap: list[tuple[float, int, Clocked]] = []
        self._seq = itertools.count()
        self._timer: Any = None
        self._timer_for = float("inf")  # the target the timer is armed for
        self._last_sweep = 0.0
        # A sweep is running (catch_up must not start another); a sink's writes may then wait
        # in `outbox` for the sweep's end.
        self.sweeping = False
        self.outbox: list[Any] = []  # sinks holding writes (flush_held) until flush_outbox
        self.sweeps = 0
        self.fired = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, entry: Clocked, deadline: float) -> None:
        """Schedule `entry` to fire at `deadline` (monotonic seconds)."""
        heapq.heappush(self._heap, (deadline, next(self._seq), entry))
        if deadline < self._timer_for:
            self._arm()

    def catch_up(self) -> None:
        """Send what is already due, now, from whichever greenlet calls (cheap when nothing is).

        Request handlers call it between their steps: the hub runs every greenlet that became
        ready before it gets back to the loop's timer, so a burst of arriving requests (each
        ~1-3 ms of parsing, tokenizing and planning here) would otherwise hold every due event
        back for the whole burst. This bounds that wait to about one handler step.
        """
        heap = self._heap
        if not heap or self.sweeping:
            return
        now = self.clock()
        # Within the coalescing window of the last sweep, what is due waits for the timer:
        # the bound stays the window plus one handler step.
        if heap[0][0] <= now + EARLY_OK_S and now >= self._last_sweep + self.window:
            self.sweep()
            if heap and heap[0][0] < self._timer_for:
                self._arm()

    def _arm(self) -> None:
        if not self._heap:
            return
        target = max(self._heap[0][0], self._last_sweep + self.window)
        if self._precise is not None:
            self._timer_for = target
            self._precise.arm(target)
            return
        if self._timer is not None:
            self._timer.stop()
        self._timer_for = target
        early = WAKE_EARLY_S if len(self._heap) <= PRECISE_MAX_ENTRIES else 0.0
        delay = target - early - self.clock()
        self._hub_loop.update_now()  # the timer counts from now, not from a stale loop time
        self._timer = self._hub_loop.timer(max(0.0, delay))
        self._timer.start(self._fire)

    def _fire_precise(self) -> None:
        self._timer_for = float("inf")
        try:
            self.sweep()
        finally:
            self._arm()

    def _fire(self) -> None:
        self._timer = None
        target = self._timer_for
        self._timer_for = float("inf")
        wait = target - self.clock()
        if wait > 2 * WAKE_EARLY_S or (wait > EARLY_OK_S and len(self._heap) > PRECISE_MAX_ENTRIES):
            # Woken far too early (the loop's cached time was stale): wait again, unblocked.
            self._timer_for = target
            early = WAKE_EARLY_S if len(self._heap) <= PRECISE_MAX_ENTRIES else 0.0
            self._hub_loop.update_now()
            self._timer = self._hub_loop.timer(max(0.0, wait - early))
            self._timer.start(self._fire)
            return
        if wait > EARLY_OK_S:
            # The timer woke us up to ~1 ms early (see WAKE_EARLY_S); a blocking sleep of the
            # rest is precise to tens of microseconds and burns no CPU.
            time.sleep(wait)
        try:
            self.sweep()
        finally:
            self._arm()

    def sweep(self) -> None:
        """Fire every entry that is due now (each once: the next event of a stream that is
        still overdue goes out in its own write, straight after)."""
        self.sweeping = True
        try:
            self._sweep()
        finally:
            self.sweeping = False
            self.flush_outbox()

    def flush_outbox(self) -> None:
        """Send every write the sinks held during the sweep, back to back."""
        box = self.outbox
        if not box:
            return
        self.outbox = []
        for sink in box:
            try:
                sink.flush_held()
            except Exception:
                log.exception("stream loop write failed")

    def _sweep(self) -> None:
        heap = self._heap
        clock = self.clock
        now = clock()
        self.sweeps += 1
        horizon = now + EARLY_OK_S
        pop, push, seq = heapq.heappop, heapq.heappush, self._seq
        budget = MAX_FIRES_PER_SWEEP
        while heap and heap[0][0] <= horizon and budget:
            deadline, _, entry = pop(heap)
            budget -= 1
            self.fired += 1
            try:
                nxt = entry.fire(deadline, now)
            except Exception:
                log.exception("stream loop entry failed")
                abort = getattr(entry, "abort", None)
                if abort is not None:
                    abort()
                continue
            if len(self.outbox) >= OUTBOX_MAX:
                self.flush_outbox()
            if nxt is not None:
                push(heap, (nxt, next(seq), entry))
                if nxt > horizon:
                    continue
                now = clock()
                horizon = now + EARLY_OK_S
        self._last_sweep = now
        if self.coalesce_s > self.min_sweep_s and now - self._rate_t0 >= RATE_PERIOD_S:
            self._retune(now)

    def _retune(self, now: float) -> None:
        """Re-measure the event rate and set the wait between sweeps from it."""
        rate = (self.fired - self._rate_fired0) / (now - self._rate_t0)
        # Half-weight smoothing: one quiet (or busy) period moves it, not one sweep.
        self.rate = rate if now - self._rate_t0 > 10 * RATE_PERIOD_S else 0.5 * (self.rate + rate)
        self._rate_t0, self._rate_fired0 = now, self.fired
        self.window = min(
            self.coalesce_s,
            max(self.min_sweep_s, self.coalesce_s * self.rate / COALESCE_FULL_RATE),
        )


class Stream:
    """One streamed response: the wire format's events, written as their tokens come due.

    `events` yields (step, bytes) in order; several items may share a step (e.g. a finish
    chunk, the usage chunk and `[DONE]` with the last token). `step_end(step)` is how many
    tokens of the reply exist once step `step` is out. `cut_step`: a mid-stream fault strikes
    instead of sending that step (`fault` is "drop" or "stream-error", `error_bytes` the
    latter's event).
    """

    __slots__ = (
        "_events",
        "_next",
        "cut_step",
        "done",
        "error_bytes",
        "events_sent",
        "fault",
        "log",
        "loop",
        "owner",
        "produced",
        "sink",
        "start",
        "step_end",
        "steps_sent",
        "tokens_sent",
        "waiting_for",
    )

    def __init__(
        self,
        loop: StreamLoop,
        events: Iterator[tuple[int, bytes]],
        step_end: Callable[[int], int],
        sink: Sink,
        owner: Owner,
        start: float,
        log: array | None = None,
        cut_step: int | None = None,
        fault: str | None = None,
        error_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self.loop = loop
        self._events = events
        self._next: tuple[int, bytes] | None = next(events, None)
        self.step_end = step_end
        self.sink = sink
        self.owner = owner
        self.start = start
        self.log = log
        self.cut_step = cut_step
        self.fault = fault
        self.error_bytes = error_bytes
        self.produced = 0
        self.events_sent = 0  # SSE events written (an error event numbers itself after them)
        self.tokens_sent = 0
        self.steps_sent = 0
        self.done = False
        self.waiting_for: Clocked | None = None  # the pacer to resume after backpressure

    def next_step(self) -> int | None:
        """The step the next event belongs to (None when nothing is left)."""
        return None if self._next is None else self._next[0]

    def emit(self, n_tokens: int, now: float, planned: float | None = None) -> bool:
        """`n_tokens` more tokens exist: write every event they complete, in one send.

        Returns False once the stream is over (finished, failed or gone).
        """
        if self.done:
            return False
        self.produced += n_tokens
        nxt = self._next
        if nxt is None:
            return True
        step_end, produced, last = self.step_end, self.produced, -1
        step = nxt[0]
        # The last step whose tokens all exist (steps are consecutive integers).
        while step_end(step) <= produced:
            last = step
            if step_end(step + 1) <= step_end(step):
                last = 1 << 60  # the reply's last step: everything after it goes too
                break
            step += 1
        if last < 0:
            return True
        return self.send_through(last, now, planned)

    def send_through(self, last: int, now: float, planned: float | None = None) -> bool:
        """Write every event up to step `last` (inclusive), in one send.

        What a pacer that knows its steps calls (api mode); `emit` maps tokens to steps first.
        Returns False once the stream is over, or while its socket is full.
        """
        if self.done:
            return False
        nxt = self._next
        if nxt is None or nxt[0] > last:
            return True
        cut = self.cut_step
        step = nxt[0]
        if cut is not None and step >= cut:
            return self._fault([], now, planned)
        events = self._events
        data = nxt[1]
        nxt = next(events, None)
        if nxt is not None and nxt[0] <= last:  # several events go together
            parts = [data]
            while nxt is not None and nxt[0] <= last:
                step = nxt[0]
                if cut is not None and step >= cut:
                    self._next = nxt
                    return self._fault(parts, now, planned)
                parts.append(nxt[1])
                nxt = next(events, None)
            data = b"".join(parts)
        self._next = nxt
        done = nxt is None
        tokens = self.step_end(step)
        if tokens > self.produced:
            self.produced = tokens
        tokens -= self.tokens_sent
        result = self.sink.send(self, data, done)
        if self.fault == "stream-error":  # only its error event needs the count
            self.events_sent += data.count(b"\n\n")
        if result == GONE:
            self._end("client_disconnect")
            return False
        loop = self.loop
        if planned is not None:  # the real clock: a long sweep's `now` is older
            loop.lateness.add(loop.clock() - planned, self.steps_sent == 0)
        if self.steps_sent == 0:
            self.owner.started(now)
        self.steps_sent += 1
        self.tokens_sent += tokens
        log = self.log
        if log is not None and len(log) < loop.events.max_values:
            start = self.start
            log.extend((step, tokens, (now if planned is None else planned) - start, now - start))
        if done:
            self._end("ok")
            return False
        return result == SENT

    def finish(self) -> None:
        """The reply is complete: write whatever is left now."""
        if not self.done:
            self.emit(1 << 60, self.loop.clock())

    def fail(self, kind: str) -> None:
        """End the stream now, without its remaining events."""
        if not self.done:
            self._end(kind)

    def abort(self) -> None:
        """End on an unexpected error (the loop calls it when fire raised): with the API's
        error event, never a stream that just stops."""
        if self.done:
            return
        if self.error_bytes is not None:
            try:
                self.sink.send(self, self.error_bytes(self._sent_count(0, 0)), True)
            except Exception:  # the socket may be what failed
                pass
        self.fail("server_error")

    def _sent_count(self, more_events: int, more_steps: int) -> int:
        """What the error event is told was sent before it: the SSE events (counted only on a
        stream-error stream), or the steps written when that is more. Gemini's JSON-array form
        has no SSE events at all and must know whether its array is open."""
        return max(self.events_sent + more_events, self.steps_sent + more_steps)

    def _fault(self, parts: list[bytes], now: float, planned: float | None) -> bool:
        if self.fault == "stream-error":
            sent = self._sent_count(sum(p.count(b"\n\n") for p in parts), len(parts))
            if self.steps_sent == 0 and parts:
                self.owner.started(now)
            parts.append(self.error_bytes(sent) if self.error_bytes is not None else b"")
            self._next = None  # the error event ends the stream
            self.sink.send(self, b"".join(parts), True)
            self._end("fault_stream_error")
        else:
            if parts:
                self.sink.send(self, b"".join(parts), False)
            self._end("fault_drop")
        return False

    def writable(self) -> None:
        """The sink flushed what a full socket held back: carry on from now."""
        pacer = self.waiting_for
        self.waiting_for = None
        if pacer is not None and not self.done:
            self.loop.add(pacer, self.loop.clock())

    def _end(self, kind: str) -> None:
        if self.done:
            return
        self.done = True
        self._next = None
        self._events = iter(())
        try:
            self.sink.close(self, kind)
        finally:
            self.owner.ended(kind, self.tokens_sent)


class TimedStream:
    """api mode's pacer for one stream: step i is due when its last token is (engine.timing).

    `token_due(i)` gives token i's offset from the request's arrival, in increasing i (the
    timing model draws each gap as it is asked for, so a load factor applies when a gap starts).
    Steps planned for the same instant (the `instant` profile) go out in one write.
    """

    __slots__ = ("_one", "_steps", "_total", "stream", "token_due")

    def __init__(self, stream: Stream, token_due: Callable[[int], float], total: int) -> None:
        self.stream = stream
        self.token_due = token_due
        self._total = total  # tokens of the longest choice
        # One token per step (OpenAI's shape): step i is token i, no chunk arithmetic.
        self._one = stream.step_end(0) == min(1, total) and stream.step_end(1) == min(2, total)
        self._steps = stream.step_end

    def first_deadline(self) -> float:
        """When this entry first fires (absolute monotonic seconds)."""
        step = self.stream.next_step()
        due = None if step is None else self._due(step)
        return self.stream.loop.clock() if due is None else due

    def _due(self, step: int) -> float | None:
        """When step `step` is due (absolute), or None when the reply has no such step."""
        if self._one:
            if step >= self._total and step > 0:
                return None
            return self.stream.start + self.token_due(step)
        end = self._steps(step)
        if step > 0 and end <= self._steps(step - 1):
            return None
        return self.stream.start + self.token_due(max(0, end - 1))

    def fire(self, deadline: float, now: float) -> float | None:
        """Send what is due; return the next deadline, or None when done or paused."""
        s = self.stream
        nxt = s._next
        if nxt is None:
            s.finish()
            return None
        step = nxt[0]
        if self._one and step + 1 < self._total:
            # The common case, kept short: one token per step, more to come.
            nd = s.start + self.token_due(step + 1)
            if nd > deadline:
                if s.send_through(step, now, deadline):
                    return nd
                if not s.done:
                    s.waiting_for = self
                return None
        due = self._due
        nd = due(step + 1)
        while nd is not None and nd <= deadline:  # planned for this same instant
            step += 1
            nd = due(step + 1)
        if nd is None:
            step = 1 << 60  # the last content step: the closing events go with it
        if not s.send_through(step, now, deadline):
            if not s.done:  # socket full: resume when the sink has flushed it
                s.waiting_for = self
            return None
        return nd if nd is not None else (s.finish() or None)

    def abort(self) -> None:
        """End on an unexpected error (the loop calls it when fire raised)."""
        self.stream.abort()


class Wake:
    """A non-streaming reply: wakes its handler when the last token is due.

    With a load factor the gaps are drawn as the reply progresses, so the entry steps through
    the reply every `stride` tokens to let the load at each moment count.
    """

    __slots__ = ("callback", "last", "start", "stride", "token", "token_due")

    def __init__(
        self,
        start: float,
        last_token: int,
        token_due: Callable[[int], float],
        callback: Callable[[], None],
        stride: int = 16,
    ) -> None:
        self.start = start
        self.last = last_token
        self.token_due = token_due
        self.callback = callback
        self.stride = stride
        self.token = 0

    def first_deadline(self) -> float:
        """When this entry first fires (absolute monotonic seconds)."""
        self.token = min(self.stride - 1, self.last)
        return self.start + self.token_due(self.token)

    def fire(self, deadline: float, now: float) -> float | None:
        """Send what is due; return the next deadline, or None when done or paused."""
        if self.token >= self.last:
            self.callback()
            return None
        self.token = min(self.token + self.stride, self.last)
        return self.start + self.token_due(self.token)

    def abort(self) -> None:
        """End on an unexpected error (the loop calls it when fire raised)."""
        self.callback()


class QueueSink:
    """A sink for servers that give no socket (e.g. a WSGI test client): bytes go to a queue
    that the response's own iterator drains, in the handler's greenlet."""

    def __init__(self) -> None:
        from gevent.queue import SimpleQueue

        self.queue: Any = SimpleQueue()

    def send(self, stream: Stream, data: bytes, last: bool) -> int:
        """Queue the bytes for the response's iterator."""
        self.queue.put(data)
        return SENT

    def close(self, stream: Stream, kind: str) -> None:
        """End the response's iterator."""
        self.queue.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self.queue.get()
            if data is None:
                return
            yield data
