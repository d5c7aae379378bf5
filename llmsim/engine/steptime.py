"""How long one engine step takes on the GPU, from a preset (llmsim/engine/presets/*.json).

A step's time is composed the way Vidur composes it from its per-operator profiles:
- the dense part (embedding, and per layer: norms, QKV and output projections, rotary, MLP,
  residual adds, and the tensor-parallel all-reduces) depends only on the number of tokens in
  the batch: a table by token count, interpolated linearly between its points;
- decode attention reads each decoding sequence's whole context: a cost per step plus a cost
  per token of context attended;
- prefill attention of a chunk of c tokens after k cached ones costs per chunk plus per
  query-key pair, c × (k + c / 2);
- plus a fixed overhead per step (scheduler, sampler), when the preset has one;
- all of it times the preset's calibration factor, when a whole-curve reference gave one;
- the prefill terms (the prefill tokens' share of the dense part, and prefill attention) times
  a further factor, when the calibration has one: a uniform factor fitted on decode steps
  also stretches the part of a prefill step that the decode-only additions (the LM head and
  sampler, run for one token a sequence) do not touch;
- plus a cost per sequence in the step, when the calibration has one: what grows with the batch
  and the kernel profiles leave out (the LM head and sampler for each sequence's next token,
  and the engine's per-sequence work between steps: preparing inputs, appending the token,
  detokenizing, checking stops).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class StepTimeModel:
    """Step time in seconds from the batch's composition (see the module docstring)."""

    table_tokens: tuple[int, ...]
    table_ms: tuple[float, ...]
    decode_step_ms: float = 0.0
    decode_ctx_ms: float = 0.0  # per token of context attended by a decode
    prefill_chunk_ms: float = 0.0
    prefill_pair_ms: float = 0.0  # per query-key pair of a prefill chunk
    overhead_ms: float = 0.0
    per_seq_ms: float = 0.0  # per sequence in the step (decodes and prefill chunks)
    # On the prefill terms only: the prefill tokens' share of the dense part, prefill attention.
    prefill_scale: float = 1.0

    def dense_ms(self, n_tokens: int) -> float:
        """The dense part of a step of `n_tokens` tokens, in ms: the table interpolated linearly
        (its first value below the first point, its last segment extended past the last)."""
        xs, ys = self.table_tokens, self.table_ms
        if n_tokens <= xs[0]:
            return ys[0]
        i = bisect.bisect_left(xs, n_tokens)
        if i >= len(xs):  # past the table: extrapolate the last segment
            i = len(xs) - 1
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (n_tokens - x0) / (x1 - x0)

    def step_ms(
        self,
        n_tokens: int,
        decodes: int,
        decode_ctx: int,
        prefills: Iterable[tuple[int, int]] = (),
    ) -> float:
        """Milliseconds for a step of `n_tokens` tokens: `decodes` decoding sequences that
        attend `decode_ctx` tokens in all, and prefill chunks given as (tokens, cached before).
        """
        dense = self.dense_ms(n_tokens)
        prefill_ms = 0.0
        n_prefill = 0
        for c, k in prefills:
            prefill_ms += self.prefill_chunk_ms + self.prefill_pair_ms * c * (k + c / 2)
            n_prefill += c
        if self.prefill_scale != 1.0 and n_prefill:
            # Each token carries an equal share of the dense part; the prefill tokens' share
            # is scaled with prefill attention.
            share = min(1.0, n_prefill / max(n_tokens, 1))
            dense *= 1.0 + (self.prefill_scale - 1.0) * share
            prefill_ms *= self.prefill_scale
        ms = self.overhead_ms + dense + prefill_ms + self.per_seq_ms * (decodes + len(prefills))
        if decodes:
            ms += self.decode_step_ms + self.decode_ctx_ms * decode_ctx
        return ms

    def step_s(
        self,
        n_tokens: int,
        decodes: int,
        decode_ctx: int,
        prefills: Iterable[tuple[int, int]] = (),
    ) -> float:
        """`step_ms` in seconds, the unit the replicas' clock runs in."""
        return self.step_ms(n_tokens, decodes, decode_ctx, prefills) / 1000.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepTimeModel:
        """The model a preset's `step_time` block describes, before any calibration."""
        table = d["dense_ms_by_tokens"]
        return cls(
            table_tokens=tuple(int(n) for n, _ in table),
            table_ms=tuple(float(ms) for _, ms in table),
            decode_step_ms=float(d["decode_attention"]["per_step_ms"]),
            decode_ctx_ms=float(d["decode_attention"]["per_context_token_ms"]),
            prefill_chunk_ms=float(d["prefill_attention"]["per_chunk_ms"]),
            prefill_pair_ms=float(d["prefill_attention"]["per_query_key_pair_ms"]),
            overhead_ms=float(d.get("overhead_ms", 0.0)),
        )

    def scaled(self, factor: float) -> StepTimeModel:
        """The same shape, every step `factor` times as long (tests use fast presets)."""
        return StepTimeModel(
            self.table_tokens,
            tuple(ms * factor for ms in self.table_ms),
            self.decode_step_ms * factor,
            self.decode_ctx_ms * factor,
            self.prefill_chunk_ms * factor,
            self.prefill_pair_ms * factor,
            self.overhead_ms * factor,
            self.per_seq_ms * factor,
            self.prefill_scale,  # a ratio between terms: unchanged by a uniform stretch
        )

    def with_per_seq(self, per_seq_ms: float) -> StepTimeModel:
        """The same model with `per_seq_ms` for each sequence in a step."""
        return replace(self, per_seq_ms=per_seq_ms)

    def with_prefill_scale(self, prefill_scale: float) -> StepTimeModel:
        """The same model with its prefill terms `prefill_scale` times as long."""
        return replace(self, prefill_scale=prefill_scale)


