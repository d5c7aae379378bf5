"""Engine mode against published vLLM v0.6.0 runs under Poisson arrivals (and all at once).

Run through `python benchmarks/engine_reference.py --reference poisson-a100` (or
`poisson-h100-70b`, or `all`); see that script's docstring for the all-at-once reference.

The reference (benchmarks/data/sglang_vllm060_poisson.json, the vLLM rows of
sgl-project/sglang's benchmark/benchmark_vllm_060/README.md, commit named in the file): sglang's
`bench_serving.py --backend vllm` against vLLM v0.6.0 serving Llama-3.1-8B-Instruct on one
A100-80G (and Llama-3.1-70B-Instruct on 4 x H100, TP 4) with `--num-scheduler-steps 10
--max_model_len 4096`, ShareGPT prompts with replies of exactly the dataset's length
(`ignore_eos`), Poisson arrivals at 4 req/s (1,200 prompts) and 8 req/s (2,400), and 5,000
prompts at once for the saturated throughput. Median TTFT, TPOT, ITL and E2E latency are
published; no p90 or p99, and no per-request lengths.

The replay: the same counts and rates, Poisson arrivals with a fixed seed (the first request at
t = 0, then exponential gaps, as bench_serving sends them), (prompt, reply) lengths drawn with
a fixed seed from the 320 ShareGPT requests of the LambdaLabs reference (vLLM's sampling of the
same dataset under the same filter, Llama-3 tokenizer), those with a reply of at least 4 tokens
(bench_serving drops shorter ones). Their mean reply is longer than the reference's own (5,000
prompts at 4,132 tok/s and 21.27 req/s: 194 tokens), so replies are scaled to that mean unless
`--poisson-raw-lengths`. The engine runs with vLLM v0.6.0's options for that command line
(multi-step rounds of 10, no chunked prefill, a 4,096-token budget, no prefix cache) and the
preset's front end. Several seeds (`--poisson-seeds`) show how much the sampled workload alone
moves each figure. Figures as bench_serving computes them: TTFT from the send, TPOT = (latency
- TTFT) / (reply - 1), ITL over the gaps between chunks, output throughput = reply tokens /
duration.
"""

from __future__ import annotations

import json
import random
import statistics
from typing import TYPE_CHECKING

from engine_reference import DATA, SCHEDULER_STEPS, chunk_gaps, load_reference
from engine_sim import Result, pct, replica_for, simulate

if TYPE_CHECKING:
    from collections.abc import Callable

POISSON = DATA / "sglang_vllm060_poisson.json"
# Compared below saturation. The median E2E latency is printed, not compared: it follows the
# median reply length, which the sampled workload cannot match (see `implied_reply`).
ONLINE_METRICS = ("median_ttft_ms", "median_tpot_ms", "median_itl_ms")
# The bench_serving filter: a reply shorter than this is dropped from the sample.
MIN_REPLY = 4


def load_poisson() -> dict:
    """The reference file: its source, what it measured and one entry per model x GPU."""
    return json.loads(POISSON.read_text())


def sharegpt_pairs() -> list[tuple[int, int]]:
    """(prompt, reply) token counts of the LambdaLabs ShareGPT sample, replies of 4 or more."""
    pt = max(load_reference("a100")["points"], key=lambda p: p["num_prompts"])
    return [
        (p, o) for p, o in zip(pt["input_lens"], pt["output_lens"], strict=True) if o >= MIN_REPLY
    ]


def reply_map(replies: list[int], mean: float | None, median: float | None) -> Callable[[int], int]:
    """A monotone map o -> a x o^b of the sample's reply lengths onto the reference's own mean
    and median reply (the ones its figures pin); identity where neither is given, a plain
    scale to the mean where only it is."""
    if mean is None:
        return lambda o: o
    if median is None:
        k = mean / statistics.fmean(replies)
        return lambda o: max(MIN_REPLY, round(o * k))
    m0 = statistics.median(replies)

    def mean_at(b: float) -> float:
        return statistics.fmean(median * (o / m0) ** b for o in replies)

    lo, hi = 0.2, 5.0  # the mean grows with b for a fixed median
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_at(mid) < mean else (lo, mid)
    b = (lo + hi) / 2
    return lambda o: max(MIN_REPLY, round(median * (o / m0) ** b))


