"""Keep heavy request steps from stalling the worker's event loop, so every stream stays on time.

Two tools, for two kinds of work:

- `call(heavy, fn)`: on a thread of gevent's threadpool, for work that releases the GIL.
  Tokenizing a pathological prompt is seconds inside tiktoken's core, which runs without the
  interpreter (`tokens.exact_len` keeps the tokens in one buffer, so the thread holds it for
  O(1) Python objects). Small requests stay on the loop: the hand-off costs about 50-100 µs.
- `gather(pieces)`: on the loop itself, in slices, for work that is Python. A thread holding
  the GIL for pure-Python work starves the loop by convoy: the loop gives the GIL up at every
  send() and epoll, and each time waits up to the switch interval to get it back, so with 100
  streams the loop fell 100-190 ms behind while a thread rendered an embeddings batch and
  /health took 2-5 s (benchmarks/hardening_attacks.py --streams 100). On the loop, due events
  go out and other greenlets run between pieces, every `SLICE_S`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from llmsim.engine.request import EngineRequest, Reply

if TYPE_CHECKING:
    from gevent.threadpool import ThreadPool

T = TypeVar("T")

# Parse on a thread beyond this: a 64 KiB run of one letter took 64 ms of tiktoken's time.
HEAVY_BODY_BYTES = 16 * 1024
HEAVY_PLAN_TOKENS = 8192  # plan on a thread when a reply may have more tokens than this
# Niceness a worker thread adds to its own: when the machine is short of CPU, the loop (the
# streams) comes before a request's heavy step. Linux's nice is per thread; elsewhere it is
# per process, and the whole worker would be slowed, so it is left alone there.
THREAD_NICE = 10 if sys.platform.startswith("linux") else 0
SLICE_S = 0.002  # the most Python work `gather` does between two turns of the loop
THREADS = 4  # more would only share the same two cores; the loop must keep one turn in five


def _pool() -> ThreadPool:
    import gevent

    hub = gevent.get_hub()
    pool = hub.threadpool
    if pool.maxsize < THREADS:
        pool.maxsize = THREADS
    return pool


def call(heavy: bool, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), on a worker thread when `heavy` (exceptions re-raised here), else inline."""
    if not heavy:
        return fn(*args)
    # Keep the loop's turns short while a thread holds the GIL for pure-Python work.
    if sys.getswitchinterval() > 0.002:
        sys.setswitchinterval(0.002)
    loop_nice = os.getpriority(os.PRIO_PROCESS, 0) if THREAD_NICE else 0
    ok, value = _pool().apply(_captured, (fn, args, loop_nice))
    if not ok:
        raise value
    return value


def _captured(fn: Callable[..., Any], args: tuple[Any, ...], loop_nice: int) -> tuple[bool, Any]:
    # An exception raised on the thread would be printed by gevent's threadpool as a
    # traceback (a 400 is not news); carry it back to be raised where it is handled.
    if THREAD_NICE:
        nice = min(loop_nice + THREAD_NICE, 19)
        try:
            if os.getpriority(os.PRIO_PROCESS, 0) < nice:  # this thread only, on Linux
                os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError:
            pass
    try:
        return True, fn(*args)
    except Exception as exc:
        return False, exc


def heavy_plan(req: EngineRequest, schema_chars: float = 0.0) -> bool:
    """Whether planning `req` may stall other streams: the engine writes a schema-shaped reply
    whole when it plans it (plain text is made lazily, as it becomes due)."""
    return schema_chars > HEAVY_PLAN_TOKENS


def heavy_render(reply: Reply) -> bool:
    """Whether rendering `reply` whole as JSON may stall other streams."""
    return reply.completion_tokens > HEAVY_PLAN_TOKENS


def gather(pieces: Iterable[bytes], catch_up: Callable[[], None] | None = None) -> list[bytes]:
    """The pieces of a body made by Python work, made on the loop in slices of `SLICE_S`.

    Between slices, events that fell due are sent (`catch_up`, the stream loop's) and the hub
    runs whatever else is ready (other requests, /health) before this greenlet goes on.
    """
    import gevent

    out: list[bytes] = []
    clock = time.perf_counter
    until = clock() + SLICE_S
    for piece in pieces:
        out.append(piece)
        if clock() >= until:
            if catch_up is not None:
                catch_up()
            gevent.sleep(0)
            until = clock() + SLICE_S
    return out
