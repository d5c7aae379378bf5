"""One simulated inference-engine replica: a continuous batch stepped on an injected clock.

The semantics follow vLLM V1's scheduler (`vllm/v1/core/sched/scheduler.py`):
- each step has a budget of `max_num_batched_tokens`; running sequences are served first, in
  the order they were admitted: a decoding sequence takes one token, a sequence still
  prefilling takes the next chunk of its prompt that fits the remaining budget;
- then waiting sequences are admitted FIFO while the batch has fewer than `max_num_seqs` and the
  KV cache has blocks for what they prefill this step; with prefix caching, the prompt's cached
  full blocks are reused and only the rest is prefilled (at least the last token, which must be
  computed to sample);
- when a running sequence needs a block and none is free, the most recently admitted running
  sequence is preempted (recompute: its blocks are freed, it goes back to the front of the
  queue and later prefills its prompt and the tokens it had produced again), and no one is
  admitted in that step;
- with `chunked_prefill=False` (vLLM V0's default scheduler) a prompt is prefilled whole in one
  step, and a step that prefills carries no decodes;
- with `num_scheduler_steps` K > 1 (vLLM V0's multi-step scheduling, which excludes chunked
  prefill) a decode step is a round of K steps of the same batch: the blocks for K tokens are
  taken at the round's start, every sequence's tokens of the round are delivered at its end
  (a sequence done mid-round stays in the batch until then, as on the GPU), and waiting
  requests are admitted only between rounds; a prefill step stays one step. A prefill step's
  first tokens are released when the next step ends (the first step of the next round, or
  the next prefill step), or at once if the engine then idles: vLLM V0 processes a step's
  outputs (detokenizing, streaming) while the GPU runs the next one (async output
  processing), and v0.6.0's published runs show its first tokens that late (see
  docs/engine.md). `release_at` says when; `finish_step` releases them if the caller did not.

With a front end (`frontend_s_per_request` / `frontend_s_per_prompt_token`, vLLM's API server
process; llmsim.engine.frontend) a request added at t reaches the waiting queue only when the
front end has taken it in and handed it over (a burst together, after all of its intake, in
arrival order or with `frontend_handover_order` "random" shuffled); `next_intake()` says when.

A sequence produces a token at the end of each step in which its computed tokens reach its
full length (prompt plus tokens produced so far): that is its first token after the prefill,
and one token per decode step after it. The replica does no timing of its own: `step(now)`
returns how long the step it just scheduled takes on the GPU (from a StepTimeModel), and the
caller calls `finish_step(end)` when that time has passed, which delivers the tokens.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmsim.engine.frontend import FrontEnd
from llmsim.engine.kv_cache import KVCache, block_hashes
from llmsim.engine.steptime import StepTimeModel


@dataclass(frozen=True)
class ReplicaConfig:
    """The engine options of one replica (vLLM's flags of the same names)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    num_gpu_blocks: int = 1024
    chunked_prefill: bool = True
    prefix_caching: bool = True
    max_model_len: int = 8192
    step_jitter_cv: float = 0.0
    num_scheduler_steps: int = 1
    frontend_s_per_request: float = 0.0
    frontend_s_per_prompt_token: float = 0.0
    # The order the front end hands a burst to the engine: "fifo" or "random" (seeded).
    frontend_handover_order: str = "fifo"


# vLLM 0.6's refusal (EngineArgs.create_engine_config), in its words.
MULTI_STEP_CHUNKED_ERROR = (
    "Chunked prefill is not supported with multi-step (--num-scheduler-steps > 1)"
)


class SeqListener:
    """What a sequence tells its owner; the stream loop's clocked-source callbacks."""

    def on_tokens(self, seq: Seq, n: int, now: float) -> None:
        """`n` more tokens of the reply exist as of `now` (seq.produced counts them all)."""

    def on_finish(self, seq: Seq, now: float) -> None:
        """The sequence produced its last token at `now` and left the batch."""


class Seq:
    """One request in a replica: what it needs, what it holds, when things happened."""

    __slots__ = (
        "_token_ids",
        "admitted_at",
        "arrival",
        "blocks",
        "computed",
        "engine_at",
        "first_token_at",
        "hashes",
        "hit_tokens",
        "last_token_at",
        "listener",
        "max_output",
        "preemptions",
        "produced",
        "prompt_len",
        "published",
        "queued_at",
        "replica",
        "request_id",
        "scheduled_at",
        "state",
    )

    def __init__(
        self,
        request_id: str,
        prompt_len: int,
        max_output: int,
        token_ids: Sequence[int] = (),
        listener: SeqListener | None = None,
        arrival: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.prompt_len = max(1, prompt_len)
        self.max_output = max(0, max_output)
        self.listener = listener
        self.arrival = arrival
        self.hashes: list[int] = []  # set by the replica (it knows the block size)
        self._token_ids = token_ids
        self.blocks: list[int] = []
        self.published = 0  # prompt blocks already in the prefix index
        self.computed = 0  # tokens whose KV is in the cache
        self.produced = 0  # reply tokens produced so far
        self.hit_tokens = 0  # prompt tokens served from the prefix cache at admission
        self.preemptions = 0
        self.state = "new"  # new, waiting, running, done, aborted
        self.replica: Replica | None = None
        self.queued_at = arrival
        self.engine_at = arrival  # reached the engine (after the front end, if any)
        self.scheduled_at: float | None = None  # first admitted
        self.admitted_at = 0.0  # last admitted (after a preemption too)
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None

    @property
    def length(self) -> int:
        """Tokens the KV cache must hold for this sequence to produce its next token."""
        return self.prompt_len + self.produced

    @property
    def done(self) -> bool:
        """Whether the sequence has finished or been aborted."""
        return self.state in ("done", "aborted")


class ReplicaCounters:
    """Totals since start (the `vllm:` counters and histograms read these)."""

    __slots__ = (
        "finished",
        "generation_tokens",
        "iterations",
        "preemptions",
        "prefix_hits",
        "prefix_queries",
        "prompt_tokens",
    )

    def __init__(self) -> None:
        self.finished = 0
        self.iterations = 0
        self.preemptions = 0
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found
        self.prompt_tokens = 0  # tokens prefilled (recomputation included)
        self.generation_tokens = 0


class Replica:
    """A continuous-batching engine replica (see the module docstring)."""

    def __init__(
        self,
        config: ReplicaConfig,
        step_time: StepTimeModel,
        rng: random.Random | None = None,
        name: str = "0",
        on_step: Callable[[Replica, float, int, int], None] | None = None,
    ) -> None:
        if config.num_scheduler_steps < 1:
            raise ValueError("num_scheduler_steps must be at least 1")
        if config.num_scheduler_steps > 1 and config.chunked_prefill:
            raise ValueError(MULTI_STEP_CHUNKED_ERROR)
        if not config.chunked_prefill and config.max_num_batched_tokens < config.max_model_len:
            # vLLM refuses this too: a prompt that does not fit one step would never start.
            raise ValueError(
                f"without chunked prefill, max_num_batched_tokens "
                f"({config.max_num_batched_tokens}) must be at least max_model_len "
                f"({config.max_model_len})"
            )
        self.config = config
        self.step_time = step_time
        self.name = name
        self.kv = KVCache(config.num_gpu_blocks, config.block_size, config.prefix_caching)
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self._round = 1  # steps in the round in flight
        self.counters = ReplicaCounters()
        self._rng = rng or random.Random(0)
        # A random hand-over order draws from its own generator, seeded from the replica's
        # (so a seeded server repeats it); FIFO draws nothing, leaving the jitter's draws as
        # they were.
        order = config.frontend_handover_order
        fe_rng = random.Random(self._rng.getrandbits(64)) if order == "random" else None
        self.frontend = FrontEnd(
            config.frontend_s_per_request, config.frontend_s_per_prompt_token, order, fe_rng
        )
        self._scheduled: list[tuple[Seq, int]] = []
        self.busy_until: float | None = None  # end of the step in flight
        self.last_step_tokens = 0
        self.last_step_s = 0.0
        self._on_step = on_step  # (replica, end, tokens, seqs) after each step: metrics
        # Multi-step: a prefill step's first tokens (seq, tokens, finished), held until the
        # next step ends, and when that is (None: not known until that step is scheduled).
        self._held: list[tuple[Seq, int, bool]] = []
        self.release_at: float | None = None

    # -- requests in and out ------------------------------------------------------------

    def add(self, seq: Seq, now: float) -> None:
        """Queue a request; it is admitted at the next step that has room for it."""
        if seq.prompt_len + seq.max_output > self.config.max_model_len:
            raise ValueError(
                f"prompt of {seq.prompt_len} tokens plus {seq.max_output} to generate exceeds "
                f"max_model_len {self.config.max_model_len}"
            )
        if self.kv.blocks_for(seq.prompt_len + seq.max_output) > self.kv.num_blocks:
            raise ValueError(
                f"the request needs more KV blocks than the replica has ({self.kv.num_blocks})"
            )
        bs = self.config.block_size
        if self.config.prefix_caching and seq._token_ids:
            seq.hashes = block_hashes(seq._token_ids, bs, seq.prompt_len // bs)
        seq._token_ids = ()  # only the hashes are needed from here on
        seq.replica = self
        if self.frontend.enabled:
            seq.state = "intake"
            self.frontend.add(seq, seq.prompt_len, now, self._join)
        else:
            self._join(seq, now)

    def _join(self, seq: Seq, now: float) -> None:
        """The request reaches the engine: its waiting queue, FIFO."""
        if seq.state == "aborted":  # gone while the front end was taking it in
            return
        seq.state = "waiting"
        seq.queued_at = seq.engine_at = now
        self.waiting.append(seq)

    def in_intake(self) -> list[Seq]:
        """Requests the front end is still taking in."""
        return self.frontend.jobs()

    def next_intake(self) -> float | None:
        """When the front end hands over its next request (None: it holds none)."""
        return self.frontend.next_done()

    def abort(self, seq: Seq) -> None:
        """Drop a request (client gone, fault): its blocks go back at once."""
        if seq.done or seq.replica is not self:
            return
        if seq.state == "waiting":
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        elif seq.state == "running":
            self.running.remove(seq)
        # "intake": the front end finishes taking it in, then _join drops it.
        self.kv.release(seq.blocks)
        seq.blocks = []
        seq.state = "aborted"

    @property
    def load(self) -> int:
        """How much work is queued or running: the least-loaded spread compares this."""
        return len(self.running) + len(self.waiting) + len(self.frontend)

    @property
    def idle(self) -> bool:
        """Whether nothing is running, waiting or still in the front end."""
        return not self.running and not self.waiting and not len(self.frontend)

    # -- one step ---------------------------------------------------------------------

    def step(self, now: float) -> float | None:
        """Schedule one step (or one multi-step round) starting at `now`; its duration in
        seconds, or None if there is nothing to run (see `next_intake`)."""
        if len(self.frontend):
            self.frontend.advance(now, self._join)
        if self.config.chunked_prefill:
            scheduled = self._schedule_v1(now)
        else:
            scheduled = self._schedule_v0(now)
        if not scheduled:
            if self._held:  # nothing runs next: the held first tokens go out now
                self.release_at = now
                self.release(now)
            return None
        self._scheduled = scheduled
        self._round = 1
        first = scheduled[0][0]
        if self.config.num_scheduler_steps > 1 and first.computed >= first.prompt_len:
            return self._decode_round(scheduled, now)
        n_tokens = 0
        decodes = 0
        decode_ctx = 0
        prefills: list[tuple[int, int]] = []
        for seq, n in scheduled:
            n_tokens += n
            if n == 1 and seq.computed >= seq.prompt_len:
                decodes += 1
                decode_ctx += seq.computed + 1
            else:
                prefills.append((n, seq.computed))
        t = self.step_time.step_s(n_tokens, decodes, decode_ctx, prefills)
        cv = self.config.step_jitter_cv
        if cv > 0:
            t *= self._rng.lognormvariate(-0.5 * _log1p_sq(cv), _sqrt_log1p_sq(cv))
        self.last_step_tokens = n_tokens
        self.last_step_s = t
        self.busy_until = now + t
        if self._held:  # held by the previous prefill step: out when this one ends
            self.release_at = now + t
        return t

    def _decode_round(self, scheduled: list[tuple[Seq, int]], now: float) -> float:
        """K decode steps of `scheduled`'s batch (blocks for all K taken already): the time."""
        k = self.config.num_scheduler_steps
        batch = len(scheduled)
        ctx = sum(seq.computed + 1 for seq, _ in scheduled)
        cv = self.config.step_jitter_cv
        st = self.step_time
        t = 0.0
        for j in range(k):
            dt = st.step_s(batch, batch, ctx + j * batch)
            if cv > 0:
                dt *= self._rng.lognormvariate(-0.5 * _log1p_sq(cv), _sqrt_log1p_sq(cv))
            t += dt
            if j == 0 and self._held:  # the prefill's first tokens: out after this step
                self.release_at = now + dt
        self._round = k
        self.last_step_tokens = batch
        self.last_step_s = t / k
        self.busy_until = now + t
        return t

    def finish_step(self, end: float) -> None:
        """The step scheduled last has ended at `end`: advance each sequence, emit tokens."""
        if self._held:
            self.release(end)
        if self._round > 1:
            self._finish_round(end)
            return
        scheduled, self._scheduled = self._scheduled, []
        hold = self.config.num_scheduler_steps > 1
        self.busy_until = None
        c = self.counters
        c.iterations += 1
        bs = self.config.block_size
        kv = self.kv
        finished: list[Seq] = []
        tokens = 0
        for seq, n in scheduled:
            if seq.state != "running":  # aborted during the step
                continue
            if seq.computed < seq.prompt_len:
                c.prompt_tokens += n
            seq.computed += n
            tokens += n
            # Prompt blocks that are now full can be found by later requests.
            if seq.published < len(seq.hashes):
                full = min(seq.computed // bs, len(seq.hashes))
                while seq.published < full:
                    kv.publish(seq.blocks[seq.published], seq.hashes[seq.published])
                    seq.published += 1
            if seq.computed >= seq.length:
                seq.produced += 1
                c.generation_tokens += 1
                if seq.first_token_at is None:
                    seq.first_token_at = end
                seq.last_token_at = end
                if seq.produced >= seq.max_output:
                    finished.append(seq)
                elif hold and seq.produced == 1:
                    self._held.append((seq, 1, False))
                elif seq.listener is not None:
                    seq.listener.on_tokens(seq, 1, end)
        for seq in finished:
            self.running.remove(seq)
            kv.release(seq.blocks)
            seq.blocks = []
            seq.state = "done"
            c.finished += 1
            if hold and seq.produced == 1:
                self._held.append((seq, 1, True))
            elif seq.listener is not None:
                seq.listener.on_tokens(seq, 1, end)
                seq.listener.on_finish(seq, end)
        if self._on_step is not None:
            self._on_step(self, end, tokens, len(scheduled))

    def release(self, now: float) -> None:
        """Send the first tokens held since the last prefill step if they are due at `now`
        (multi-step; see the module docstring), stamped with the time they were due."""
        at = self.release_at
        if not self._held or at is None or at > now:
            return
        held, self._held, self.release_at = self._held, [], None
        for seq, n, finished in held:
            if seq.state == "aborted":  # its listener has heard already
                continue
            seq.first_token_at = at
            if not finished and seq.last_token_at is not None and seq.last_token_at < at:
                seq.last_token_at = at
            if seq.listener is not None:
                seq.listener.on_tokens(seq, n, at)
                if finished:
                    seq.last_token_at = at
                    seq.listener.on_finish(seq, at)

    def _finish_round(self, end: float) -> None:
        """A multi-step round has ended: each sequence gets its tokens of the round at once."""
        scheduled, self._scheduled = self._scheduled, []
        k, self._round = self._round, 1
        self.busy_until = None
        c = self.counters
        c.iterations += k
        finished: list[tuple[Seq, int]] = []
        for seq, n in scheduled:
            if seq.state != "running":  # aborted during the round
                continue
            seq.computed += n
            seq.produced += n
            c.generation_tokens += n
            seq.last_token_at = end
            if seq.produced >= seq.max_output:
                finished.append((seq, n))
            elif seq.listener is not None:
                seq.listener.on_tokens(seq, n, end)
        for seq, n in finished:
            self.running.remove(seq)
            self.kv.release(seq.blocks)
            seq.blocks = []
            seq.state = "done"
            c.finished += 1
            if seq.listener is not None:
                seq.listener.on_tokens(seq, n, end)
                seq.listener.on_finish(seq, end)
        if self._on_step is not None:
            for _ in range(k):  # one iteration of the batch's size per step of the round
                self._on_step(self, end, len(scheduled), len(scheduled))

    # -- scheduling policies ------------------------------------------------------------

    def _grow(self, seq: Seq, new_tokens: int) -> bool:
        """Give `seq` the blocks it needs to hold `new_tokens` more; False if none are free."""
        need = self.kv.blocks_for(seq.computed + new_tokens) - len(seq.blocks)
        if need <= 0:
            return True
        if need == 1:
            b = self.kv.allocate_one()
            if b is None:
                return False
            seq.blocks.append(b)
            return True
        got = self.kv.allocate(need)
        if got is None:
            return False
        seq.blocks.extend(got)
        return True

    def _preempt(self, victim: Seq, now: float) -> None:
        self.running.remove(victim)
        self.kv.release(victim.blocks)
        victim.blocks = []
        victim.computed = 0
        victim.published = 0
        victim.preemptions += 1
        victim.state = "waiting"
        victim.queued_at = now
        self.counters.preemptions += 1
        self.waiting.appendleft(victim)

    def _admit_blocks(self, seq: Seq) -> tuple[list[int], int]:
        """Cached prefix blocks for a sequence about to be admitted, and tokens they cover."""
        if not seq.hashes:
            return [], 0
        hits = self.kv.lookup(seq.hashes)
        # The last token is always computed, so a fully cached prompt still prefills one.
        hit_tokens = min(len(hits) * self.config.block_size, seq.length - 1)
        n_blocks = hit_tokens // self.config.block_size
        return hits[:n_blocks], n_blocks * self.config.block_size

    def _count_query(self, seq: Seq, hit_tokens: int) -> None:
        if self.config.prefix_caching and seq.preemptions == 0:
            self.counters.prefix_queries += seq.prompt_len
            self.counters.prefix_hits += hit_tokens

    def _schedule_v1(self, now: float) -> list[tuple[Seq, int]]:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[Seq, int]] = []
        preempted = False
        i = 0
        running = self.running
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(seq.length - seq.computed, budget)
            while not self._grow(seq, n):
                victim = running[-1]
                self._preempt(victim, now)
                preempted = True
                if victim is seq:
                    break
            else:
                scheduled.append((seq, n))
                budget -= n
                i += 1
                continue
            # seq itself was preempted: running[i] is now the next one, if any.
        if preempted:
            return scheduled
        waiting = self.waiting
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            seq = waiting[0]
            hits, hit_tokens = self._admit_blocks(seq)
            n = min(seq.length - hit_tokens, budget)
            need = self.kv.blocks_for(hit_tokens + n) - len(hits)
            if not self.kv.can_take(hits, need):
                break
            waiting.popleft()
            self._admit(seq, hits, hit_tokens, n, now)
            scheduled.append((seq, n))
            budget -= n
        return scheduled

    def _admit(self, seq: Seq, hits: list[int], hit_tokens: int, n: int, now: float) -> None:
        """Move the head of the waiting queue into the batch: its cached prefix blocks are
        reused, and `n` more of its prompt tokens are prefilled in this step."""
        self.kv.take(hits)
        seq.blocks = list(hits)
        seq.published = len(hits)
        seq.computed = hit_tokens
        self._count_query(seq, hit_tokens)
        seq.hit_tokens = hit_tokens
        self._grow(seq, n)
        self._start(seq, now)

    def _schedule_v0(self, now: float) -> list[tuple[Seq, int]]:
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[Seq, int]] = []
        waiting = self.waiting
        # A prefill step when anyone can be admitted: whole prompts only, no decodes.
        while waiting and len(self.running) < cfg.max_num_seqs:
            seq = waiting[0]
            hits, hit_tokens = self._admit_blocks(seq)
            n = seq.length - hit_tokens
            if n > budget:
                break
            need = self.kv.blocks_for(hit_tokens + n) - len(hits)
            if not self.kv.can_take(hits, need):
                break
            waiting.popleft()
            self._admit(seq, hits, hit_tokens, n, now)
            scheduled.append((seq, n))
            budget -= n
        if scheduled:
            return scheduled
        # Otherwise a decode step (or a multi-step round of K: the blocks for K tokens, vLLM's
        # lookahead slots) for every running sequence, preempting the newest on need.
        k = cfg.num_scheduler_steps
        running = self.running
        i = 0
        while i < len(running):
            seq = running[i]
            n = min(k, seq.max_output - seq.produced) if k > 1 else 1
            while not self._grow(seq, n):
                victim = running[-1]
                self._preempt(victim, now)
                if victim is seq:
                    break
            else:
                scheduled.append((seq, n))
                i += 1
        return scheduled

    def _start(self, seq: Seq, now: float) -> None:
        seq.state = "running"
        seq.admitted_at = now
        if seq.scheduled_at is None:
            seq.scheduled_at = now
        self.running.append(seq)


def _log1p_sq(cv: float) -> float:
    return math.log1p(cv * cv)


def _sqrt_log1p_sq(cv: float) -> float:
    return math.sqrt(math.log1p(cv * cv))
