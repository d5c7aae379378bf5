"""Engine mode's replicas in a worker process, stepped on the stream loop's clock.

Each replica (llmsim.engine.scheduler.Replica) is one entry of the worker's stream loop
(llmsim.engine.loop): its deadline is the end of the step in flight. When it is due, the step's
tokens go to every stream in the batch at once (`Stream.emit`), and the next step is scheduled
from the end of this one, so a late wake-up does not push later steps back (deadlines, not
sleeps). An idle replica leaves the loop and starts its next step when a request arrives; with a
front end (llmsim.engine.frontend) it waits in the loop for the front end's next hand-over.
Requests go to the replica with the least work queued or running.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmsim.engine.engine_stats import EngineStats
from llmsim.engine.scheduler import (
    MULTI_STEP_CHUNKED_ERROR,
    Replica,
    ReplicaConfig,
    Seq,
    SeqListener,
)
from llmsim.engine.steptime import Preset, load_preset

if TYPE_CHECKING:
    from llmsim.engine.loop import Stream, StreamLoop

log = logging.getLogger("llmsim.engine")

# Past this much lag behind its own timeline (a stalled process), a replica starts afresh
# from now instead of replaying the missed steps back to back.
_MAX_LAG_S = 0.25


@dataclass(frozen=True)
class VllmConfig:
    """What engine mode needs from the settings (the engine does not read settings itself)."""

    preset: str = "llama-3-8b-a100"
    replicas: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    chunked_prefill: bool = True
    block_size: int = 16
    num_gpu_blocks: int | None = None
    prefix_caching: bool = True
    step_jitter_cv: float = 0.0
    seed: int | None = None
    num_scheduler_steps: int = 1
    frontend_ms_per_request: float | None = None  # None: the preset's
    frontend_us_per_prompt_token: float | None = None
    frontend_handover_order: str = "fifo"

    @property
    def preset_data(self) -> Preset:
        """The preset `preset` names (loaded once per process; KeyError if there is none)."""
        return load_preset(self.preset)

    def replica_config(self) -> ReplicaConfig:
        """The replica options in force: each one set here, else the preset's.

        Without chunked prefill the default step budget grows to max_model_len, so any allowed
        prompt fits one step; the front end's costs are converted to seconds.
        """
        p = self.preset_data
        max_model_len = self.max_model_len or p.max_model_len
        budget = self.max_num_batched_tokens
        if budget is None:
            # vLLM's default without chunking: a whole prompt of any allowed length fits a step.
            budget = p.max_num_batched_tokens
            if not self.chunked_prefill:
                budget = max(budget, max_model_len)
        return ReplicaConfig(
            max_num_seqs=self.max_num_seqs or p.max_num_seqs,
            max_num_batched_tokens=budget,
            block_size=self.block_size,
            num_gpu_blocks=self.num_gpu_blocks or p.gpu_blocks(self.block_size),
            chunked_prefill=self.chunked_prefill,
            prefix_caching=self.prefix_caching,
            max_model_len=max_model_len,
            step_jitter_cv=self.step_jitter_cv,
            num_scheduler_steps=self.num_scheduler_steps,
            frontend_s_per_request=self.frontend_per_request_ms() / 1e3,
            frontend_s_per_prompt_token=self.frontend_per_token_us() / 1e6,
            frontend_handover_order=self.frontend_handover_order,
        )

    def frontend_per_request_ms(self) -> float:
        """The front end's cost per request in force: the flag's, else the preset's."""
        v = self.frontend_ms_per_request
        return self.preset_data.frontend_ms_per_request if v is None else v

    def frontend_per_token_us(self) -> float:
        """The front end's cost per prompt token in force: the flag's, else the preset's."""
        v = self.frontend_us_per_prompt_token
        return self.preset_data.frontend_us_per_prompt_token if v is None else v

    def check(self) -> None:
        """ValueError with the reason when the combination cannot run (as vLLM refuses it)."""
        if self.num_scheduler_steps > 1 and self.chunked_prefill:
            raise ValueError(f"{MULTI_STEP_CHUNKED_ERROR}: add --no-enable-chunked-prefill")
        rc = self.replica_config()
        if not rc.chunked_prefill and rc.max_num_batched_tokens < rc.max_model_len:
            raise ValueError(
                f"without chunked prefill, --max-num-batched-tokens ({rc.max_num_batched_tokens})"
                f" must be at least max_model_len ({rc.max_model_len})"
            )
        capacity = rc.num_gpu_blocks * rc.block_size
        if capacity < rc.max_model_len:
            raise ValueError(
                f"the KV cache holds {capacity} tokens ({rc.num_gpu_blocks} blocks of "
                f"{rc.block_size}), less than max_model_len {rc.max_model_len}: lower "
                "--max-model-len or raise --num-gpu-blocks-override"
            )


