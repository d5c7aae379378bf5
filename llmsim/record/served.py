"""A profile file as the engine's config objects: each fitted model's TimingConfig, chunking
and error rates (the server asks per model; other models keep the built-in profiles)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from llmsim.engine.timing import ChunkSpec, TimingConfig
from llmsim.record.profile_file import ModelProfile, ProfileFile, load_profile


@dataclass(frozen=True)
class FittedModel:
    """One profile-file model, in the engine's terms."""

    timing: TimingConfig
    chunk_tokens: ChunkSpec | None  # None: the API's own default


@cache
def loaded_profile(path: str) -> ProfileFile:
    """The profile file, read once per process (the settings already checked it)."""
    return load_profile(path)


def timing_of(m: ModelProfile) -> TimingConfig:
    """The stream loop's timing config for a fitted model."""
    chunks = _chunks(m) or ChunkSpec()
    out = m.output_tokens
    return TimingConfig(
        ttft_ms=m.ttft.mean_ms,
        ttft_stddev_ms=m.ttft.stddev_ms,
        tbt_ms=m.itl.mean_ms,
        tbt_stddev_ms=m.itl.stddev_ms,
        latency_distribution="lognormal",
        itl_jitter_cv=m.itl.jitter_cv,
        stall_probability=m.itl.stall_probability,
        stall_ms=m.itl.stall_ms,
        chunk_tokens=chunks,
        prefill_ms_per_1k=m.ttft.prefill_ms_per_1k,
        output_tokens=max(1, round(out.mean)) if out is not None else 256,
        output_tokens_stddev=out.stddev if out is not None else None,
        ttft_quantiles_ms=m.ttft.quantiles_ms if m.ttft.distribution == "empirical" else (),
    )


def _chunks(m: ModelProfile) -> ChunkSpec | None:
    c = m.chunk_tokens
    if c is None:
        return None
    if c.stddev == 0:
        return ChunkSpec("constant", float(max(1, round(c.mean))))
    return ChunkSpec("normal", max(1.0, c.mean), c.stddev)


@cache
def fitted_model(path: str, model: str) -> FittedModel | None:
    """The model's fitted config from the profile file, or None (built-in profile)."""
    m = loaded_profile(path).get(model)
    return None if m is None else FittedModel(timing_of(m), _chunks(m))


def profile_error_rates(path: str) -> dict[str, dict[str, float]]:
    """Model → fault kind → rate, for the fault injector."""
    return loaded_profile(path).error_rates()