def workload(
    pairs: list[tuple[int, int]],
    rate: float,
    n: int,
    seed: int,
    reply_mean: float | None = None,
    reply_median: float | None = None,
) -> list[tuple[float, int, int, list[int]]]:
    """n requests (arrival s, prompt, reply, unique prompt ids): Poisson at `rate` (inf: all
    at t = 0), lengths drawn from `pairs`, replies mapped onto `reply_mean` / `reply_median`
    (see `reply_map`)."""
    rng = random.Random(seed)
    fit = reply_map([o for _, o in pairs], reply_mean, reply_median)
    t, out = 0.0, []
    for i in range(n):
        p, o = rng.choice(pairs)
        out.append((t, p, fit(o), list(range(i * 10_000, i * 10_000 + p))))
        if rate != float("inf"):
            t += rng.expovariate(rate)
    return out


def poisson_figures(results: list[Result], outs: list[int]) -> dict[str, float]:
    """bench_serving's figures (medians, ms) plus the p90s it does not publish."""
    ttft = [(r.tokens[0] - r.arrival) * 1000 for r in results]
    tpot = [
        (r.tokens[-1] - r.tokens[0]) / (n - 1) * 1000
        for r, n in zip(results, outs, strict=True)
        if n > 1
    ]
    e2e = [(r.tokens[-1] - r.arrival) * 1000 for r in results]
    itl = [g for r in results for g in chunk_gaps(r.tokens)]
    start = min(r.arrival for r in results)
    end = max(r.tokens[-1] for r in results)
    return {
        "median_ttft_ms": statistics.median(ttft),
        "p90_ttft_ms": pct(ttft, 90),
        "median_tpot_ms": statistics.median(tpot),
        "p90_tpot_ms": pct(tpot, 90),
        "median_itl_ms": statistics.median(itl),
        "median_e2e_latency_ms": statistics.median(e2e),
        "output_throughput": sum(outs) / (end - start),
        "request_throughput": len(results) / (end - start),
    }


def implied_reply(pt: dict) -> float:
    """The median reply length the published medians imply: E2E = TTFT + TPOT x (reply - 1)."""
    return 1 + (pt["median_e2e_latency_ms"] - pt["median_ttft_ms"]) / pt["median_tpot_ms"]


def engine_for(ref: dict) -> dict:
    """vLLM v0.6.0's engine options for the reference's command line."""
    return {
        **ref["engine"],
        "chunked_prefill": False,
        "prefix_caching": False,
        "num_scheduler_steps": SCHEDULER_STEPS,
    }


def run(preset: str, engine: dict, reqs: list) -> dict[str, float]:
    """One replica of `preset` in pure simulation; bench_serving's figures."""
    return poisson_figures(simulate(replica_for(preset, **engine), reqs), [r[2] for r in reqs])


def _spread(vals: list[float]) -> str:
    return f"{min(vals):.1f}..{max(vals):.1f}" if len(vals) > 1 else f"{vals[0]:.1f}"


