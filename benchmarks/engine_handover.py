"""The order in which vLLM's API server handed a burst to the engine, and llmsim's models of it.

    python benchmarks/engine_handover.py --order-stats          # the published order, ~2 s
    python benchmarks/engine_handover.py --seeds 1 2 3 4 5      # every reference, fifo and
                                                                # random, ~1 min

--order-stats: for each all-at-once point of the LambdaLabs references
(benchmarks/data/lambda_vllm_{a100,h100}_llama3_8b.json, every request's published TTFT), how
the order of the first tokens relates to the order the requests were sent. The unit is a prefill
group (first tokens within GROUP_MS of the group's first: one prefill step's), not the TTFT
itself: within a group every first token reaches the client at once, and the TTFT then only
orders the requests by when the benchmark started each one (its tasks start in send order,
~0.15-0.2 ms apart, so a group's TTFTs fall with the send index; at N = 10 they all come in one
group, TTFT 140.4 ms for request 0 down to 138.7 ms for 8 and 9). Printed per point: the
groups, Spearman's rank correlation of the send index with the group (ties averaged; a uniform
random order gives 0 and the spread printed, measured over 200 shuffles of the same group
sizes), the share of discordant pairs (two requests in different groups, the later-sent one
first; 0 for FIFO, 0.5 for a random order) and the requests whose first token came before
request 0's (their number and index range). The same figures are printed for llmsim's replay
of each point with each hand-over order, from the replay's own first tokens.

--seeds: every reference's errors (the all-at-once A100 and H100 points with their tails, the
Poisson references and the issue's own workload, engine_fidelity.py --no-server) with the FIFO
hand-over, then with the random one under each seed: its median and range over the seeds; for
the all-at-once points also with the published order (the requests handed over in the order of
their published prefill groups, in send order within a group: what a perfect model of the
order would give, an upper bound for any order model).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_reference import (
    GROUP_MS,
    METRICS,
    REFERENCES,
    TAILS,
    check,
    engine_options,
    errors,
    figures,
    load_reference,
    published_tails,
    replay_sim,
    tail_errors,
)
from engine_sim import replica_for, set_handover, simulate

if TYPE_CHECKING:
    from collections.abc import Callable

# Shuffles of the group labels that give a random order's spread of Spearman's rho.
SHUFFLES = 200


def group_of(ttfts_ms: list[float], keep: list[int]) -> dict[int, int]:
    """Each kept request's prefill group (0 = the first), by its first token's time."""
    order = sorted(keep, key=lambda i: ttfts_ms[i])
    groups, k, first = {}, 0, ttfts_ms[order[0]]
    for i in order:
        if ttfts_ms[i] - first > GROUP_MS:
            k, first = k + 1, ttfts_ms[i]
        groups[i] = k
    return groups


def _avg_ranks(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    k = 0
    while k < len(order):
        j = k
        while j + 1 < len(order) and v[order[j + 1]] == v[order[k]]:
            j += 1
        for m in range(k, j + 1):
            ranks[order[m]] = (k + j) / 2
        k = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); nan if either is constant."""
    rx, ry = _avg_ranks(x), _avg_ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def order_stats(ttfts_ms: list[float], outs: list[int]) -> dict:
    """How the first-token order relates to the send order (see the module docstring)."""
    keep = [i for i, o in enumerate(outs) if o > 0]  # a reply of 0 tokens has no first token
    g = group_of(ttfts_ms, keep)
    labels = [g[i] for i in keep]
    rho = spearman(keep, labels)
    rng = random.Random(0)
    rhos = []
    for _ in range(SHUFFLES):
        s = labels[:]
        rng.shuffle(s)
        rhos.append(spearman(keep, s))
    rhos = [r for r in rhos if r == r]
    conc = disc = 0
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            conc += labels[a] < labels[b]
            disc += labels[a] > labels[b]
    ahead = [i for i in keep if g[i] < g[keep[0]]]
    return {
        "groups": max(labels) + 1,
        "spearman": rho,
        "random_sd": statistics.pstdev(rhos) if rhos else float("nan"),
        "discordant": disc / (disc + conc) if disc + conc else float("nan"),
        "ahead": len(ahead),
        "ahead_range": (min(ahead), max(ahead)) if ahead else None,
    }


def fmt_stats(tag: str, n: int, s: dict) -> str:
    """One line of order statistics."""
    rng = s["ahead_range"]
    where = f"{rng[0]}..{rng[1]}" if rng else "-"
    sd = f"{s['random_sd']:.3f}" if s["random_sd"] == s["random_sd"] else "-"
    return (
        f"{tag:>22} {s['groups']:3d} groups  Spearman {s['spearman']:+.3f} (random 0 ± {sd})  "
        f"discordant {s['discordant']:.3f}  before #0: {s['ahead']:3d} ({s['ahead'] / n:4.0%}) "
        f"in {where}"
    )


def print_order_stats(seeds: list[int]) -> None:
    """The published order of every point, and the replay's under each hand-over order."""
    for name in REFERENCES:
        ref = load_reference(name)
        engine = engine_options(ref)
        print(f"== {name.upper()}: {ref['source']}")
        for pt in ref["points"]:
            n, ins, outs = pt["num_prompts"], pt["input_lens"], pt["output_lens"]
            print(f"N = {n}")
            print(fmt_stats("vLLM (published)", n, order_stats(pt["ttfts_ms"], outs)))
            runs = [("llmsim fifo", "fifo", None)]
            runs += [(f"llmsim random seed {s}", "random", s) for s in seeds]
            for tag, order, seed in runs:
                set_handover(order, seed)
                res = replay_sim(ref["preset"], engine, ins, outs)
                firsts = [r.tokens[0] * 1000 for r in res]
                print(fmt_stats(tag, n, order_stats(firsts, outs)))
    set_handover()


