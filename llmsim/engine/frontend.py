"""vLLM's API server process taking requests in, as bookkeeping on an injected clock.

Before a request reaches the engine's waiting queue, vLLM's HTTP front end (one asyncio process)
takes it in: HTTP parsing, the chat template, tokenization. That work is serial (one CPU, its
event loop's ready queue in FIFO order), and a handler that has done it hands its request to the
engine in a later callback, queued behind the work of every request that had arrived by then.
So request i's intake ends at e_i = max(arrival_i, e_(i-1)) + cost_i, and it reaches the engine
at e_k, k being the last request to arrive before e_i: a burst of N requests reaches the engine
together, after N costs, and the engine's first step waits for the burst's end. That is what
vLLM v0.6.0's published per-request times show (docs/engine.md, "reference"): at N = 20 every
first token came within 8 ms of the others, at N = 80 none before 0.69 s. A request alone (or
arriving once the front end is idle) reaches the engine after its own cost.

The order of a hand-over (`order`): "fifo" (the default) hands the requests of one hand-over to
the engine in the order they arrived; "random" in a seeded uniform random order. vLLM v0.6.0's
API server kept the send order of bursts up to 40 requests but not of larger ones (its published
first tokens at N >= 80 go first to a block from the burst's middle, then from request 0 on:
docs/engine.md, "The order of a burst"); "random" is a stand-in for that, more disordered than
vLLM was, not a model of its mechanism. Only requests handed over at the same instant are
reordered: a request alone, or Poisson arrivals whose intakes do not overlap, keep their order.

Nothing here sleeps or runs per request: two queues of (time, job) and the end time of the last
arrival's intake.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

# The hand-over orders `FrontEnd` knows (the --frontend-handover-order flag's choices).
HANDOVER_ORDERS = ("fifo", "random")


class FrontEnd:
    """The intake stage: `add` a job with its prompt's length, `advance` to hand over the jobs
    due by then (each with its hand-over time), `next_done` to know when to look again.
    """

    __slots__ = ("_last_end", "_open", "_ready", "_rng", "order", "per_request_s", "per_token_s")

    def __init__(
        self,
        per_request_s: float = 0.0,
        per_token_s: float = 0.0,
        order: str = "fifo",
        rng: random.Random | None = None,
    ) -> None:
        if order not in HANDOVER_ORDERS:
            raise ValueError(f"hand-over order {order!r}: one of {', '.join(HANDOVER_ORDERS)}")
        self.per_request_s = max(0.0, per_request_s)
        self.per_token_s = max(0.0, per_token_s)
        self.order = order
        # Its own generator (the caller seeds it): the order draws nothing from anyone else's.
        self._rng = rng or random.Random(0)
        # Intake done or under way, hand-over not yet fixed: (end of its intake, job).
        self._open: deque[tuple[float, Any]] = deque()
        # Hand-over fixed (a later arrival queued behind it): (hand-over time, job).
        self._ready: deque[tuple[float, Any]] = deque()
        self._last_end = float("-inf")  # end of the latest arrival's intake

    @property
    def enabled(self) -> bool:
        """Whether intake takes any time; when not, a replica queues its requests at once."""
        return self.per_request_s > 0 or self.per_token_s > 0

    def __len__(self) -> int:
        return len(self._open) + len(self._ready)

    def cost(self, prompt_tokens: int) -> float:
        """CPU seconds the front end spends taking in a request of `prompt_tokens` tokens."""
        return self.per_request_s + self.per_token_s * prompt_tokens

    def _seal(self, before: float) -> None:
        # Jobs whose intake ended before `before` have queued their hand-over already: behind
        # the intake of every arrival until then, whose last ends at `_last_end`.
        while self._open and self._open[0][0] < before:
            self._ready.append((self._last_end, self._open.popleft()[1]))

    def add(
        self, job: Any, prompt_tokens: int, now: float, done: Callable[[Any, float], None]
    ) -> None:
        """A job arrives at `now`; jobs due before it are passed to `done` first."""
        self.advance(now, done)
        self._seal(now)
        end = max(now, self._last_end) + self.cost(prompt_tokens)
        self._last_end = end
        self._open.append((end, job))

    def advance(self, now: float, done: Callable[[Any, float], None]) -> None:
        """Call `done(job, t)` for every job handed over by `now`, `t` its time: in arrival
        order, or with `order` "random" each hand-over's jobs (those of one time) shuffled."""
        # Every arrival until `now` is known: an open job whose intake has ended has its
        # hand-over behind the last of them.
        while self._open and self._open[0][0] <= now:
            self._ready.append((self._last_end, self._open.popleft()[1]))
        ready = self._ready
        if self.order == "fifo":
            while ready and ready[0][0] <= now:
                t, job = ready.popleft()
                done(job, t)
            return
        while ready and ready[0][0] <= now:
            # One hand-over: every job of the same time is in `_ready` by now (each was sealed
            # with the `_last_end` of its time, and that time has passed), so none is left out.
            t = ready[0][0]
            batch = []
            while ready and ready[0][0] == t:
                batch.append(ready.popleft()[1])
            if len(batch) > 1:
                self._rng.shuffle(batch)
            for job in batch:
                done(job, t)

    def next_done(self) -> float | None:
        """When the next job is handed over if none arrives meanwhile; None when empty."""
        if self._ready:
            return self._ready[0][0]
        if self._open:
            return self._last_end
        return None

    def jobs(self) -> list[Any]:
        """The jobs it holds, in arrival order."""
        return [job for _, job in self._ready] + [job for _, job in self._open]
