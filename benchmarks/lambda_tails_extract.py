"""The per-request tails of the LambdaLabs vLLM v0.6.0 reference, from local copies of its files.

    python benchmarks/lambda_tails_extract.py --a100 DIR [--h100 DIR] [--dry-run]

Each DIR is the root of a checkout of LambdaLabsML/vllm-benchmark (GitHub) at the commit that
benchmarks/data/lambda_vllm_{a100,h100}_llama3_8b.json names in its `source` (A100: a9b42a5f,
H100: a4f9f437), for instance `git clone https://github.com/LambdaLabsML/vllm-benchmark DIR &&
git -C DIR checkout a9b42a5f83bc39976bcb6bd44a96b2b15d820e10`; the files read are
`results/prompt_{N}/1x{GPU}-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len{2000,2048}.json`. Nothing
here touches the network: fetch the files yourself, then run this.

Each file is vLLM's `benchmark_serving.py --save-result` output (v0.6.0): besides the summary it
lists, per request, `ttfts` (s; 0 for a reply that printed nothing), `itls` (s: the gaps between
the reply's successive text chunks) and `output_lens`. Written into each point of the data file
(new keys; the existing ones are kept):

- `ttfts_ms`: every request's TTFT (ms, to 1 µs), in the file's order, so that TTFT p90 (which
  the file does not publish) is computed exactly as benchmark_serving.py computes p99
  (numpy.percentile, linear interpolation);
- `tpots_ms`: every request's TPOT (ms, to 1 µs), sum(itls) / (output_len - 1) for replies of more
  than one token, null for the others: the time from the first to the last text chunk over the
  tokens after the first. benchmark_serving.py divides (latency - ttft) instead, its latency
  ending at the `[DONE]` event, which comes after the last text chunk: 0.5-1 ms later for most
  replies, a whole round later for a reply whose last round printed nothing; `--dry-run` prints
  the derived mean / median / p99 beside the published ones;
- `p99_ttft_ms`, `p99_tpot_ms`, `p99_itl_ms`, `mean_itl_ms`: copied from the file's summary.

The top-level `tails_source` of each data file says where its per-request figures came from
(for the files in the repository: read with a code-search tool's file reader at those commits,
because no checkout fits here; it names the precision they were read to).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
# The data file and the result file's path, by GPU (the LambdaLabs repository's layout).
LAYOUT = {
    "a100": (
        DATA / "lambda_vllm_a100_llama3_8b.json",
        "results/prompt_{n}/1xA100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2000.json",
    ),
    "h100": (
        DATA / "lambda_vllm_h100_llama3_8b.json",
        "results/prompt_{n}/1xH100-80GB-SXM/Meta-Llama-3-8B-Instruct_tp1_len2048.json",
    ),
}
PUBLISHED = ("p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "mean_itl_ms")


def tails(result: dict) -> dict:
    """The new keys of one point from one benchmark_serving.py result (see the docstring).

    `result` needs `ttfts`, `output_lens` and the PUBLISHED summary keys; with `itls` (one list
    per request) the per-request TPOTs are derived too."""
    n = len(result["output_lens"])
    if len(result["ttfts"]) != n:
        raise ValueError(f"{len(result['ttfts'])} ttfts for {n} requests")
    out: dict = {"ttfts_ms": [round(t * 1000, 3) for t in result["ttfts"]]}
    itls = result.get("itls")
    if itls is not None:
        if len(itls) != n:
            raise ValueError(f"{len(itls)} itls lists for {n} requests")
        out["tpots_ms"] = [
            round(sum(gaps) * 1000 / (o - 1), 3) if o > 1 else None
            for gaps, o in zip(itls, result["output_lens"], strict=True)
        ]
    out.update({k: result[k] for k in PUBLISHED})
    return out


def check_lines(point: dict, new: dict) -> list[str]:
    """The derived figures beside the published ones (what --dry-run prints)."""
    t = new["ttfts_ms"]
    lines = [
        f"  N = {len(t)}: TTFT mean {statistics.fmean(t):.3f} / {point['mean_ttft_ms']:.3f}, "
        f"median {np.median(t):.3f} / {point['median_ttft_ms']:.3f}, p99 "
        f"{np.percentile(t, 99):.3f} / {new['p99_ttft_ms']:.3f} ms (derived / published)"
    ]
    if "tpots_ms" in new:
        tp = [x for x in new["tpots_ms"] if x is not None]
        lines.append(
            f"           TPOT mean {statistics.fmean(tp):.3f} / {point['mean_tpot_ms']:.3f}, "
            f"median {np.median(tp):.3f} / {point['median_tpot_ms']:.3f}, p99 "
            f"{np.percentile(tp, 99):.3f} / {new['p99_tpot_ms']:.3f} ms"
        )
    return lines


def update(data_file: Path, results: dict[int, dict], source: str, dry_run: bool) -> None:
    """Write the tails of each point found in `results` (by N) into `data_file`."""
    ref = json.loads(data_file.read_text())
    for point in ref["points"]:
        result = results.get(point["num_prompts"])
        if result is None:
            continue
        if list(result["output_lens"]) != point["output_lens"]:
            raise ValueError(f"N = {point['num_prompts']}: output_lens differ from {data_file}")
        new = tails(result)
        print("\n".join(check_lines(point, new)))
        if "tpots_ms" not in new:
            point.pop("tpots_ms", None)
        point.update(new)
    ref["tails_source"] = source
    if not dry_run:
        data_file.write_text(json.dumps(ref, indent=1) + "\n")


def main() -> int:
    """Read each point's result file under every checkout given and write its tails into that
    GPU's data file (with --dry-run, only print the checks); 1 if a result file is missing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a100", type=Path, help="checkout of the A100 commit")
    p.add_argument("--h100", type=Path, help="checkout of the H100 commit")
    p.add_argument("--dry-run", action="store_true", help="print the checks, write nothing")
    a = p.parse_args()
    if not (a.a100 or a.h100):
        p.error("give --a100 and/or --h100")
    for gpu, root in (("a100", a.a100), ("h100", a.h100)):
        if root is None:
            continue
        data_file, layout = LAYOUT[gpu]
        ref = json.loads(data_file.read_text())
        results = {}
        for point in ref["points"]:
            path = root / layout.format(n=point["num_prompts"])
            if not path.is_file():
                print(f"missing: {path}", file=sys.stderr)
                return 1
            results[point["num_prompts"]] = json.loads(path.read_text())
        print(f"{gpu}: {root}")
        source = (f"ttfts_ms, tpots_ms and the p99s: {ref['source']}, read from a local "
                  "checkout by benchmarks/lambda_tails_extract.py")  # fmt: skip
        update(data_file, results, source, a.dry_run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
