"""The SSE writer: sends pre-rendered events when they are due.

Deadlines, not sleeps: each event is due at a fixed offset from the request's arrival, so time
lost to a busy loop is made up instead of accumulating. Events already overdue are written
together in one send, which keeps a loaded server on schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from time import monotonic

import gevent


def paced(
    start: float,
    events: Iterable[tuple[int, bytes]],
    due_s: Callable[[int], float],
    clock: Callable[[], float] = monotonic,
    sleep: Callable[[float], None] = gevent.sleep,
) -> Iterator[bytes]:
    """Yield the bytes of `events` (step, bytes), each no earlier than start + due_s(step)."""
    pending: list[bytes] = []
    for step, data in events:
        delay = start + due_s(step) - clock()
        if delay > 0:
            if pending:
                yield b"".join(pending)
                pending.clear()
                delay = start + due_s(step) - clock()
            if delay > 0:
                sleep(delay)
        pending.append(data)
    if pending:
        yield b"".join(pending)