def published_order(ttfts_ms: list[float], outs: list[int]) -> list[int]:
    """The send indices in the order of their published prefill groups, send order within a
    group; a reply of 0 tokens (no first token) goes with the request sent before it."""
    keep = [i for i, o in enumerate(outs) if o > 0]
    g = group_of(ttfts_ms, keep)
    group, last = [], g[keep[0]]
    for i in range(len(outs)):
        last = g.get(i, last)
        group.append(last)
    return sorted(range(len(outs)), key=lambda i: (group[i], i))


def _published_order_errors(name: str) -> dict[str, float]:
    """The all-at-once points replayed with the requests handed over in the published order."""
    ref = load_reference(name)
    engine = engine_options(ref)
    out: dict[str, float] = {}
    set_handover("fifo", None)
    for pt in ref["points"]:
        n, ins, outs = pt["num_prompts"], pt["input_lens"], pt["output_lens"]
        order = published_order(pt["ttfts_ms"], outs)
        # All at t = 0, added in that order: the FIFO front end hands them over so.
        reqs = [(0.0, ins[i], max(1, outs[i]), list(range(i * 10_000, i * 10_000 + ins[i])))
                for i in order]  # fmt: skip
        res = simulate(replica_for(ref["preset"], **engine), reqs)
        back: list = [None] * n
        for k, i in enumerate(order):
            back[i] = res[k]
        f = figures(back, outs)
        e = {**errors(f, pt), **tail_errors(f, published_tails(pt))}
        for k, v in e.items():
            out[f"N={n} {k}"] = v
    return out


def _quiet(fn: Callable[..., Any], *args: object) -> Any:
    """fn(*args) with whatever it prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _errors(name: str) -> dict[str, float]:
    """Every figure's error of one reference as `{label: error}`, under the current order."""
    out: dict[str, float] = {}
    if name in REFERENCES:
        for row in _quiet(check, name, None, False, False)["rows"]:
            n = row["num_prompts"]
            for k in METRICS:
                out[f"N={n} {k}"] = row["sim_error"][k]
            for k in TAILS:
                if k in row["sim_tail_error"]:
                    out[f"N={n} {k}"] = row["sim_tail_error"][k]
    elif name.startswith("poisson"):
        from engine_reference_poisson import check_poisson

        for row in _quiet(check_poisson, name, 1, "matched", False)["rows"]:
            for k, v in row["error"].items():
                out[f"{row['request_rate']} req/s {k}"] = v
    else:  # the workload: no reference, so the figures themselves (relative to FIFO)
        from engine_fidelity import sim_sweep

        rows = _quiet(sim_sweep, [1, 2, 4, 8, 12, 16, 18, 20, 22, 24, 28, 32, 40],
                      lambda rate: int(max(300, rate * 30)))  # fmt: skip
        for row in rows:
            for k in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90", "throughput"):
                out[f"{row['rate']:g} req/s {k}"] = row[k]
    return out


def compare(names: list[str], seeds: list[int], json_path: Path) -> None:
    """Each figure's error with the FIFO hand-over and with the random one over `seeds`."""
    result = {}
    for name in names:
        set_handover("fifo", None)
        fifo = _errors(name)
        rand = []
        for s in seeds:
            set_handover("random", s)
            rand.append(_errors(name))
        set_handover()
        pub = _published_order_errors(name) if name in REFERENCES else {}
        relative = name == "fidelity"  # its figures are values: compare random with FIFO
        what = "figures; random: change against FIFO" if relative else (
            "errors against vLLM: FIFO; random: median [range]")  # fmt: skip
        print(f"== {name}: {what}")
        rows = {}
        for k, f in fifo.items():
            vals = [r[k] for r in rand]
            if relative:
                vals = [v / f - 1 if f else 0.0 for v in vals]
                head = f"{f:10.2f}"
            else:
                head = f"{f:+7.1%}"
            med = statistics.median(vals)
            tail = f"   published order {pub[k]:+7.1%}" if k in pub else ""
            print(f"  {k:34} {head}   random {med:+7.1%} [{min(vals):+6.1%} .. {max(vals):+6.1%}]"
                  + tail)  # fmt: skip
            rows[k] = {"fifo": f, "random": vals, **({"published_order": pub[k]} if k in pub
                                                       else {})}  # fmt: skip
        result[name] = rows
    json_path.write_text(json.dumps({"seeds": seeds, "results": result}, indent=1))


def main() -> int:
    """With --order-stats the published and replayed order statistics, else each
    --reference's errors under the FIFO and the random hand-over (also written to --json)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--order-stats", action="store_true", help="the published order statistics")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                   help="seeds of the random hand-over order")  # fmt: skip
    p.add_argument(
        "--reference", nargs="+",
        default=["a100", "h100", "poisson-a100", "poisson-h100-70b", "fidelity"],
        choices=["a100", "h100", "poisson-a100", "poisson-h100-70b", "fidelity"],
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=Path("/tmp/engine_handover.json"))
    a = p.parse_args()
    if a.order_stats:
        print_order_stats(a.seeds)
    else:
        compare(a.reference, a.seeds, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
