"""How the server keeps heavy request steps off the event loop (llmsim/server/offload.py)."""

from __future__ import annotations

import os
import sys
import time

import gevent

from llmsim.server import offload


def _busy_pieces(n: int, each_s: float):
    for i in range(n):
        end = time.perf_counter() + each_s
        while time.perf_counter() < end:
            pass
        yield b"%d," % i


def test_gather_lets_the_loop_run_between_slices_and_keeps_the_order():
    turns: list[float] = []
    caught_up: list[int] = []

    def other() -> None:  # another greenlet: it runs only when the gatherer yields
        while True:
            turns.append(time.perf_counter())
            gevent.sleep(0)

    g = gevent.spawn(other)
    try:
        gevent.sleep(0)
        before = len(turns)
        # 40 pieces of 1 ms of Python each: without yielding, `other` would not run at all.
        pieces = offload.gather(_busy_pieces(40, 0.001), lambda: caught_up.append(1))
    finally:
        g.kill()
    assert b"".join(pieces) == b"".join(b"%d," % i for i in range(40))
    # At most SLICE_S (2 ms) between turns: 40 ms of work yields at least ~13 times; far
    # fewer allows for a loaded machine stretching the pieces.
    assert len(turns) - before >= 5
    assert len(caught_up) >= 5


def test_call_runs_heavy_work_on_a_thread_and_reraises_its_errors():
    import threading

    main = threading.get_ident()
    assert offload.call(False, threading.get_ident) == main
    assert offload.call(True, threading.get_ident) != main
    try:
        offload.call(True, int, "x")
    except ValueError:
        pass
    else:
        raise AssertionError("the thread's ValueError was not re-raised")


def test_worker_threads_give_the_loop_precedence_for_the_cpu():
    if not sys.platform.startswith("linux"):
        return  # nice is per process elsewhere: left alone
    loop_nice = os.getpriority(os.PRIO_PROCESS, 0)
    thread_nice = offload.call(True, os.getpriority, os.PRIO_PROCESS, 0)
    assert thread_nice == min(loop_nice + offload.THREAD_NICE, 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == loop_nice, "the loop's own thread is unchanged"
