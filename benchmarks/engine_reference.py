"""Engine mode against a published real-GPU curve: Llama-3-8B on one A100-80GB, vLLM v0.6.0.

    python benchmarks/engine_reference.py [--reference a100|h100|all] [--server] [--fit]
                                          [--fit-frontend]

The reference (benchmarks/data/lambda_vllm_a100_llama3_8b.json, from LambdaLabsML/vllm-benchmark
on GitHub, the files and commit named in it): vLLM's own `benchmark_serving.py` run against
`vllm serve meta-llama/Meta-Llama-3-8B-Instruct` on one A100-80GB SXM (BF16, TP 1, vLLM v0.6.0,
`--num-scheduler-steps 10`, `--max-model-len 2000`, `--max-num-seqs 256`), ShareGPT prompts, all
N prompts sent at once (`--request-rate inf`) for N = 10, 20, 40, 80, 160 and 320: from a light
batch to a saturated one. Each file gives the per-request prompt and reply lengths, so the very
same workload is replayed here.

The replay: N requests at t = 0 with those lengths (a reply of 0 tokens is one token that
printed nothing, as in vLLM; its TTFT counts as 0 like the benchmark's), on the preset with the
engine options vLLM v0.6.0 ran with: `--num-scheduler-steps 10` (rounds of 10 decode steps,
tokens streamed at each round's end, prefills admitted between rounds), which excludes chunked
prefill, so `--no-enable-chunked-prefill`, whose budget vLLM sets to max(max_model_len, 2048) =
2048 tokens, and `--no-enable-prefix-caching`, V0's default; and the preset's front end (vLLM's
API server taking the burst in, llmsim/engine/frontend.py).
Figures are computed as `benchmark_serving.py` does: TTFT mean / median over every request, TPOT
= (latency - TTFT) / (output - 1) over requests with more than one token, ITL median over the
gaps between a reply's successive chunks (tokens that arrive together are one chunk, as vLLM
sends a round's tokens in one delta), output throughput = output tokens / duration. With
--server the replay also goes through `llmsim serve --engine vllm` with the same options, read
by an open-loop raw-socket client.

The tails, printed under each point's medians: TTFT p90 and p99, TPOT p90 and p99 and ITL p99,
numpy-style percentiles (linear interpolation) as benchmark_serving.py takes them, against the
reference's own per-request TTFTs and TPOTs and its published p99s (kept in the data files by
benchmarks/lambda_tails_extract.py; TPOT p90 only where the file's inter-token gaps were read).

--fit refits the preset's step_time_scale to the median TPOT; --fit-frontend fits the front
end's cost per request from the published earliest first token of each point (the first token's
delay less the replay's first step, over N: least squares weighted by N); --fit-prefill fits the
preset's prefill_scale to the spacing of the first-token groups of the prefill phase at
N >= 80 (prefill_spacing), printing each point's published and replayed spacing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_sim import (
    Result,
    add_handover_args,
    handover_order,
    pct,
    replica_for,
    set_handover,
    simulate,
)

from llmsim.engine.scheduler import Replica
from llmsim.engine.steptime import StepTimeModel, load_preset

DATA = Path(__file__).resolve().parent / "data"
# The references: one file per GPU, each naming the preset it checks and vLLM's options.
REFERENCES = {
    "a100": DATA / "lambda_vllm_a100_llama3_8b.json",
    "h100": DATA / "lambda_vllm_h100_llama3_8b.json",
}

# The Poisson-arrival references (benchmarks/engine_reference_poisson.py), by the same names as
# in benchmarks/data/sglang_vllm060_poisson.json.
POISSON_REFERENCES = ("poisson-a100", "poisson-h100-70b")

# vLLM v0.6.0's --num-scheduler-steps in every reference run.
SCHEDULER_STEPS = 10


def engine_options(ref: dict) -> dict:
    """vLLM v0.6.0's engine options in the reference run (see the module docstring)."""
    return {
        **ref["engine"],
        "chunked_prefill": False,
        "prefix_caching": False,
        "num_scheduler_steps": SCHEDULER_STEPS,
    }


