"""Does vLLM's intake cost per request depend on the burst size? Per-N figures and fits.

    python benchmarks/engine_frontend_burst.py [--reference a100 h100]   # ~2 s

The front end (llmsim/engine/frontend.py) takes a burst of N requests in serially and hands it to
the engine together, after N times one cost per request (`frontend.ms_per_request`), fitted by
`engine_reference.py --fit-frontend` over every N at once. This script asks whether the
published earliest first tokens support a cost that depends on N, point by point.

For each all-at-once point of the LambdaLabs references
(benchmarks/data/lambda_vllm_{a100,h100}_llama3_8b.json: vLLM v0.6.0, N prompts sent at once)
it prints the published earliest first token (the smallest per-request TTFT of a reply with a
first token, `ttfts_ms`; the H100 file has no `earliest_ttft_s` at N = 20 ... 160, but every
request's TTFT), the first prefill group's mean and spread (first tokens within GROUP_MS of the
earliest), the replay's earliest first token without a front end (FIFO, as `fit_frontend`
replays, and with the requests handed over in the published order of their prefill groups), and
the delay between them: the front end's hand-over time at that N, and over N the cost per
request that point implies.

Then it fits the delay D(N) with four candidates, least squares on the delay in ms (what
`fit_frontend` minimises):

- constant: every request costs a, D = a N (the model as it is);
- growing: request i of a burst (i = 0 ... N - 1, the requests already in intake before it)
  costs a + b i, D = a N + b N (N - 1) / 2, as an asyncio loop whose every pass does work for
  each task in flight would;
- start-up: a fixed cost s once a burst starts, D = s + a N;
- per-token: a cost t per prompt token besides a, D = a N + t (the burst's prompt tokens): the
  mean prompt differs by N (137 to 244 tokens), so a per-token cost would make the per-request
  figure vary with N too.

Every param is constrained to >= 0 (a cost that shrinks with the queue, a negative start-up or
cost per request is not a front end; the unconstrained fit is printed under it, "free", where
it differs). Each candidate's RMS error over the six points (ms, and relative
to the earliest first token) and its leave-one-out RMS error (each point predicted by the fit
on the other five: two-term fits on six noisy points always fit better in-sample) are printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_handover import published_order
from engine_reference import GROUP_MS, REFERENCES, engine_options, load_reference, replay_sim
from engine_sim import replica_for, simulate

from llmsim.engine.steptime import load_preset

# The candidates: name -> (the columns of D = columns . params for a burst of n requests of
# `tokens` prompt tokens in all, and the params' names).
CANDIDATES = {
    "constant": (lambda n, tokens: [n], ("a ms",)),
    "growing": (lambda n, tokens: [n, n * (n - 1) / 2], ("a ms", "b ms")),
    "start-up": (lambda n, tokens: [1.0, n], ("s ms", "a ms")),
    "per-token": (lambda n, tokens: [n, tokens / 1000], ("a ms", "t µs")),
}


def earliest_first_token_ms(point: dict) -> float:
    """The published earliest first token (ms after the send): the smallest TTFT of a reply
    with a first token, from the per-request TTFTs where the file has them."""
    if "ttfts_ms" in point:
        return min(t for t, o in zip(point["ttfts_ms"], point["output_lens"], strict=True) if o)
    return point["earliest_ttft_s"] * 1000


def first_group(point: dict) -> tuple[float, float, int]:
    """The published first prefill group: its mean first token (ms), its spread (ms) and its
    size (first tokens within GROUP_MS of the earliest)."""
    e = earliest_first_token_ms(point)
    g = [t for t, o in zip(point["ttfts_ms"], point["output_lens"], strict=True)
         if o and t - e <= GROUP_MS]  # fmt: skip
    return statistics.fmean(g), max(g) - min(g), len(g)


def replay_earliest_ms(preset: str, engine: dict, point: dict, order: str) -> float:
    """The replay's earliest first token (ms) with no front end: the requests handed to the
    engine at t = 0 in send order ("fifo") or in the published order ("published")."""
    ins, outs = point["input_lens"], point["output_lens"]
    off = {**engine, "frontend_s_per_request": 0.0, "frontend_s_per_prompt_token": 0.0}
    if order == "fifo":
        res = replay_sim(preset, off, ins, outs)
        return min(r.tokens[0] for r, o in zip(res, outs, strict=True) if o) * 1000
    idx = published_order(point["ttfts_ms"], outs)
    reqs = [(0.0, ins[i], max(1, outs[i]), list(range(i * 10_000, i * 10_000 + ins[i])))
            for i in idx]  # fmt: skip
    res = simulate(replica_for(preset, **off), reqs)
    return min(r.tokens[0] for r, i in zip(res, idx, strict=True) if outs[i]) * 1000


def fit(
    kind: str, ns: list[int], tokens: list[int], delays: list[float], free: bool = False
) -> list[float]:
    """Least squares of the delays (ms) on one candidate's columns, every param >= 0 (a cost is
    not negative: the best of the fits on each subset of the columns whose params all are),
    unless `free`."""
    cols = CANDIDATES[kind][0]
    x = np.array([cols(float(n), float(t)) for n, t in zip(ns, tokens, strict=True)])
    y = np.array(delays)
    if free:
        return [float(v) for v in np.linalg.lstsq(x, y, rcond=None)[0]]
    best, best_sq = [0.0] * x.shape[1], float(np.dot(y, y))
    for size in range(1, x.shape[1] + 1):
        for keep in itertools.combinations(range(x.shape[1]), size):
            q = np.linalg.lstsq(x[:, keep], y, rcond=None)[0]
            if (q < 0).any():
                continue
            p = np.zeros(x.shape[1])
            p[list(keep)] = q
            sq = float(np.sum((x @ p - y) ** 2))
            if sq < best_sq - 1e-12:
                best, best_sq = [float(v) for v in p], sq
    return best


def predict(kind: str, params: list[float], n: int, tokens: int) -> float:
    """The candidate's delay (ms) for a burst of n requests of `tokens` prompt tokens."""
    return float(np.dot(CANDIDATES[kind][0](float(n), float(tokens)), params))