@dataclass(frozen=True)
class Preset:
    """One model on one kind of hardware: step times, KV geometry, engine defaults."""

    name: str
    model: str
    hardware: str
    max_model_len: int
    num_gpu_blocks: int  # at block_size 16
    kv_bytes_per_token: int
    max_num_seqs: int
    max_num_batched_tokens: int
    step_time: StepTimeModel
    raw: dict[str, Any]
    # vLLM's API server intake (llmsim.engine.frontend), from the preset's `frontend` block.
    frontend_ms_per_request: float = 0.0
    frontend_us_per_prompt_token: float = 0.0

    def gpu_blocks(self, block_size: int) -> int:
        """Blocks of `block_size` tokens that fit the same memory as the preset's."""
        return max(1, self.num_gpu_blocks * 16 // block_size)


def calibrated_step_time(d: dict[str, Any]) -> StepTimeModel:
    """A preset's step time with its calibration applied.

    The profile-built composition leaves out what Vidur's kernel profiles do not hold (the LM
    head, sampling, the host's time between steps). Where a whole-curve measurement of a real
    server on the same hardware exists, the preset's `calibration.step_time_scale` (fitted by
    benchmarks/engine_reference.py --fit, the reference named beside it) stretches every step,
    and `calibration.per_sequence_ms`, when given, adds that much for each sequence in it.
    `calibration.prefill_scale` (default 1.0), when given, multiplies the prefill terms (the
    prefill tokens' share of the dense part, prefill attention) on top of the factor.
    """
    model = StepTimeModel.from_dict(d["step_time"])
    cal = d.get("calibration", {})
    scale = float(cal.get("step_time_scale", 1.0))
    if scale != 1.0:
        model = model.scaled(scale)
    per_seq = float(cal.get("per_sequence_ms", 0.0))
    if per_seq:
        model = model.with_per_seq(per_seq)
    prefill_scale = float(cal.get("prefill_scale", 1.0))
    return model.with_prefill_scale(prefill_scale) if prefill_scale != 1.0 else model


def preset_names() -> list[str]:
    """The shipped presets' names (their JSON files' stems), sorted."""
    root = resources.files("llmsim.engine.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


_CACHE: dict[str, Preset] = {}


def load_preset(name: str) -> Preset:
    """A shipped preset by name; KeyError naming the known ones if there is none."""
    cached = _CACHE.get(name)
    if cached is not None:
        return cached
    if name not in preset_names():
        raise KeyError(f"unknown preset {name!r} (known: {', '.join(preset_names())})")
    text = resources.files("llmsim.engine.presets").joinpath(name + ".json").read_text("utf-8")
    d = json.loads(text)
    kv = d["kv_cache"]
    defaults = d["engine_defaults"]
    preset = Preset(
        name=name,
        model=d["model"],
        hardware=d["hardware"],
        max_model_len=int(d["max_model_len"]),
        num_gpu_blocks=int(kv["num_gpu_blocks"]),
        kv_bytes_per_token=int(kv["bytes_per_token"]),
        max_num_seqs=int(defaults["max_num_seqs"]),
        max_num_batched_tokens=int(defaults["max_num_batched_tokens"]),
        step_time=calibrated_step_time(d),
        raw=d,
        frontend_ms_per_request=float(d.get("frontend", {}).get("ms_per_request", 0.0)),
        frontend_us_per_prompt_token=float(d.get("frontend", {}).get("us_per_prompt_token", 0.0)),
    )
    _CACHE[name] = preset
    return preset
