"""Engine mode's statistics, shared by every worker process (vLLM's `vllm:` metrics).

Each worker writes only its own section of one shared float64 table: per replica the scheduler's
state (running, waiting, KV usage, counters), and per worker vLLM's request and iteration
histograms. Readers add the sections up, so /metrics and /llmsim/stats show the whole server
whichever worker answers.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from llmsim.engine.shared import SharedTable
from llmsim.engine.stats import E2E_BUCKETS, TPOT_BUCKETS

if TYPE_CHECKING:
    from llmsim.engine.scheduler import Replica, Seq

# vLLM's buckets: request phases use its request-latency buckets, inter-token latency its
# TPOT buckets, iteration tokens powers of two up to a large step.
REQUEST_BUCKETS = E2E_BUCKETS
ITL_BUCKETS = TPOT_BUCKETS
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

REPLICA_FIELDS = (
    "running", "waiting", "kv_cache_usage", "kv_blocks_free", "kv_blocks_total",
    "prefix_cached_blocks", "preemptions", "prefix_cache_queries", "prefix_cache_hits",
    "iterations", "prompt_tokens", "generation_tokens", "finished", "last_step_tokens",
    "last_step_ms", "present", "in_frontend",
)  # fmt: skip
COUNTERS = frozenset(
    {"preemptions", "prefix_cache_queries", "prefix_cache_hits", "iterations", "prompt_tokens",
     "generation_tokens", "finished"}
)  # fmt: skip
HISTOGRAMS = {
    "queue_time": REQUEST_BUCKETS,
    "prefill_time": REQUEST_BUCKETS,
    "decode_time": REQUEST_BUCKETS,
    "inter_token": ITL_BUCKETS,
    "iteration_tokens": ITERATION_BUCKETS,
}


class EngineStats:
    """Shared engine statistics: `replicas` per worker, `workers` sections."""

    def __init__(self, workers: int, replicas: int) -> None:
        self.workers = workers
        self.replicas = replicas
        self._f = {name: i for i, name in enumerate(REPLICA_FIELDS)}
        self._replica_size = len(REPLICA_FIELDS)
        offset = replicas * self._replica_size
        self._hist: dict[str, int] = {}
        for name, bounds in HISTOGRAMS.items():
            self._hist[name] = offset
            offset += len(bounds) + 3  # buckets, +Inf, sum, count
        self.size = offset
        self.table = SharedTable(self.size * workers)
        self._base = 0

    def bind_worker(self, index: int) -> None:
        """Make this process write section `index` of the table (call once, after fork)."""
        self._base = index * self.size

    # -- writing (the worker's own section) -------------------------------------------------

    def replica_state(self, worker: int, index: int, r: Replica) -> None:
        """Copy replica `index`'s queues, KV cache figures and counters into this worker's section.

        Every field is overwritten (the counters are the replica's own totals since start);
        the section written is the one `bind_worker` chose, whatever `worker` says.
        """
        d = self.table.values
        base = self._base + index * self._replica_size
        f = self._f
        c = r.counters
        d[base + f["running"]] = len(r.running)
        d[base + f["waiting"]] = len(r.waiting)
        d[base + f["in_frontend"]] = len(r.frontend)
        d[base + f["kv_cache_usage"]] = r.kv.usage
        d[base + f["kv_blocks_free"]] = r.kv.free_blocks
        d[base + f["kv_blocks_total"]] = r.kv.num_blocks
        d[base + f["prefix_cached_blocks"]] = len(r.kv.cached)
        d[base + f["preemptions"]] = c.preemptions
        d[base + f["prefix_cache_queries"]] = c.prefix_queries
        d[base + f["prefix_cache_hits"]] = c.prefix_hits
        d[base + f["iterations"]] = c.iterations
        d[base + f["prompt_tokens"]] = c.prompt_tokens
        d[base + f["generation_tokens"]] = c.generation_tokens
        d[base + f["finished"]] = c.finished
        d[base + f["last_step_tokens"]] = r.last_step_tokens
        d[base + f["last_step_ms"]] = r.last_step_s * 1000
        d[base + f["present"]] = 1

    def _observe(self, name: str, value: float) -> None:
        bounds = HISTOGRAMS[name]
        d = self.table.values
        base = self._base + self._hist[name]
        d[base + bisect.bisect_left(bounds, value)] += 1
        d[base + len(bounds) + 1] += value
        d[base + len(bounds) + 2] += 1

    def step(self, tokens: int) -> None:
        """Observe one engine step of `tokens` tokens (vllm:iteration_tokens_total)."""
        self._observe("iteration_tokens", tokens)

    def inter_token(self, seconds: float) -> None:
        """Observe one gap between a sequence's tokens (vllm:inter_token_latency_seconds)."""
        self._observe("inter_token", seconds)

    def request_done(self, seq: Seq) -> None:
        """vLLM's request phases: queued until first scheduled, prefill, then decode.

        The queue time starts when the request reaches the engine, after the front end has
        taken it in (vLLM stamps `arrival_time` there), so front-end time is not in it.
        """
        if seq.scheduled_at is None or seq.first_token_at is None:
            return
        self._observe("queue_time", max(0.0, seq.scheduled_at - seq.engine_at))
        self._observe("prefill_time", max(0.0, seq.first_token_at - seq.scheduled_at))
        last = seq.last_token_at if seq.last_token_at is not None else seq.first_token_at
        self._observe("decode_time", max(0.0, last - seq.first_token_at))

    # -- reading (every section) -----------------------------------------------------------

    def replica_rows(self) -> list[dict[str, Any]]:
        """One dict per replica of every worker that has stepped or been given work."""
        d = self.table.values
        rows = []
        for w in range(self.workers):
            for i in range(self.replicas):
                base = w * self.size + i * self._replica_size
                if not d[base + self._f["present"]]:
                    continue
                row: dict[str, Any] = {
                    "replica": f"{w}.{i}" if self.workers > 1 else str(i),
                }
                for name, j in self._f.items():
                    if name == "present":
                        continue
                    v = d[base + j]
                    exact = name in ("kv_cache_usage", "last_step_ms")
                    row[name] = round(v, 4) if exact else int(v)
                rows.append(row)
        return rows

    def histogram(self, name: str) -> tuple[tuple[float, ...], list[float], float, float]:
        """(bounds, counts per bucket and +Inf, sum, count) summed over the workers."""
        bounds = HISTOGRAMS[name]
        n = len(bounds) + 3
        d = self.table.values
        out = [0.0] * n
        for w in range(self.workers):
            base = w * self.size + self._hist[name]
            for i in range(n):
                out[i] += d[base + i]
        return bounds, out[: len(bounds) + 1], out[len(bounds) + 1], out[len(bounds) + 2]