def rms(values: list[float]) -> float:
    """Root mean square."""
    return math.sqrt(statistics.fmean(v * v for v in values))


def _errors(
    kind: str,
    ns: list[int],
    tokens: list[int],
    delays: list[float],
    earliest: list[float],
    free: bool,
) -> dict:
    """One candidate's fit (constrained, or `free`), its residuals (ms), RMS errors in ms and
    relative to the earliest first token, and the same for leave-one-out predictions."""
    p = fit(kind, ns, tokens, delays, free)
    res = [predict(kind, p, n, t) - d for n, t, d in zip(ns, tokens, delays, strict=True)]
    loo = []
    for k in range(len(ns)):
        rest = [j for j in range(len(ns)) if j != k]
        pk = fit(kind, [ns[j] for j in rest], [tokens[j] for j in rest],
                 [delays[j] for j in rest], free)  # fmt: skip
        loo.append(predict(kind, pk, ns[k], tokens[k]) - delays[k])
    return {
        "params": dict(zip(CANDIDATES[kind][1], p, strict=True)),
        "residuals_ms": res,
        "rms_ms": rms(res),
        "rms_rel": rms([r / e for r, e in zip(res, earliest, strict=True)]),
        "loo_residuals_ms": loo,
        "loo_rms_ms": rms(loo),
        "loo_rms_rel": rms([r / e for r, e in zip(loo, earliest, strict=True)]),
    }


def candidates(
    ns: list[int], tokens: list[int], delays: list[float], earliest: list[float]
) -> dict[str, dict]:
    """Each candidate's constrained fit and errors (_errors), with its unconstrained fit's
    under "free" where that differs."""
    out = {}
    for kind in CANDIDATES:
        out[kind] = _errors(kind, ns, tokens, delays, earliest, False)
        free = _errors(kind, ns, tokens, delays, earliest, True)
        if free["params"] != out[kind]["params"]:
            out[kind]["free"] = free
    return out


