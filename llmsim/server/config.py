"""The engine's config objects, built from the server's settings (the engine never sees them)."""

from __future__ import annotations

from llmsim.engine.capacity import PoolConfig
from llmsim.engine.catalogue import limits_for
from llmsim.engine.config import EngineConfig, ModelConfig
from llmsim.engine.profiles import PROFILES, profile_name_for_model
from llmsim.engine.replicas import VllmConfig
from llmsim.engine.timing import ChunkSpec, TimingConfig
from llmsim.record.replay import replayer
from llmsim.record.served import fitted_model
from llmsim.settings import Settings


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


def model_config(settings: Settings, model: str) -> ModelConfig:
    """One model's timing and limits: settings (with per_model) over its profile and catalogue."""
    s = settings.for_model(model)
    p = PROFILES[s.profile or profile_name_for_model(model)]
    tbt_sd = _pick(s.tbt_stddev_ms, p.tbt_stddev_ms)
    ttft_sd = _pick(s.ttft_stddev_ms, p.ttft_stddev_ms)
    # A stddev of 0 pins its quantity: TTFT stddev 0 means no default prefill (the TTFT is as
    # configured), TBT stddev 0 means no default jitter, stalls or multi-token events (every
    # gap is the configured one). Each can still be asked for explicitly.
    exact = tbt_sd == 0
    timing = TimingConfig(
        ttft_ms=_pick(s.ttft_ms, p.ttft_ms),
        ttft_stddev_ms=ttft_sd,
        tbt_ms=_pick(s.tbt_ms, p.tbt_ms),
        tbt_stddev_ms=tbt_sd,
        latency_distribution=s.latency_distribution,
        itl_jitter_cv=_pick(s.itl_jitter_cv, 0.0 if exact else p.itl_jitter_cv),
        stall_probability=_pick(s.stall_probability, 0.0 if exact else p.stall_probability),
        stall_ms=_pick(s.stall_ms, p.stall_ms),
        chunk_tokens=ChunkSpec.parse(s.chunk_tokens) if s.chunk_tokens else ChunkSpec(),
        prefill_ms_per_1k=_pick(s.prefill_ms_per_1k, 0.0 if ttft_sd == 0 else p.prefill_ms_per_1k),
        output_tokens=s.output_tokens,
        output_tokens_stddev=s.output_tokens_stddev,
    )
    own = settings.per_model.get(model, {})
    limits = limits_for(
        model,
        settings.context_window,
        settings.max_output_tokens,
        own.get("context_window"),
        own.get("max_output_tokens"),
    )
    chunks = ChunkSpec.parse(s.chunk_tokens) if s.chunk_tokens else None
    fitted = fitted_model(settings.profile_file, model) if settings.profile_file else None
    if fitted is not None:  # --profile-file: what a recording of this model showed
        return ModelConfig(fitted.timing, limits, fitted.chunk_tokens or chunks)
    if chunks is None and exact:
        chunks = ChunkSpec()  # exact runs: one token per event whatever the API's default
    return ModelConfig(timing, limits, chunks)


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's config: generator, seed, tool-call rate and each model's config."""
    return EngineConfig(
        generator=settings.generator,
        seed=settings.seed,
        tool_call_rate=settings.tool_call_rate,
        model=lambda name: model_config(settings, name),
        replay=replayer(settings.replay) if settings.replay else None,
    )


def pool_config(settings: Settings, model: str) -> tuple[str | None, PoolConfig]:
    """Which capacity pool a model uses: its own when per_model sets max_concurrency."""
    own = "max_concurrency" in settings.per_model.get(model, {})
    s = settings.for_model(model) if own else settings
    return (model if own else None), PoolConfig(s.max_concurrency, s.queue_limit, s.load_factor)


def vllm_config(settings: Settings) -> VllmConfig:
    """Engine mode's replicas (`--engine vllm`)."""
    return VllmConfig(
        preset=settings.preset,
        replicas=settings.replicas,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_model_len=settings.max_model_len,
        chunked_prefill=settings.enable_chunked_prefill,
        block_size=settings.block_size,
        num_gpu_blocks=settings.num_gpu_blocks_override,
        prefix_caching=settings.enable_prefix_caching,
        step_jitter_cv=settings.step_jitter_cv,
        seed=settings.seed,
        num_scheduler_steps=settings.num_scheduler_steps,
        frontend_ms_per_request=settings.frontend_ms_per_request,
        frontend_us_per_prompt_token=settings.frontend_us_per_prompt_token,
        frontend_handover_order=settings.frontend_handover_order,
    )