def serve_flags(ref: dict) -> tuple[str, ...]:
    """The same options as `llmsim serve` flags."""
    e = ref["engine"]
    return (
        "--no-enable-chunked-prefill", "--no-enable-prefix-caching",
        "--num-scheduler-steps", str(SCHEDULER_STEPS),
        "--max-num-batched-tokens", str(e["max_num_batched_tokens"]),
        "--max-model-len", str(e["max_model_len"]),
        "--frontend-handover-order", handover_order(),
    )  # fmt: skip


METRICS = (
    "output_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
    "median_itl_ms",
)  # fmt: skip
# The tails: TTFT p90 from the file's per-request TTFTs, TPOT p90 from its per-request TPOTs
# where its inter-token gaps were read (benchmarks/lambda_tails_extract.py), the p99s as
# published; each a percentile as benchmark_serving.py takes it (numpy's, linear interpolation).
TAILS = ("p90_ttft_ms", "p99_ttft_ms", "p90_tpot_ms", "p99_tpot_ms", "p99_itl_ms")
# Tokens that reach the client within this of each other arrived as one chunk.
CHUNK_S = 0.001


def load_reference(name: str = "a100") -> dict:
    """A reference file: its source, what it measured, its preset and one entry per N."""
    return json.loads(REFERENCES[name].read_text())


def chunk_gaps(tokens: list[float]) -> list[float]:
    """The gaps (ms) between a reply's successive chunks: tokens that reach the client within
    CHUNK_S of each other are one chunk, as a client timing SSE events sees them."""
    gaps, last = [], tokens[0]
    for t in tokens[1:]:
        if t - last > CHUNK_S:
            gaps.append((t - last) * 1000)
            last = t
    return gaps


def figures(results: list[Result], outs: list[int], start: float = 0.0) -> dict[str, float]:
    """`benchmark_serving.py`'s figures for replies of the published lengths `outs`."""
    ttfts, tpots, itls, total = [], [], [], 0
    end = start
    for r, n in zip(results, outs, strict=True):
        end = max(end, r.tokens[-1])
        total += n
        # A reply of 0 tokens printed nothing: the benchmark records no first token (TTFT 0).
        ttfts.append(0.0 if n == 0 else (r.tokens[0] - start) * 1000)
        if n > 1:
            tpots.append((r.tokens[-1] - r.tokens[0]) / (n - 1) * 1000)
        itls.extend(chunk_gaps(r.tokens))
    return {
        "output_throughput": total / (end - start),
        "mean_ttft_ms": statistics.fmean(ttfts),
        "median_ttft_ms": statistics.median(ttfts),
        "mean_tpot_ms": statistics.fmean(tpots),
        "median_tpot_ms": statistics.median(tpots),
        "median_itl_ms": statistics.median(itls) if itls else 0.0,
        "p90_ttft_ms": pct(ttfts, 90),
        "p99_ttft_ms": pct(ttfts, 99),
        "p90_tpot_ms": pct(tpots, 90),
        "p99_tpot_ms": pct(tpots, 99),
        "p99_itl_ms": pct(itls, 99) if itls else 0.0,
    }


def published_tails(point: dict) -> dict[str, float]:
    """The reference's tails at one point, those it has (TAILS): TTFT p90 from `ttfts_ms`, TPOT
    p90 from `tpots_ms` (where present), the p99s as published."""
    out = {k: point[k] for k in ("p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms") if k in point}
    if "ttfts_ms" in point:
        out["p90_ttft_ms"] = pct(point["ttfts_ms"], 90)
    if "tpots_ms" in point:
        out["p90_tpot_ms"] = pct([t for t in point["tpots_ms"] if t is not None], 90)
    return out