def fmt_fit(f: dict) -> str:
    """One fit's params and errors on a line."""
    params = ", ".join(f"{k} {v:.3g}" for k, v in f["params"].items())
    res = " ".join(f"{r:+.0f}" for r in f["residuals_ms"])
    return (f"{params:22} RMS {f['rms_ms']:5.1f} ms ({f['rms_rel']:5.1%} of the earliest first "
            f"token), leave-one-out {f['loo_rms_ms']:5.1f} ms ({f['loo_rms_rel']:5.1%}); "
            f"residuals {res} ms")  # fmt: skip


def study(name: str) -> dict:
    """One reference's per-N figures and the candidates' fits (printed and returned)."""
    ref = load_reference(name)
    preset, engine = ref["preset"], engine_options(ref)
    print(f"== {name.upper()} ({preset}, front end {load_preset(preset).frontend_ms_per_request} "
          f"ms a request): {ref['source']}")  # fmt: skip
    rows = []
    for pt in ref["points"]:
        n = pt["num_prompts"]
        e = earliest_first_token_ms(pt)
        g_mean, g_spread, g_size = first_group(pt)
        fifo = replay_earliest_ms(preset, engine, pt, "fifo")
        pub = replay_earliest_ms(preset, engine, pt, "published")
        rows.append({"n": n, "prompt_tokens": sum(pt["input_lens"]), "earliest_ms": e,
                     "first_group_ms": g_mean, "first_group_size": g_size,
                     "replay_fifo_ms": fifo, "replay_published_ms": pub,
                     "delay_ms": e - fifo, "delay_published_ms": e - pub})  # fmt: skip
        print(f"  N = {n:3d}: earliest first token {e:7.1f} ms (first group: {g_size:3d} requests, "
              f"mean {g_mean:7.1f}, spread {g_spread:4.1f} ms); replay without a front end "
              f"{fifo:6.1f} ms (published order {pub:6.1f}): hand-over {e - fifo:6.1f} ms, "
              f"{(e - fifo) / n:.2f} ms a request ({(e - pub) / n:.2f})")  # fmt: skip
    ns = [r["n"] for r in rows]
    tokens = [r["prompt_tokens"] for r in rows]
    earliest = [r["earliest_ms"] for r in rows]
    result = {"reference": name, "preset": preset, "rows": rows, "fits": {}}
    for tag, key in (("FIFO replay", "delay_ms"), ("published-order replay", "delay_published_ms")):
        fits = candidates(ns, tokens, [r[key] for r in rows], earliest)
        result["fits"][key] = fits
        print(f"  fits of the hand-over delay ({tag}):")
        for kind, f in fits.items():
            print(f"    {kind:9} {fmt_fit(f)}")
            if "free" in f:
                print(f"    {'  free':9} {fmt_fit(f['free'])}")
    return result


def main() -> int:
    """Study each --reference; with both GPUs, the Pearson correlation of their per-request
    costs over N (a cost that follows the workload moves both alike); all to --json."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", nargs="+", choices=list(REFERENCES), default=list(REFERENCES))
    p.add_argument("--json", type=Path, default=Path("/tmp/engine_frontend_burst.json"))
    a = p.parse_args()
    out = [study(name) for name in a.reference]
    if len(out) == 2:
        # The two GPUs ran the same prompts at each N: a cost that depends on the workload (N,
        # prompt lengths) moves both the same way from N to N, run-to-run noise does not.
        x, y = ([r["delay_ms"] / r["n"] for r in o["rows"]] for o in out)
        print(f"per-request costs, {out[0]['reference']} against {out[1]['reference']} over N: "
              f"Pearson r {float(np.corrcoef(x, y)[0, 1]):+.2f}")  # fmt: skip
    a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
