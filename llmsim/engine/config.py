"""The engine's own configuration: small objects the server builds from its settings.

The engine never reads the CLI's settings. `EngineConfig` holds what is the same for every model;
`model(name)` gives one model's `ModelConfig` (timing and limits), which is where a loaded
profile (`--profile-file`) or per-model overrides come in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmsim.engine.catalogue import ModelLimits
from llmsim.engine.timing import ChunkSpec, TimingConfig

# Output tokens one request may ask for in all (n × max_tokens): a non-streaming reply is built
# whole, so this bounds its memory (~6 bytes a token) whatever the request says.
MAX_TOTAL_OUTPUT_TOKENS = 1 << 20


@dataclass(frozen=True)
class ModelConfig:
    """One model's behaviour: its timing model and its limits.

    `chunk_tokens` is None when the setting was not given: the API's own default applies.
    """

    timing: TimingConfig
    limits: ModelLimits
    chunk_tokens: ChunkSpec | None = None


def _default_model(name: str) -> ModelConfig:
    return ModelConfig(TimingConfig(0.0, 0.0, 0.0, 0.0), ModelLimits(128_000, 32_768))


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs, independent of any API or of the server."""

    generator: str = "lorem"
    seed: int | None = None
    tool_call_rate: float = 1.0
    model: Callable[[str], ModelConfig] = field(default=_default_model)
    max_total_output_tokens: int = MAX_TOTAL_OUTPUT_TOKENS
    # Recorded replies (llmsim.record.replay): request → its recorded Reply, or None.
    replay: Callable[[Any], Any] | None = None