def replay_sim(
    preset: str,
    engine: dict,
    ins: list[int],
    outs: list[int],
    raw_scale: float | None = None,
    per_seq_ms: float = 0.0,
    prefill_scale: float | None = None,
) -> list[Result]:
    """All requests at t = 0 through one replica of `preset` with `engine` options, pure
    simulation. With `raw_scale`, the preset's uncalibrated step time times that factor, plus
    `per_seq_ms` for each sequence in a step (and the preset's own prefill_scale); with
    `prefill_scale`, the preset's step time with that prefill_scale instead of its own."""
    rep = replica_for(preset, **engine)
    if raw_scale is not None:
        raw = StepTimeModel.from_dict(load_preset(preset).raw["step_time"])
        model = raw.scaled(raw_scale).with_per_seq(per_seq_ms)
        rep = Replica(rep.config, model.with_prefill_scale(rep.step_time.prefill_scale))
    if prefill_scale is not None:
        rep = Replica(rep.config, rep.step_time.with_prefill_scale(prefill_scale))
    reqs = [
        (0.0, p, max(1, o), list(range(i * 10_000, i * 10_000 + p)))
        for i, (p, o) in enumerate(zip(ins, outs, strict=True))
    ]
    return simulate(rep, reqs)


def replay_server(
    url: str, ins: list[int], outs: list[int]
) -> tuple[list[Result], list[tuple[int, int, int]]]:
    """All requests at once through a running `llmsim serve --engine vllm`, raw sockets: the
    complete replies, and (index, status, tokens) of any that were not."""
    from engine_fidelity import exact_prompt, open_loop

    # Prompts unlike those of every other point (the reference ran without a prefix cache).
    prompts = [exact_prompt(p, 7_000_000 + len(ins) * 1000 + i) for i, p in enumerate(ins)]
    failed: list[tuple[int, int, int]] = []
    served, _cpu = open_loop(url, [0.0] * len(ins), prompts, [max(1, o) for o in outs], failed)
    return served, failed


def tpot_rms(preset: str, engine: dict, points: list[dict], scale: float, per_seq: float) -> float:
    """RMS of log(median TPOT / published) over the points, at that calibration."""
    sq = 0.0
    for pt in points:
        got = figures(replay_sim(preset, engine, pt["input_lens"], pt["output_lens"], scale,
                                 per_seq), pt["output_lens"])  # fmt: skip
        sq += math.log(got["median_tpot_ms"] / pt["median_tpot_ms"]) ** 2
    return math.sqrt(sq / len(points))