def check_poisson(name: str, seeds: int = 3, lengths: str = "matched", server: bool = False,
                  server_requests: int = 240) -> dict:  # fmt: skip
    """Replay one Poisson reference through its preset; print and return the errors (seed 0's
    figure is the one compared, the others give the workload's sampling spread).

    `lengths`: "matched" maps the sampled replies onto the reference's mean (all-at-once run)
    and each point's implied median; "mean" only scales them to the mean; "raw" keeps them.
    """
    doc = load_poisson()
    ref = doc["references"][name]
    preset, engine = ref["preset"], engine_for(ref)
    off = ref["offline"]
    mean = None if lengths == "raw" else off["output_throughput"] / off["request_throughput"]
    pairs = sharegpt_pairs()
    print(f"reference: {doc['source']}\n  {ref['model']}; {doc['what']}")
    print(f"preset {preset}, engine {engine}; {len(pairs)} ShareGPT length pairs, replies "
          + {"raw": "as sampled", "mean": f"scaled to the reference's mean {mean:.0f}",
             "matched": f"mapped onto the reference's mean {mean:.0f} and each point's median"
             }[lengths])  # fmt: skip
    rows = []
    for pt in [*ref["online"], off]:
        rate = float(pt["request_rate"])
        n = pt["num_prompts"]
        median = None
        if lengths == "matched":  # the all-at-once run: the median of the online points'
            median = implied_reply(pt) if "median_tpot_ms" in pt else statistics.fmean(
                implied_reply(q) for q in ref["online"])  # fmt: skip
        reqs = [workload(pairs, rate, n, 1000 * s + int(min(rate, 99)), mean, median)
                for s in range(seeds)]  # fmt: skip
        figs = [run(preset, engine, r) for r in reqs]
        got = figs[0]
        keys = ONLINE_METRICS if rate != float("inf") else ("output_throughput",)
        err = {k: (got[k] - pt[k]) / pt[k] for k in keys}
        row = {"request_rate": pt["request_rate"], "num_prompts": n, "published": pt,
               "sim": got, "error": err,
               "seed_spread": {k: [f[k] for f in figs] for k in got}}  # fmt: skip
        print(f"== {pt['request_rate']} req/s, {n} prompts")
        for k in keys:
            print(f"   {k:24} vLLM {pt[k]:9.2f}  llmsim {got[k]:9.2f}  error {err[k]:+6.1%}"
                  f"   (seeds: {_spread(row['seed_spread'][k])})")  # fmt: skip
        if rate != float("inf"):
            replies = [r[2] for r in reqs[0]]
            print(f"   {'median_e2e_latency_ms':24} vLLM {pt['median_e2e_latency_ms']:9.2f}  "
                  f"llmsim {got['median_e2e_latency_ms']:9.2f}  not compared: it follows the "
                  f"median reply ({implied_reply(pt):.0f} tokens implied by vLLM's medians, "
                  f"{statistics.median(replies):.0f} in the workload, mean "
                  f"{statistics.fmean(replies):.0f})")  # fmt: skip
            print(
                f"   not published: llmsim TTFT p90 {got['p90_ttft_ms']:.1f} ms, TPOT p90 "
                f"{got['p90_tpot_ms']:.2f} ms, {got['output_throughput']:.0f} tok/s"
            )
        if server and rate != float("inf"):
            row["server"] = server_check(preset, engine, reqs[0][:server_requests])
        rows.append(row)
    worst = max(abs(v) for r in rows[:-1] for v in r["error"].values())
    print(
        f"worst |error| of the medians below saturation {worst:.1%} (bound 20 %); saturated "
        f"throughput {rows[-1]['error']['output_throughput']:+.1%} (bound 10 %)"
    )
    return {"reference": name, "source": doc["source"], "preset": preset, "lengths": lengths,
            "rows": rows}  # fmt: skip


def server_check(preset: str, engine: dict, reqs: list) -> dict:
    """The first requests of the same workload through `llmsim serve --engine vllm` with the
    same options, against their own pure simulation."""
    import psutil
    from engine_fidelity import exact_prompt, open_loop
    from locust_common import Procs

    outs = [r[2] for r in reqs]
    sim = poisson_figures(simulate(replica_for(preset, **engine), reqs), outs)
    procs = Procs()
    try:
        url = procs.start_target(
            "-m", "llmsim", "serve", "--port", "0", "--engine", "vllm", "--seed", "1",
            "--preset", preset, "--no-enable-chunked-prefill", "--no-enable-prefix-caching",
            "--num-scheduler-steps", str(engine["num_scheduler_steps"]),
            "--max-num-batched-tokens", str(engine["max_num_batched_tokens"]),
            "--max-model-len", str(engine["max_model_len"]),
        )  # fmt: skip
        others = round(psutil.cpu_percent(interval=0.5) * psutil.cpu_count(), 1)
        prompts = [exact_prompt(p, 9_000_000 + k) for k, (_, p, _, _) in enumerate(reqs)]
        failed: list[tuple[int, int, int]] = []
        served, _cpu = open_loop(url, [r[0] for r in reqs], prompts, outs, failed)
    finally:
        procs.close()
    if failed or len(served) != len(reqs):
        print(f"   server: FAILED {failed[:5]} ({len(served)}/{len(reqs)} complete)")
        return {"failed": failed, "served": len(served)}
    srv = poisson_figures(served, outs)
    err = {k: (srv[k] - sim[k]) / sim[k] for k in ONLINE_METRICS}
    print(f"   server, first {len(reqs)} requests: " + ", ".join(
        f"{k} {srv[k]:.1f} ({err[k]:+.1%} vs their simulation)" for k in ONLINE_METRICS)
        + f"; every reply complete; others' CPU {others}%")  # fmt: skip
    return {"n": len(reqs), "server": srv, "sim": sim, "error": err, "others_cpu_pct": others}
