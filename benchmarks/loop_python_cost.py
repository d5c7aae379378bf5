"""The stream loop's own Python per event: no sockets, no syscalls, no wake-ups.

    python benchmarks/loop_python_cost.py [STREAMS] [TOKENS]     # default 200 x 500

N paced chat streams (exact timing: TTFT 200 ms, 20 ms per token) are planned by the real
engine and rendered by the real OpenAI chat renderer into a sink that discards the bytes; a
fake clock advances 0.25 ms per sweep (the loop's MIN_SWEEP_S) and the loop's sweep runs until
every stream is done. What it prints is the CPU per event of the loop itself (the pacer, the
event iterator, the stream's bookkeeping, the event log and lateness), the part that
benchmarks/loop_speed.py's server figure adds above the sends and wake-ups.
"""

from __future__ import annotations

import gc
import sys
import time

from llmsim.api.openai_chat import OpenAIChat
from llmsim.api.wire import RenderContext, api_chunk_tokens
from llmsim.engine.loop import SENT, Stream, StreamLoop, TimedStream
from llmsim.engine.timing import TokenClock, TokenSchedule
from llmsim.server.state import ServerState
from llmsim.settings import Settings


class _Sink:
    """Takes every event at once and keeps nothing."""

    events = 0

    def send(self, stream: object, data: bytes, last: bool) -> int:
        _Sink.events += 1
        return SENT

    def close(self, stream: object, kind: str) -> None:
        pass


class _Owner:
    def started(self, now: float) -> None:
        pass

    def ended(self, kind: str, tokens: int) -> None:
        pass


def main(streams: int = 200, tokens: int = 500) -> None:
    """Plan `streams` streams of `tokens` tokens, sweep the loop on the fake clock until all
    are done with the GC off, and print the loop's CPU per event (us)."""
    state = ServerState.create(Settings(ttft_ms=200, ttft_stddev_ms=0, tbt_ms=20, tbt_stddev_ms=0))
    engine, fmt = state.engine, OpenAIChat()
    now = [1000.0]
    loop = StreamLoop(clock=lambda: now[0], log_size=1000)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": tokens, "ignore_eos": True, "stream": True}  # fmt: skip
    for i in range(streams):
        req, opts = fmt.parse(body)
        reply = engine.plan(req, api_chunk_tokens(fmt.name))
        start = now[0] + i * 0.02 / streams  # arrivals spread over one gap, as at steady state
        clock = TokenClock(engine.timing_for(req.model), reply.tbt_s, engine.rng)
        schedule = TokenSchedule(reply.first_s, clock, None)
        log = loop.events.open(f"r{i}", {"request_id": f"r{i}"})
        events = iter(fmt.stream_events(reply, opts, RenderContext("fp")))
        stream = Stream(loop, events, reply.chunking.end, _Sink(), _Owner(), start, log)
        pacer = TimedStream(stream, schedule.due, reply.chunking.total)
        loop.add(pacer, pacer.first_deadline())
    gc.disable()  # as in a serving worker (llmsim/gcpolicy.py)
    t0 = time.process_time()
    while len(loop):
        now[0] += 0.00025
        loop.sweep()
    cpu = time.process_time() - t0
    per_event = 1e6 * cpu / _Sink.events
    print(f"{streams} streams x {tokens} tokens: {_Sink.events} events in {loop.sweeps} sweeps, "
          f"{per_event:.2f} us of CPU per event (the loop's Python alone)")  # fmt: skip


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