class ReplicaClock:
    """One replica as an entry of the stream loop: due when the step in flight ends or, with
    the engine idle, when the front end hands over its next request; with multi-step, also
    when the first tokens of the last prefill step are released mid-step (`Replica.release`).

    The loop cannot move an entry's deadline, so the entry remembers the one deadline it is
    due at (`due`); a wake-up queued for another time is stale and fires as a no-op.
    """

    __slots__ = ("due", "loop", "replica", "step_end", "stepping")

    def __init__(self, replica: Replica, loop: StreamLoop) -> None:
        self.replica = replica
        self.loop = loop
        self.stepping = False  # a step is in flight (it ends at `step_end`)
        self.step_end: float | None = None
        self.due: float | None = None  # when the loop fires this entry; None: not in the loop

    def submit(self, seq: Seq, now: float) -> None:
        """Queue `seq` on the replica at `now`; an idle replica starts a step at once (or waits
        in the loop for the front end's hand-over). ValueError if the request can never fit."""
        self.replica.add(seq, now)
        if self.stepping:  # the next step starts when this one ends
            return
        nxt = self._next(now)
        if nxt is not None and (self.stepping or self.due is None or nxt < self.due):
            self.due = nxt
            self.loop.add(self, nxt)

    def _next(self, start: float) -> float | None:
        """Start the next step at `start` if there is one: the first thing due in it (held
        first tokens, else its end); else the front end's next hand-over (the engine waits
        for it), or None when there is nothing at all."""
        try:
            dt = self.replica.step(start)
        except Exception:  # never leave streams waiting on a broken replica
            log.exception("replica %s failed to schedule a step", self.replica.name)
            self.abort()
            return None
        if dt is not None:
            self.stepping = True
            self.step_end = start + dt
            rel = self.replica.release_at
            return rel if rel is not None and rel < self.step_end else self.step_end
        self.stepping = False
        self.step_end = None
        nxt = self.replica.next_intake()
        return None if nxt is None else max(nxt, start)

    def fire(self, deadline: float, now: float) -> float | None:
        """Release held first tokens mid-step, or end the step in flight and start the next.

        Returns the next deadline, or None when the replica is idle (it leaves the loop) or the
        wake-up is stale. A replica more than 0.25 s behind starts its next step from `now`.
        """
        if deadline != self.due:  # a wake-up superseded by an earlier one
            return None
        if self.stepping and self.step_end is not None and deadline < self.step_end:
            self.replica.release(deadline)  # held first tokens, mid-step
            self.due = self.step_end
            return self.due
        if self.stepping:
            self.replica.finish_step(deadline)
        start = deadline if now - deadline < _MAX_LAG_S else now
        # The loop re-queues this entry at the deadline returned (None: it leaves the loop).
        self.due = self._next(start)
        return self.due

    def abort(self) -> None:
        """Fail every request of the replica (called by the loop if a step raised)."""
        self.stepping = False
        self.step_end = None
        self.due = None
        now = time.monotonic()
        for seq in [*self.replica.running, *self.replica.waiting, *self.replica.in_intake()]:
            self.replica.abort(seq)
            if seq.listener is not None:
                seq.listener.on_finish(seq, now)


