"""When each token is due, once a request may generate.

Without a load factor, token i is due at first + i × tbt: fixed deadlines. With one, each gap
is tbt × (1 + load_factor × running / max_concurrency) at the moment it starts, so a stream
slows down when others join and speeds up when they leave.
"""

from __future__ import annotations

from llmsim.engine.capacity import CapacityPool


class Pacer:
    __slots__ = ("_last", "_last_step", "first_s", "pool", "tbt_s")

    def __init__(self, first_s: float, tbt_s: float, pool: CapacityPool | None) -> None:
        self.first_s = first_s  # offset of token 0 from the request's arrival
        self.tbt_s = tbt_s
        self.pool = pool if pool is not None and pool.load_factor > 0 else None
        self._last_step = 0
        self._last = first_s

    def due(self, step: int) -> float:
        if self.pool is None:
            return self.first_s + step * self.tbt_s
        # Callers ask for steps in non-decreasing order (the SSE writer may ask twice).
        while self._last_step < step:
            self._last += self.tbt_s * self.pool.tbt_factor()
            self._last_step += 1
        return self._last
