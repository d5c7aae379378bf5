"""A serving engine's capacity: a fixed number of requests generate at once, the rest queue.

The wait in the queue adds to a request's TTFT, a full queue refuses requests at once, and
with a load factor every running stream slows down as others join:
    tbt × (1 + load_factor × running / max_concurrency)
Pools are per worker process: with --workers N each process takes its share of the limits.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import gevent.event


@dataclass(frozen=True)
class PoolConfig:
    """One pool's limits as configured for the whole server (all workers together)."""

    max_concurrency: int | None
    queue_limit: int | None = None
    load_factor: float = 0.0


class QueueFull(Exception):
    """The pool's queue is at its limit: `CapacityPool.reserve` refuses the request at once."""


class Slot:
    """One request's place in a pool: running, or waiting for a slot."""

    __slots__ = ("_event", "_released", "pool", "running", "waited_s")

    def __init__(self, pool: CapacityPool | None) -> None:
        self.pool = pool
        self.running = pool is None
        self.waited_s = 0.0
        self._event: gevent.event.Event | None = None
        self._released = False

    def wait(self) -> float:
        """Block until this request may generate; returns how long it queued (seconds)."""
        if self.running or self._event is None:
            return self.waited_s
        start = time.monotonic()
        self._event.wait()
        self.waited_s = time.monotonic() - start
        return self.waited_s

    def release(self) -> None:
        """Give up the slot, or the place in the queue; a running slot passes to the first waiter.

        Only the first call counts, so every way a request can end may call it.
        """
        if self._released or self.pool is None:
            return
        self._released = True
        self.pool._release(self)


class CapacityPool:
    """One pool in one worker: `limit` requests generate at once, the rest wait in FIFO order.

    `queue_limit` bounds the waiters (None: unbounded, 0: none may wait); `load_factor` slows
    every running stream as the pool fills (`tbt_factor`).
    """

    def __init__(self, limit: int, queue_limit: int | None, load_factor: float) -> None:
        self.limit = limit
        self.queue_limit = queue_limit
        self.load_factor = load_factor
        self.running = 0
        self._waiters: deque[Slot] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    def reserve(self) -> Slot:
        """A slot now, or a place in the queue; QueueFull when the queue is at its limit."""
        slot = Slot(self)
        if self.running < self.limit and not self._waiters:
            self.running += 1
            slot.running = True
            return slot
        if self.queue_limit is not None and len(self._waiters) >= self.queue_limit:
            raise QueueFull
        slot._event = gevent.event.Event()
        self._waiters.append(slot)
        return slot

    def _release(self, slot: Slot) -> None:
        if not slot.running:  # gave up while queued (client gone)
            try:
                self._waiters.remove(slot)
            except ValueError:
                pass
            return
        if self._waiters:  # hand the slot over: running stays the same
            nxt = self._waiters.popleft()
            nxt.running = True
            assert nxt._event is not None
            nxt._event.set()
        else:
            self.running -= 1

    def tbt_factor(self) -> float:
        """What the time between tokens is multiplied by now: 1 + load_factor × running / limit."""
        return 1.0 + self.load_factor * self.running / self.limit


class Capacity:
    """The pools of one worker process: a global one and one per model that sets its own.

    `pool_config(model)` says which pool a model uses: (None, config) for the global pool, or
    (model, config) for a model with its own max_concurrency.
    """

    def __init__(
        self, workers: int, pool_config: Callable[[str], tuple[str | None, PoolConfig]]
    ) -> None:
        self.workers = workers
        self.pool_config = pool_config
        self._pools: dict[str | None, CapacityPool | None] = {}

    def _share(self, value: int | None) -> int | None:
        if value is None:
            return None
        return max(1, math.ceil(value / self.workers))

    def pool_for(self, model: str) -> CapacityPool | None:
        """The pool `model`'s requests take a slot in, made on first use; None: no limit.

        Each limit is this worker's share of the configured one (rounded up, at least 1; a queue
        limit of 0 stays 0). Up to 10,000 model names are remembered; past that, each call looks
        the pool up again (the pool itself is still shared).
        """
        if model in self._pools:
            return self._pools[model]
        key, s = self.pool_config(model)
        if key not in self._pools:
            limit = self._share(s.max_concurrency)
            if limit is None:
                self._pools[key] = None
            else:
                queue = None if s.queue_limit is None else self._share(s.queue_limit) or 0
                if s.queue_limit == 0:
                    queue = 0
                self._pools[key] = CapacityPool(limit, queue, s.load_factor)
        pool = self._pools[key]
        if len(self._pools) < 10_000:
            self._pools[model] = pool
        return pool