class EnginePool:
    """The replicas of one worker process, their drivers and their shared statistics."""

    def __init__(
        self, config: VllmConfig, stats: EngineStats | None = None, worker: int = 0
    ) -> None:
        self.config = config
        self.preset = config.preset_data
        self.replica_config = config.replica_config()
        seed = config.seed if config.seed is not None else secrets.randbits(64)
        self.stats = stats
        self.worker = worker
        self.replicas: list[Replica] = []
        for i in range(config.replicas):
            self.replicas.append(
                Replica(
                    self.replica_config,
                    self.preset.step_time,
                    rng=random.Random(f"{seed}:{worker}:{i}"),
                    name=f"{worker}.{i}" if stats is not None and stats.workers > 1 else str(i),
                    on_step=self._on_step,
                )
            )
        self._index = {id(r): i for i, r in enumerate(self.replicas)}
        self.clocks: list[ReplicaClock] | None = None  # made with the loop, in the worker
        if stats is not None:  # every replica shows in the stats from the start
            for i, r in enumerate(self.replicas):
                stats.replica_state(worker, i, r)

    @property
    def max_model_len(self) -> int:
        """The most tokens, prompt and output together, one request may take."""
        return self.replica_config.max_model_len

    @property
    def model(self) -> str:
        """The model the preset measured (e.g. meta-llama/Meta-Llama-3-8B)."""
        return self.preset.model

    def bind_worker(self, worker: int) -> None:
        """Rename replicas after a fork so every worker's section of the stats is its own."""
        self.worker = worker
        multi = self.stats is not None and self.stats.workers > 1
        for i, r in enumerate(self.replicas):
            r.name = f"{worker}.{i}" if multi else str(i)

    def pick(self) -> int:
        """The least-loaded replica (lowest index on ties)."""
        best, best_load = 0, None
        for i, r in enumerate(self.replicas):
            load = r.load
            if best_load is None or load < best_load:
                best, best_load = i, load
        return best

    def submit(self, seq: Seq, loop: StreamLoop) -> Replica:
        """Queue a request on the least-loaded replica; ValueError if it can never fit."""
        if self.clocks is None:
            self.clocks = [ReplicaClock(r, loop) for r in self.replicas]
        i = self.pick()
        self.clocks[i].submit(seq, loop.clock())
        if self.stats is not None:
            self.stats.replica_state(self.worker, i, self.replicas[i])
        return self.replicas[i]

    def _on_step(self, replica: Replica, end: float, tokens: int, seqs: int) -> None:
        if self.stats is not None:
            i = self._index[id(replica)]
            self.stats.step(tokens)
            self.stats.replica_state(self.worker, i, replica)


class LoopTokens(SeqListener):
    """Hands a sequence's tokens to its response: a loop Stream, or a callback when done.

    A non-streaming reply (`stream` None) calls `wake` once `wake_at` tokens exist or the
    sequence ends, whichever is first.
    """

    __slots__ = ("_last", "clock", "stats", "stream", "wake", "wake_at")

    def __init__(
        self,
        stats: EngineStats | None,
        clock: Callable[[], float],
        stream: Stream | None = None,
        wake: Callable[[], None] | None = None,
        wake_at: int = 0,
    ) -> None:
        self.stats = stats
        self.clock = clock
        self.stream = stream
        self.wake = wake
        self.wake_at = wake_at
        self._last = -1.0

    def on_tokens(self, seq: Seq, n: int, now: float) -> None:
        """Record the gap since the last tokens, then pass `n` tokens to the stream (planned at
        `now`, the step's end); a non-streaming reply is woken once `wake_at` tokens exist."""
        if self.stats is not None and self._last >= 0:
            self.stats.inter_token(now - self._last)
        self._last = now
        if self.stream is not None:
            # `now` is the step's end: the planned time; the send time is the loop's clock.
            self.stream.emit(n, self.clock(), now)
        elif self.wake is not None and seq.produced >= self.wake_at:
            wake, self.wake = self.wake, None
            wake()

    def on_finish(self, seq: Seq, now: float) -> None:
        """Record a completed sequence's phases and finish its stream; a sequence that did not
        complete fails its stream with server_error. A non-streaming reply is woken either way."""
        if self.stats is not None and seq.state == "done":
            self.stats.request_done(seq)
        if self.stream is not None:
            if seq.state == "done":
                self.stream.finish()
            else:
                self.stream.fail("server_error")
        elif self.wake is not None:
            wake, self.wake = self.wake, None
            wake()


class EngineOwner:
    """A stream's Owner in engine mode: frees the sequence's KV blocks when the stream ends."""

    __slots__ = ("owner", "replica", "seq")

    def __init__(self, owner: Any, replica: Replica | None = None, seq: Seq | None = None) -> None:
        self.owner = owner
        self.replica = replica
        self.seq = seq

    def started(self, now: float) -> None:
        """Tell the request's owner its first event has left at `now` (monotonic seconds)."""
        self.owner.started(now)

    def ended(self, kind: str, tokens_sent: int) -> None:
        """Abort the sequence (freeing its KV blocks; a no-op once it is done), then tell the
        request's owner."""
        if self.replica is not None and self.seq is not None:
            self.replica.abort(self.seq)  # a fault's cut or a client gone (no-op once done)
        self.owner.ended(kind, tokens_sent)
