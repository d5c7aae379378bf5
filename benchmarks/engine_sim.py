"""Drive one engine replica in pure simulation (no server, no clock): open-loop arrivals.

Used by the fidelity benchmark and the plots in docs/engine.md. Every request's TTFT, inter-token
gaps and TPOT come out of the schedule, as they do through `llmsim serve --engine vllm`.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmsim.engine.frontend import HANDOVER_ORDERS
from llmsim.engine.scheduler import Replica, ReplicaConfig, Seq, SeqListener
from llmsim.engine.steptime import load_preset

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class Result:
    """What one simulated request saw."""

    arrival: float
    tokens: list[float] = field(default_factory=list)
    request_id: str = ""  # the server's x-request-id, when it went through one

    @property
    def ttft(self) -> float:
        """Seconds from arrival to the first token."""
        return self.tokens[0] - self.arrival

    @property
    def tpot(self) -> float | None:
        """Mean seconds between tokens after the first; None for a one-token reply."""
        if len(self.tokens) < 2:
            return None
        return (self.tokens[-1] - self.tokens[0]) / (len(self.tokens) - 1)

    @property
    def itls(self) -> list[float]:
        """The gaps (s) between successive tokens."""
        return [b - a for a, b in zip(self.tokens, self.tokens[1:], strict=False)]


class _Collect(SeqListener):
    def __init__(self) -> None:
        self.results: dict[str, Result] = {}

    def on_tokens(self, seq: Seq, n: int, now: float) -> None:
        self.results[seq.request_id].tokens.extend([now] * n)


# The front end's hand-over order every replica_for replica gets unless told otherwise, and the
# seed of its replica's generator (None: Replica's default); set_handover sets them for a run.
_HANDOVER: dict = {"order": "fifo", "seed": None}


def set_handover(order: str = "fifo", seed: int | None = None) -> None:
    """Make every later `replica_for` replica hand bursts over in `order` ("fifo" or
    "random"), its generator seeded with `seed`: how the benchmarks' --frontend-handover-order
    and --handover-seed reach every replica of a run."""
    _HANDOVER.update(order=order, seed=seed)


def add_handover_args(parser: argparse.ArgumentParser) -> None:
    """The benchmarks' --frontend-handover-order and --handover-seed (apply them with
    `set_handover(args.frontend_handover_order, args.handover_seed)`)."""
    parser.add_argument(
        "--frontend-handover-order", choices=HANDOVER_ORDERS, default="fifo",
        help="the order in which the simulated front end hands a burst to the engine "
        "(as llmsim serve's flag)",
    )  # fmt: skip
    parser.add_argument(
        "--handover-seed", type=int, default=None,
        help="seed of each replica's generator, so of a random hand-over order",
    )  # fmt: skip


def handover_order() -> str:
    """The hand-over order set_handover set (the server checks pass it on as a flag)."""
    return _HANDOVER["order"]


def replica_for(preset: str = "llama-3-8b-a100", **overrides: Any) -> Replica:
    """A replica of `preset` with its own options, `overrides` replacing any ReplicaConfig
    field (the front end's hand-over order from set_handover unless given)."""
    p = load_preset(preset)
    overrides.setdefault("frontend_handover_order", _HANDOVER["order"])
    seed = _HANDOVER["seed"]
    block_size = overrides.pop("block_size", 16)
    cfg = ReplicaConfig(
        max_num_seqs=overrides.pop("max_num_seqs", p.max_num_seqs),
        max_num_batched_tokens=overrides.pop("max_num_batched_tokens", p.max_num_batched_tokens),
        block_size=block_size,
        num_gpu_blocks=overrides.pop("num_gpu_blocks", p.gpu_blocks(block_size)),
        max_model_len=overrides.pop("max_model_len", p.max_model_len),
        frontend_s_per_request=overrides.pop(
            "frontend_s_per_request", p.frontend_ms_per_request / 1e3
        ),
        frontend_s_per_prompt_token=overrides.pop(
            "frontend_s_per_prompt_token", p.frontend_us_per_prompt_token / 1e6
        ),
        **overrides,
    )
    return Replica(cfg, p.step_time, rng=None if seed is None else random.Random(seed))


def simulate(replica: Replica, requests: list[tuple[float, int, int, list[int]]]) -> list[Result]:
    """Requests (arrival s, prompt tokens, reply tokens, prompt token ids) in arrival order."""
    collect = _Collect()
    now, i, busy = 0.0, 0, None
    n = len(requests)

    def add(k: int, at: float) -> None:
        arrival, p_len, o_len, ids = requests[k]
        collect.results[str(k)] = Result(arrival=arrival)
        replica.add(Seq(str(k), p_len, o_len, token_ids=ids, listener=collect), at)

    while True:
        nxt = requests[i][0] if i < n else float("inf")
        if busy is not None:
            if nxt < busy:  # arrives during the step: joins (or enters the front end) now
                now = nxt
                add(i, now)
                i += 1
                continue
            now, busy = busy, None
            replica.finish_step(now)
            continue
        # Requests arriving at the same instant all join before the next step starts.
        while i < n and requests[i][0] <= now:
            add(i, now)
            i += 1
        dt = replica.step(now)
        if dt is not None:
            busy = now + dt
            continue
        # Nothing to run: wait for the next arrival or the front end's next hand-over.
        wake = replica.next_intake()
        nxt = requests[i][0] if i < n else float("inf")
        t = min(nxt, float("inf") if wake is None else wake)
        if t == float("inf"):
            break
        now = max(now, t)
    return [collect.results[str(k)] for k in range(n)]


def run_open_loop(
    replica: Replica,
    rate: float,
    n: int,
    prompt: int = 512,
    output: int = 128,
    seed: int = 0,
    shared_prefix: float = 0.0,
    prompt_sampler: Callable[[random.Random], tuple[int, int]] | None = None,
) -> list[Result]:
    """Poisson arrivals at `rate` req/s, `n` requests; the results in arrival order.

    With shared_prefix F, each prompt's first F × prompt tokens are the same for every request
    (a system prompt), the rest unique: the prefix cache can serve the shared part.
    `prompt_sampler(rng)`, when given, draws each request's (prompt, reply) lengths instead.
    """
    rng = random.Random(seed)
    t = 0.0
    requests = []
    for i in range(n):
        t += rng.expovariate(rate)
        p_len, o_len = prompt_sampler(rng) if prompt_sampler else (prompt, output)
        shared = int(p_len * shared_prefix)
        ids = [
            *range(10_000_000, 10_000_000 + shared),
            *range(i * 100_000, i * 100_000 + p_len - shared),
        ]
        requests.append((t, p_len, o_len, ids))
    return simulate(replica, requests)


def pct(values: list[float], q: float) -> float:
    """The `q`-th percentile of `values` (q a whole number; statistics.quantiles, inclusive:
    linear interpolation, as numpy's default); the value itself for one, nan for none."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(results: list[Result], warmup: float = 0.1) -> dict[str, float]:
    """TTFT/TPOT p50/p90 (ms), output throughput (tok/s), skipping the first `warmup` share."""
    kept = results[int(len(results) * warmup) :]
    ttft = [r.ttft * 1000 for r in kept]
    tpot = [t * 1000 for r in kept if (t := r.tpot) is not None]
    start = min(r.arrival for r in kept)
    end = max(r.tokens[-1] for r in kept)
    out_tokens = sum(len(r.tokens) for r in kept)
    return {
        "ttft_p50": pct(ttft, 50),
        "ttft_p90": pct(ttft, 90),
        "tpot_p50": pct(tpot, 50),
        "tpot_p90": pct(tpot, 90),
        "throughput": out_tokens / (end - start),
    }
