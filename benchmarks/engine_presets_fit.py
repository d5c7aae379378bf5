"""Derive the step-time presets of `--engine vllm` from Vidur's published profiling tables.

    python benchmarks/engine_presets_fit.py --vidur PATH/TO/vidur [--write]

PATH is a checkout of microsoft/vidur (MIT); its `data/profiling/compute/<gpu>/<model>/mlp.csv`
holds per-operator GPU times (ms, one layer) by token count and tensor-parallel degree, and
`data/profiling/network/<node>/all_reduce.csv` the all-reduce times by message size. The dense
part of a step is the sum, per token count, of the per-layer operators times the layer count,
plus the embedding and (tensor parallel) two all-reduces of the hidden state per layer. It is
written as a table of about 70 points; the fit error printed is the largest relative error of
linear interpolation over every profiled token count (0 where every point is kept).

Attention: the mirror of Vidur here lacks `attention.csv` (17 MB, over what a snapshot carries),
so the attention coefficients are fitted to rows of Meta-Llama-3-8B's A100 attention profile
(FlashInfer, TP1) read one by one from a fork that carries it (adi-anirudh/vidur_hbf_hbm_backend,
same file); they are listed below, per layer, in ms. Other models and GPUs scale them by KV bytes
per token per layer (decode reads the cache: memory bound; the profile shows no gain from tensor
parallelism) and by query heads × head dim (prefill: FLOPs),
and H100 by the dense part's measured H100/A100 ratio at large batches (compute) and by memory
bandwidth (3.35 / 2.04 TB/s, decode).

KV blocks: (GPU memory × 0.9 − weights − activation reserve) / (16 × KV bytes per token), with
the weights and KV geometry from each model card. No code of Vidur's is used; figures only.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import subprocess
from pathlib import Path

OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
)

# Meta-Llama-3-8B, A100, FlashInfer, TP1: (batch, context per sequence, attn_decode median ms).
DECODE_ROWS = [
    (1, 544, 0.024),
    (13, 544, 0.037),
    (256, 512, 0.328),
    (512, 512, 0.634),
    (1, 1024, 0.025),
    (9, 1024, 0.040),
    (128, 1024, 0.345),
    (256, 1024, 0.635),
    (512, 1024, 1.216),
    (13, 16128, 0.531),
    (24, 16128, 0.968),
    (36, 16128, 1.413),
]
# Same profile: (chunk, cached context before it, attn_prefill median ms).
PREFILL_ROWS = [
    (64, 0, 0.011),
    (64, 512, 0.045),
    (64, 1024, 0.045),
    (64, 2048, 0.046),
    (64, 3072, 0.061),
    (64, 4096, 0.064),
]

# Model cards: layers, query heads, KV heads, head dim, hidden, weights (GB, bf16), context.
MODELS = {
    "llama-3-8b": dict(
        hf="meta-llama/Meta-Llama-3-8B", layers=32, q_heads=32, kv_heads=8, head_dim=128,
        weights_gb=16.06, max_model_len=8192,
    ),
    "llama-3-70b": dict(
        hf="meta-llama/Meta-Llama-3-70B", layers=80, q_heads=64, kv_heads=8, head_dim=128,
        weights_gb=141.1, max_model_len=8192,
    ),
    "qwen2.5-7b": dict(
        hf="Qwen/Qwen2.5-7B-Instruct", layers=28, q_heads=28, kv_heads=4, head_dim=128,
        weights_gb=15.23, max_model_len=32768,
    ),
}  # fmt: skip

HBM_TBS = {"a100": 2.039, "h100": 3.35}  # A100-80GB SXM, H100 SXM datasheets
GPU_GB = 80.0
UTIL = 0.9  # vLLM's default gpu_memory_utilization
RESERVE_GB = 2.0  # activations, CUDA graphs and sampler buffers (vLLM's profiling run)


def _csv(vidur: Path, rel: str) -> list[dict[str, str]]:
    """Rows of a Vidur CSV from a checkout or a bare git mirror."""
    path = vidur / rel
    if path.exists():
        text = path.read_text()
    else:
        text = subprocess.run(
            ["git", "-C", str(vidur), "show", f"HEAD:{rel}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return list(csv.DictReader(text.splitlines()))


def dense_table(vidur: Path, gpu: str, model: str, tp: int) -> dict[int, tuple[float, float]]:
    """num_tokens -> (embedding ms, one layer's dense ops ms)."""
    out = {}
    for r in _csv(vidur, f"data/profiling/compute/{gpu}/{model}/mlp.csv"):
        if int(r["num_tensor_parallel_workers"]) != tp:
            continue
        layer = sum(float(r[f"time_stats.{o}.median"]) for o in OPS)
        layer += 2 * float(r["time_stats.add.median"])
        out[int(r["num_tokens"])] = (float(r["time_stats.emb.median"]), layer)
    return dict(sorted(out.items()))


def all_reduce_ms(vidur: Path, node: str, workers: int) -> list[tuple[int, float]]:
    """(message bytes, all-reduce median ms) for `workers` GPUs of one node."""
    rows = _csv(vidur, f"data/profiling/network/{node}/all_reduce.csv")
    pts = sorted(
        (int(r["size"]), float(r["time_stats.all_reduce.median"]))
        for r in rows
        if int(r["num_workers"]) == workers and int(r["devices_per_node"]) >= workers
    )
    return pts


def interp(pts: list[tuple[int, float]], x: float) -> float:
    """Linear interpolation of `pts` ((x, y) sorted by x) at x: the first y below the first
    point, the last segment extended past the last."""
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


def pick_points(xs: list[int]) -> list[int]:
    """Every profiled token count up to 2,048 (GEMM tiling makes steps there), then every 512."""
    keep = []
    for x in xs:
        if x <= 2048 or x % 512 == 0:
            keep.append(x)
    if xs[-1] not in keep:
        keep.append(xs[-1])
    return keep


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through (x, y) points: (intercept, slope)."""
    n = len(points)
    sx = sum(x for x, _ in points)
    sy = sum(y for _, y in points)
    sxx = sum(x * x for x, _ in points)
    sxy = sum(x * y for x, y in points)
    b = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return (sy - b * sx) / n, b


def attention_fit() -> dict[str, float]:
    """Lines through the listed attention rows (ms, one layer): decode = a + b x batch x
    context, prefill = p0 + pc x query-key pairs (chunk x (cached context + chunk / 2)); with
    the decode fit's largest relative and absolute errors and the prefill fit's absolute one."""
    a, b = fit_line([(bs * ctx, ms) for bs, ctx, ms in DECODE_ROWS])
    decode_err = max(abs(a + b * bs * ctx - ms) / ms for bs, ctx, ms in DECODE_ROWS)
    decode_abs = max(abs(a + b * bs * ctx - ms) for bs, ctx, ms in DECODE_ROWS)
    p0, pc = fit_line([(c * (k + c / 2), ms) for c, k, ms in PREFILL_ROWS])
    prefill_abs = max(abs(p0 + pc * c * (k + c / 2) - ms) for c, k, ms in PREFILL_ROWS)
    return dict(
        decode_a=a, decode_b=b, decode_err=decode_err, decode_abs=decode_abs, prefill_p0=p0,
        prefill_pc=pc, prefill_abs=prefill_abs,
    )  # fmt: skip


def build(vidur: Path, name: str, gpu: str, model_key: str, vidur_model: str, tp: int,
          scale_from: tuple[str, str] | None = None, layer_scale: float = 1.0) -> dict:  # fmt: skip
    """One preset as llmsim/engine/presets/NAME.json holds it: the dense step table of
    `vidur_model` on `gpu` at tensor parallel `tp` (with `scale_from` = (base model, reference
    model): the base model's A100 profile times the reference model's H100/A100 ratio),
    `layer_scale` times the per-layer ops, plus the all-reduces, the attention fit scaled to
    the model and GPU, the KV blocks that fit, the fit errors and the sources."""
    m = MODELS[model_key]
    layers = m["layers"]
    if scale_from is None:
        dense = dense_table(vidur, gpu, vidur_model, tp)
        ratio: dict[int, float] = {}
        source_note = f"data/profiling/compute/{gpu}/{vidur_model}/mlp.csv (TP{tp})"
    else:
        # No Vidur profile of this model on this GPU: the A100 profile of the model times the
        # H100/A100 ratio measured on a profiled model of the same shape family.
        base_model, ref_model = scale_from
        dense = dense_table(vidur, "a100", base_model, tp)
        ref_a = dense_table(vidur, "a100", ref_model, tp)
        ref_h = dense_table(vidur, "h100", ref_model, tp)
        ratio = {n: ref_h[n][1] / ref_a[n][1] for n in dense if n in ref_a and n in ref_h}
        source_note = (
            f"data/profiling/compute/a100/{base_model}/mlp.csv (TP{tp}) x the H100/A100 ratio "
            f"of {ref_model} by token count"
        )
    xs = [n for n in dense if scale_from is None or n in ratio]
    ar = all_reduce_ms(vidur, f"{gpu}_dgx", tp) if tp > 1 else []
    hidden = m["q_heads"] * m["head_dim"]

    def total(n: int) -> float:
        emb, layer = dense[n]
        r = ratio.get(n, 1.0)
        t = emb * r + layers * layer * r * layer_scale
        if ar:
            t += layers * 2 * interp(ar, n * hidden * 2)  # two all-reduces of bf16 activations
        return t

    full = {n: total(n) for n in xs}
    keep = pick_points(xs)
    table = [[n, round(full[n], 4)] for n in keep]
    pts = [(n, full[n]) for n in keep]
    dense_err = max(abs(interp(pts, n) - full[n]) / full[n] for n in xs)

    att = attention_fit()
    kv_bytes_layer = 2 * m["kv_heads"] // tp * m["head_dim"] * 2  # K and V, bf16, per GPU
    # Vidur's decode rows are the same at TP1 and TP8 for Llama-3-8B (FlashInfer gains nothing
    # from fewer heads per GPU), so decode attention scales with the model's KV heads, not /TP.
    attn_kv_layer = 2 * m["kv_heads"] * m["head_dim"] * 2
    ref_kv = 2 * 8 * 128 * 2  # Llama-3-8B: the profiled case
    ref_flops = 32 * 128
    big = max(n for n in ratio) if ratio else None
    compute_ratio = ratio[big] if big else 1.0
    mem_ratio = HBM_TBS["a100"] / HBM_TBS[gpu]
    decode_b = att["decode_b"] * attn_kv_layer / ref_kv * mem_ratio
    pair = att["prefill_pc"] * (m["q_heads"] // tp * m["head_dim"]) / ref_flops * compute_ratio
    weights_gpu = m["weights_gb"] / tp
    kv_tok = kv_bytes_layer * layers
    blocks = int((GPU_GB * UTIL - weights_gpu - RESERVE_GB) * 1e9 // (16 * kv_tok))
    return {
        "name": name,
        "model": m["hf"],
        "hardware": f"{tp}x {gpu.upper()}-80GB SXM" + (f", tensor parallel {tp}" if tp > 1 else ""),
        "tensor_parallel": tp,
        "max_model_len": m["max_model_len"],
        "engine_defaults": {"max_num_seqs": 256, "max_num_batched_tokens": 8192},
        "kv_cache": {
            "layers": layers,
            "kv_heads": m["kv_heads"],
            "head_dim": m["head_dim"],
            "bytes_per_token": kv_tok,
            "gpu_memory_gb": GPU_GB,
            "gpu_memory_utilization": UTIL,
            "weights_gb_per_gpu": round(weights_gpu, 2),
            "activation_reserve_gb": RESERVE_GB,
            "num_gpu_blocks": blocks,
            "block_size": 16,
        },
        "step_time": {
            "overhead_ms": 0.0,
            "dense_ms_by_tokens": table,
            "decode_attention": {
                "per_step_ms": round(att["decode_a"] * layers, 5),
                "per_context_token_ms": float(f"{decode_b * layers:.6g}"),
            },
            "prefill_attention": {
                "per_chunk_ms": round(att["prefill_p0"] * layers, 5),
                "per_query_key_pair_ms": float(f"{pair * layers:.6g}"),
            },
        },
        "fit": {
            "dense_interpolation_max_error": round(dense_err, 4),
            "decode_attention_max_error": round(att["decode_err"], 4),
            "decode_attention_max_abs_error_ms_per_layer": round(att["decode_abs"], 4),
            "prefill_attention_max_abs_error_ms_per_layer": round(att["prefill_abs"], 4),
        },
        "sources": [
            "Vidur (microsoft/vidur, MIT, MLSys 2024) " + source_note,
            *([f"Vidur data/profiling/network/{gpu}_dgx/all_reduce.csv ({tp} GPUs)"] if ar else []),
            "Vidur data/profiling/compute/a100/meta-llama/Meta-Llama-3-8B/attention.csv "
            "(FlashInfer, TP1; rows listed in benchmarks/engine_presets_fit.py)",
            f"{m['hf']} model card (config.json): layers, heads, KV heads, head dim, context",
            "vLLM defaults: gpu_memory_utilization 0.9, block_size 16, max_num_seqs 256, "
            "max_num_batched_tokens 8192 (V1, OpenAI server on 80 GB GPUs)",
        ],
        "notes": (
            "Composed per step as Vidur does: embedding + layers x (dense ops + attention) "
            "[+ 2 all-reduces per layer]; no CPU overhead (Vidur's default); LM head and "
            "sampling are not in the profile."
        ),
    }


def main() -> None:
    """Build the four presets and print one line of each (KV blocks, dense step ms at 1 and
    512 tokens, decode ms per context token, fit errors); with --write, write their files,
    keeping each file's calibration and front end."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vidur", type=Path, required=True, help="checkout or mirror of Vidur")
    ap.add_argument("--write", action="store_true", help="write llmsim/engine/presets/*.json")
    args = ap.parse_args()
    l3_8 = "meta-llama/Meta-Llama-3-8B"
    l3_70 = "meta-llama/Meta-Llama-3-70B"
    l2_7 = "meta-llama/Llama-2-7b-hf"
    l2_70 = "meta-llama/Llama-2-70b-hf"
    # Qwen2.5-7B's dense matmuls per layer are 1.069x Llama-3-8B's (233M vs 218M weights).
    presets = [
        build(args.vidur, "llama-3-8b-a100", "a100", "llama-3-8b", l3_8, 1),
        build(args.vidur, "llama-3-8b-h100", "h100", "llama-3-8b", l3_8, 1, (l3_8, l2_7)),
        build(args.vidur, "llama-3-70b-h100-tp4", "h100", "llama-3-70b", l3_70, 4, (l3_70, l2_70)),
        build(args.vidur, "qwen2.5-7b-h100", "h100", "qwen2.5-7b", l3_8, 1, (l3_8, l2_7), 1.069),
    ]
    out = Path(__file__).resolve().parent.parent / "llmsim" / "engine" / "presets"
    for p in presets:
        st = p["step_time"]
        dense = dict((n, ms) for n, ms in st["dense_ms_by_tokens"])
        print(
            f"{p['name']:22} blocks {p['kv_cache']['num_gpu_blocks']:6}  dense(1) "
            f"{dense[1]:7.2f} ms  dense(512) {dense.get(512, 0):7.2f} ms  "
            f"decode/ctx {st['decode_attention']['per_context_token_ms']:.3g} ms  "
            f"fit {p['fit']}"
        )
        if args.write:
            path = out / f"{p['name']}.json"
            # A calibration against a whole-curve reference (benchmarks/engine_reference.py
            # --fit) and a front end fitted to one (--fit-frontend) are not derived from the
            # profiles: keep them across a rewrite.
            old = json.loads(path.read_text()) if path.exists() else {}
            for key in ("calibration", "frontend"):
                if key in old:
                    p[key] = old[key]
            path.write_text(json.dumps(p, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