def golden_min(err: Callable[[float], float], lo: float, hi: float) -> float:
    """The x in lo ... hi that minimises `err` (golden-section search to 0.004), rounded to
    0.005: how every factor of the fits is searched."""
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = err(a), err(b)
    while hi - lo > 0.004:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = err(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = err(b)
    return round(round((lo + hi) / 2 / 0.005) * 0.005, 3)


# The costs per sequence a step tried by --fit (ms): 0 to 50 µs.
PER_SEQ_GRID = tuple(0.0025 * k for k in range(21))


def fit_scale(preset: str, engine: dict, points: list[dict]) -> tuple[float, float, float]:
    """The calibration that best matches the published median TPOT over the whole curve (least
    squares of the log ratios): a factor on the uncalibrated step time and a cost per sequence
    in a step (the LM head, sampler and host work that grow with the batch), and its RMS error.

    For each cost per sequence of PER_SEQ_GRID, the factor by golden-section search in 0.9 ...
    1.3; the pair with the smallest error wins, the factor rounded to 0.005. The error of the
    uncalibrated preset and of the factor alone are printed beside it."""
    print(f"uncalibrated (1.0): RMS error of median TPOT "
          f"{tpot_rms(preset, engine, points, 1.0, 0.0):.1%}")  # fmt: skip
    best = (1.0, 0.0, float("inf"))
    for c in PER_SEQ_GRID:
        f = golden_min(lambda x, c=c: tpot_rms(preset, engine, points, x, c), 0.9, 1.3)
        rms = tpot_rms(preset, engine, points, f, c)
        print(f"  {c * 1000:4.1f} µs a sequence: factor {f}, RMS error {rms:.2%}")
        if rms < best[2] - 1e-9:
            best = (f, round(c, 4), rms)
    return best


def fit_frontend(preset: str, engine: dict, points: list[dict]) -> float:
    """The front end's cost per request (ms) that the published earliest first tokens give.

    With a cost c per request, vLLM's API server hands a burst of N over at about N c (its
    intake is serial and each hand-over queues behind it), so the earliest first token comes
    that much after the replay's own earliest first token without a front end (the end of
    the step after the first prefill step, multi-step holding first tokens until then):
    c = (earliest first token - the replay's) / N, one estimate per point, combined by least
    squares weighted by N.
    """
    num = den = 0.0
    off = {**engine, "frontend_s_per_request": 0.0, "frontend_s_per_prompt_token": 0.0}
    for pt in points:
        if "earliest_ttft_s" not in pt:
            continue
        n = pt["num_prompts"]
        first = min(r.tokens[0] for r in replay_sim(preset, off, pt["input_lens"],
                                                    pt["output_lens"]))  # fmt: skip
        delay = pt["earliest_ttft_s"] - first
        print(f"  N = {n}: earliest first token {pt['earliest_ttft_s'] * 1000:.0f} ms, replayed "
              f"without a front end {first * 1000:.0f} ms: {delay / n * 1000:.2f} ms a "
              "request")  # fmt: skip
        num += n * delay
        den += n * n
    return num / den * 1000 if den else 0.0


# First tokens closer than this to a group's first one are one prefill step's (no prefill step
# of these prompts is shorter; a step's first tokens reach the client within ~8 ms).
GROUP_MS = 20.0
# A gap longer than this is a decode round, not a prefill step: the prefill phase has ended
# (at N = 320 the last 64 requests wait for running ones to finish).
ROUND_MS = 250.0
# The points whose prefill phase is long enough to time (N = 80, 160, 320: 12-40 groups).
SPACING_MIN_N = 80


def prefill_groups(ttfts_ms: list[float], outs: list[int]) -> list[tuple[float, list[int]]]:
    """The groups of first tokens (mean time in ms, request indices) of a burst's prefill
    phase whose gaps time one prefill step each.

    In vLLM V0 without chunked prefill a burst is prefilled in steps of up to the token
    budget before any decode round, and each step's first tokens reach the client together,
    when the next step ends; so in the steady part of the phase the gap between two groups is
    the prefill step after the later one. Left out: the first two groups (the burst still
    reaching the engine), everything from the first gap of a decode round on (ROUND_MS), and
    the phase's last group (its first tokens wait for a decode step). Replies of 0 tokens have
    no first token."""
    idx = sorted((i for i, o in enumerate(outs) if o > 0), key=lambda i: ttfts_ms[i])
    groups: list[list[int]] = [[idx[0]]]
    for i in idx[1:]:
        if ttfts_ms[i] - ttfts_ms[groups[-1][0]] > GROUP_MS:
            groups.append([i])
        else:
            groups[-1].append(i)
    at = [(statistics.fmean(ttfts_ms[i] for i in g), g) for g in groups]
    end = len(at)
    for k in range(2, len(at) - 1):
        if at[k + 1][0] - at[k][0] > ROUND_MS:
            end = k + 1
            break
    return at[2 : end - 1]


def prefill_spacing(ttfts_ms: list[float], outs: list[int]) -> list[float]:
    """The gaps (ms) between successive prefill groups (prefill_groups): one prefill step each."""
    at = [t for t, _ in prefill_groups(ttfts_ms, outs)]
    return [b - a for a, b in itertools.pairwise(at)]


def spacing_error(preset: str, engine: dict, points: list[dict], prefill_scale: float) -> float:
    """RMS of log(mean replayed group spacing / published) over the points that time it."""
    sq, n = 0.0, 0
    for pt in points:
        if pt["num_prompts"] < SPACING_MIN_N or "ttfts_ms" not in pt:
            continue
        ins, outs = pt["input_lens"], pt["output_lens"]
        res = replay_sim(preset, engine, ins, outs, prefill_scale=prefill_scale)
        sim = prefill_spacing([r.tokens[0] * 1000 for r in res], outs)
        pub = prefill_spacing(pt["ttfts_ms"], outs)
        sq += math.log(statistics.fmean(sim) / statistics.fmean(pub)) ** 2
        n += 1
    return math.sqrt(sq / n) if n else float("nan")


def print_spacing(preset: str, engine: dict, points: list[dict]) -> None:
    """Each timed point's mean group spacing, published and replayed (the preset as it is)."""
    for pt in points:
        if pt["num_prompts"] < SPACING_MIN_N or "ttfts_ms" not in pt:
            continue
        outs = pt["output_lens"]
        res = replay_sim(preset, engine, pt["input_lens"], outs)
        firsts = [r.tokens[0] * 1000 for r in res]
        sim = prefill_spacing(firsts, outs)
        pub = prefill_spacing(pt["ttfts_ms"], outs)
        m_pub, m_sim = statistics.fmean(pub), statistics.fmean(sim)
        ins = pt["input_lens"]
        tok_pub = statistics.fmean(sum(ins[i] for i in g) for _, g in
                                   prefill_groups(pt["ttfts_ms"], outs))  # fmt: skip
        tok_sim = statistics.fmean(sum(ins[i] for i in g) for _, g in
                                   prefill_groups(firsts, outs))  # fmt: skip
        print(f"  N = {pt['num_prompts']}: prefill groups {m_pub:.1f} ms apart ({len(pub)} gaps, "
              f"median {statistics.median(pub):.1f}, {tok_pub:.0f} prompt tokens a group), "
              f"replayed {m_sim:.1f} ms ({len(sim)} gaps, median {statistics.median(sim):.1f}, "
              f"{tok_sim:.0f} tokens): {m_sim / m_pub - 1:+.1%}")  # fmt: skip


def fit_prefill(preset: str, engine: dict, points: list[dict]) -> tuple[float, float]:
    """The prefill_scale whose replayed prefill-group spacing best matches the published one
    (least squares of the log ratios of the means, golden-section search in 0.6 ... 1.2,
    rounded to 0.005), and its RMS error; the preset's own value's error is printed."""
    print("the preset as it is:")
    print_spacing(preset, engine, points)
    f = golden_min(lambda x: spacing_error(preset, engine, points, x), 0.6, 1.2)
    return f, spacing_error(preset, engine, points, f)


def errors(got: dict[str, float], ref: dict) -> dict[str, float]:
    """Relative error of each figure against the published one (+ = llmsim higher)."""
    return {k: (got[k] - ref[k]) / ref[k] for k in METRICS}


def tail_errors(got: dict[str, float], ref: dict[str, float]) -> dict[str, float]:
    """Relative error of each tail the reference has (+ = llmsim higher)."""
    return {k: (got[k] - ref[k]) / ref[k] for k in TAILS if k in ref}


def fmt_tails(tag: str, f: dict[str, float], err: bool = False) -> str:
    """One line of tails (figures in ms, or with `err` relative errors); n/a where absent."""

    def v(k: str, width: int, digits: int) -> str:
        if k not in f:
            return f"{'n/a':>{width}}"
        return f"{f[k]:+{width}.1%}" if err else f"{f[k]:{width}.{digits}f}"

    unit = "" if err else " ms"
    return (
        f"{tag:>16} TTFT p90 {v('p90_ttft_ms', 7, 0)} p99 {v('p99_ttft_ms', 7, 0)}{unit}  "
        f"TPOT p90 {v('p90_tpot_ms', 6, 1)} p99 {v('p99_tpot_ms', 6, 1)}{unit}  "
        f"ITL p99 {v('p99_itl_ms', 7, 1)}{unit}"
    )


def fmt(tag: str, f: dict[str, float]) -> str:
    """One line of the medians and means: output throughput (tok/s), TTFT, TPOT, ITL (ms)."""
    return (
        f"{tag:>16} {f['output_throughput']:7.0f} tok/s  TTFT mean {f['mean_ttft_ms']:7.0f} "
        f"median {f['median_ttft_ms']:7.0f} ms  TPOT mean {f['mean_tpot_ms']:6.1f} "
        f"median {f['median_tpot_ms']:6.1f} ms  ITL median {f['median_itl_ms']:6.1f} ms"
    )


def fmt_err(tag: str, e: dict[str, float]) -> str:
    """One line of `errors`: each of `fmt`'s figures as a relative error, in the same columns."""
    return (
        f"{tag:>16} {e['output_throughput']:+7.1%}         TTFT mean {e['mean_ttft_ms']:+7.1%}"
        f" median {e['median_ttft_ms']:+7.1%}     TPOT mean {e['mean_tpot_ms']:+6.1%}"
        f" median {e['median_tpot_ms']:+6.1%}  ITL median {e['median_itl_ms']:+7.1%}"
    )


def check(
    name: str,
    preset: str | None,
    server: bool,
    fit: bool,
    fit_fe: bool = False,
    fit_pf: bool = False,
) -> dict:
    """Replay one reference through its preset (or `preset`); print and return the errors."""
    ref = load_reference(name)
    preset = preset or ref["preset"]
    engine = engine_options(ref)
    print(f"reference: {ref['source']}\n  {ref['what']}")
    cal = load_preset(preset).raw.get("calibration", {})
    fe = load_preset(preset)
    print(f"preset {preset}: step_time_scale {cal.get('step_time_scale', 1.0)}, prefill_scale "
          f"{cal.get('prefill_scale', 1.0)}, front end "
          f"{fe.frontend_ms_per_request} ms a request + {fe.frontend_us_per_prompt_token} µs a "
          f"prompt token; --num-scheduler-steps {engine['num_scheduler_steps']}")  # fmt: skip
    if fit_pf:
        f, rms = fit_prefill(preset, engine, ref["points"])
        print(f"fitted prefill_scale {f} (RMS error of the mean prefill-group spacing {rms:.1%})")
        return {"reference": name, "preset": preset, "prefill_scale": f, "rms": rms}
    if fit_fe:
        c = fit_frontend(preset, engine, ref["points"])
        print(f"fitted front end: {c:.2f} ms a request")
        return {"reference": name, "preset": preset, "frontend_ms_per_request": c}
    if fit:
        f, c, rms = fit_scale(preset, engine, ref["points"])
        print(f"fitted step_time_scale {f}, per_sequence_ms {c} (RMS error of median TPOT over "
              f"the curve {rms:.1%})")  # fmt: skip
        return {"reference": name, "preset": preset, "fitted_scale": f, "per_sequence_ms": c,
                "rms": rms}  # fmt: skip
    procs = url = None
    if server:
        from locust_common import Procs

        procs = Procs()
        url = procs.start_target(
            "-m", "llmsim", "serve", "--port", "0", "--engine", "vllm", "--seed", "1",
            "--preset", preset, *serve_flags(ref),
        )  # fmt: skip
    rows = []
    gpu = name.upper()
    try:
        for point in ref["points"]:
            n, ins, outs = point["num_prompts"], point["input_lens"], point["output_lens"]
            sim = figures(replay_sim(preset, engine, ins, outs), outs)
            pub = published_tails(point)
            row = {"num_prompts": n, "published": {k: point[k] for k in METRICS}, "sim": sim,
                   "sim_error": errors(sim, point), "published_tails": pub,
                   "sim_tail_error": tail_errors(sim, pub)}  # fmt: skip
            print(f"== N = {n} prompts at once ({sum(ins):,} prompt / {sum(outs):,} reply tokens)")
            print(fmt(f"vLLM ({gpu})", point))
            print(fmt("llmsim sim", sim))
            print(fmt_err("error", row["sim_error"]))
            print(fmt_tails("tails: vLLM", pub))
            print(fmt_tails("llmsim sim", sim))
            print(fmt_tails("error", row["sim_tail_error"], err=True))
            if url is not None:
                others = round(psutil.cpu_percent(interval=0.5) * psutil.cpu_count(), 1)
                served, failed = replay_server(url, ins, outs)
                if failed:
                    print(f"{'':>16} FAILED (index, status, tokens): {failed[:10]}")
                    rows.append({**row, "failed": failed})
                    continue
                start = min(r.arrival for r in served)
                # How long the client took to send the burst: a front end whose backlog drains
                # between two sends hands the first ones over early (llmsim/engine/frontend.py).
                spread_ms = (max(r.arrival for r in served) - start) * 1000
                srv = figures(served, outs, start=start)
                row.update(server=srv, server_error=errors(srv, point), others_cpu_pct=others,
                           send_spread_ms=round(spread_ms, 1),
                           server_tail_error=tail_errors(srv, pub))  # fmt: skip
                print(fmt("llmsim serve", srv))
                print(fmt_err("error", row["server_error"]))
                print(fmt_tails("serve tails", srv))
                print(fmt_tails("error", row["server_tail_error"], err=True))
                print(f"{'':>16} every reply complete; sent over {spread_ms:.0f} ms; others' "
                      f"CPU {others}%")  # fmt: skip
            rows.append(row)
    finally:
        if procs is not None:
            procs.close()
    worst = {k: max(abs(r["sim_error"][k]) for r in rows) for k in METRICS}
    print("worst |error| over the curve (sim): "
          + ", ".join(f"{k} {v:.1%}" for k, v in worst.items()))  # fmt: skip
    print("worst |error| of the tails (sim): " + worst_tails(rows, "sim_tail_error"))
    if any("server_tail_error" in r for r in rows):
        print("worst |error| of the tails (server): " + worst_tails(rows, "server_tail_error"))
    return {"reference": name, "source": ref["source"], "preset": preset, "rows": rows}


def worst_tails(rows: list[dict], key: str) -> str:
    """Each tail's largest |error| over the rows that have it, with its N."""
    parts = []
    for k in TAILS:
        have = [(abs(r[key][k]), r["num_prompts"]) for r in rows if k in r.get(key, {})]
        if have:
            e, n = max(have)
            parts.append(f"{k} {e:.1%} (N = {n}; {len(have)} points)")
    return ", ".join(parts) or "none published"


def main() -> int:
    """Check (or with a --fit option, fit against) each chosen reference, the Poisson ones
    through engine_reference_poisson.py (skipped by the fits); every result to --json."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", choices=[*REFERENCES, *POISSON_REFERENCES, "all"],
                   default="all")  # fmt: skip
    p.add_argument("--preset", default=None, help="instead of the reference's own preset")
    p.add_argument("--server", action="store_true", help="also replay through llmsim serve")
    p.add_argument("--fit", action="store_true", help="fit the preset's step_time_scale")
    p.add_argument("--fit-frontend", action="store_true", help="fit the front end's cost")
    p.add_argument("--fit-prefill", action="store_true", help="fit the preset's prefill_scale")
    p.add_argument(
        "--poisson-seeds",
        type=int,
        default=3,
        help="workload seeds per Poisson point (the first is compared)",
    )
    p.add_argument(
        "--poisson-lengths",
        choices=("matched", "mean", "raw"),
        default="matched",
        help="Poisson references: replies mapped onto the reference's mean and "
        "median (default), scaled to its mean, or as sampled",
    )
    add_handover_args(p)
    p.add_argument("--json", type=Path, default=Path("/tmp/engine_reference.json"))
    a = p.parse_args()
    set_handover(a.frontend_handover_order, a.handover_seed)
    names = [*REFERENCES, *POISSON_REFERENCES] if a.reference == "all" else [a.reference]
    # The fits use the all-at-once runs' per-request data.
    if a.fit or a.fit_frontend or a.fit_prefill:
        names = [n for n in names if n in REFERENCES]
    out = []
    for name in names:
        if name in POISSON_REFERENCES:
            from engine_reference_poisson import check_poisson

            out.append(check_poisson(name, a.poisson_seeds, a.poisson_lengths, a.server))
        else:
            out.append(check(name, a.preset, a.server, a.fit, a.fit_frontend, a.fit_prefill))
    a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
