"""vLLM's API server process as a CPU that every request in it shares, on an injected clock.

Before a request reaches the engine's waiting queue, vLLM's HTTP front end (one asyncio process:
HTTP parsing, the chat template, tokenization) takes it in. Its handlers interleave at their
await points, so a burst of N requests is served like one processor shared by all of them
(egalitarian processor sharing): with equal costs every request of a burst reaches the engine
at about N times the cost of one, and the engine's first step waits for the burst's end. That is
what vLLM v0.6.0's published per-request times show (docs/engine.md, "reference").

Nothing here sleeps or runs per request: it is the textbook virtual-time bookkeeping of a
processor-sharing queue. Virtual time `v` is the work each job in the system has received; it
grows at 1/n per second with n jobs in it, and a job of cost c that arrives at virtual time v0
is done when v reaches v0 + c. A heap of those finish marks gives each completion in order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class FrontEnd:
    """A processor-sharing intake stage: `add` a job with its cost, `advance` to collect
    the ones done by then (each with the time it was done), `next_done` to know when to look.
    """

    __slots__ = ("_heap", "_order", "_t", "_v", "per_request_s", "per_token_s")

    def __init__(self, per_request_s: float = 0.0, per_token_s: float = 0.0) -> None:
        self.per_request_s = max(0.0, per_request_s)
        self.per_token_s = max(0.0, per_token_s)
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()
        self._v = 0.0  # virtual time
        self._t = 0.0  # real time `_v` is for

    @property
    def enabled(self) -> bool:
        return self.per_request_s > 0 or self.per_token_s > 0

    def __len__(self) -> int:
        return len(self._heap)

    def cost(self, prompt_tokens: int) -> float:
        """CPU seconds the front end spends taking in a request of `prompt_tokens` tokens."""
        return self.per_request_s + self.per_token_s * prompt_tokens

    def add(
        self, job: Any, prompt_tokens: int, now: float, done: Callable[[Any, float], None]
    ) -> None:
        """A job arrives at `now`; jobs done before it are passed to `done` first."""
        self.advance(now, done)
        if not self._heap:
            self._t = now
        heapq.heappush(self._heap, (self._v + self.cost(prompt_tokens), next(self._order), job))

    def advance(self, now: float, done: Callable[[Any, float], None]) -> None:
        """Call `done(job, t)` for every job done by `now`, in order, `t` when it was done."""
        heap = self._heap
        while heap:
            n = len(heap)
            finish_v = heap[0][0]
            t = self._t + (finish_v - self._v) * n
            if t > now:
                self._v += (now - self._t) / n
                self._t = now
                return
            self._v, self._t = finish_v, t
            done(heapq.heappop(heap)[2], t)
        self._t = now

    def next_done(self) -> float | None:
        """When the next job will be done if none arrives meanwhile; None when empty."""
        if not self._heap:
            return None
        return self._t + (self._heap[0][0] - self._v) * len(self._heap)

    def jobs(self) -> list[Any]:
        """The jobs it holds, in no particular order."""
        return [job for _, _, job in self._heap]
