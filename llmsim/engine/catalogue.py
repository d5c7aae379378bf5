"""Models' published limits: context window and maximum output tokens, by family.

Values are the providers' model pages as of late 2025 (platform.openai.com/docs/models,
docs.anthropic.com "Models overview", ai.google.dev "Gemini models", api-docs.deepseek.com
"Models & Pricing"). A name matches the longest prefix listed (after any "provider/" and "ft:"
prefix and before a date suffix); anything else gets the configurable defaults
(`--context-window`, `--max-output-tokens`), and `per_model` overrides any model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelLimits:
    """What a model accepts: prompt + output within `context_window`, output within
    `max_output_tokens`."""

    context_window: int
    max_output_tokens: int


# (name prefix, context window, max output tokens): the longest matching prefix wins.
_LIMITS: tuple[tuple[str, int, int], ...] = (
    # OpenAI
    ("gpt-5", 400_000, 128_000),
    ("gpt-5-chat", 128_000, 16_384),
    ("gpt-4.1", 1_047_576, 32_768),
    ("gpt-4.5", 128_000, 16_384),
    ("gpt-4o", 128_000, 16_384),
    ("chatgpt-4o", 128_000, 16_384),
    ("gpt-4-turbo", 128_000, 4_096),
    ("gpt-4", 8_192, 8_192),
    ("gpt-4-32k", 32_768, 8_192),
    ("gpt-3.5-turbo", 16_385, 4_096),
    ("gpt-3.5-turbo-instruct", 4_096, 4_096),
    ("gpt-35-turbo", 16_385, 4_096),
    ("o1", 200_000, 100_000),
    ("o1-mini", 128_000, 65_536),
    ("o3", 200_000, 100_000),
    ("o3-mini", 200_000, 100_000),
    ("o4-mini", 200_000, 100_000),
    ("text-embedding", 8_192, 0),
    # Anthropic
    ("claude-opus-4", 200_000, 32_000),
    ("claude-opus-4-5", 200_000, 64_000),
    ("claude-sonnet-4", 200_000, 64_000),
    ("claude-haiku-4", 200_000, 64_000),
    ("claude-3-7-sonnet", 200_000, 64_000),
    ("claude-3-5-sonnet", 200_000, 8_192),
    ("claude-3-5-haiku", 200_000, 8_192),
    ("claude-3-opus", 200_000, 4_096),
    ("claude-3-haiku", 200_000, 4_096),
    # Google
    ("gemini-2.5-pro", 1_048_576, 65_536),
    ("gemini-2.5-flash", 1_048_576, 65_536),
    ("gemini-2.0-flash", 1_048_576, 8_192),
    ("gemini-1.5-pro", 2_097_152, 8_192),
    ("gemini-1.5-flash", 1_048_576, 8_192),
    # DeepSeek
    ("deepseek-chat", 128_000, 8_192),
    ("deepseek-reasoner", 128_000, 65_536),
    ("deepseek-r1", 128_000, 65_536),
)
_BY_LENGTH = sorted(_LIMITS, key=lambda row: -len(row[0]))


def published_limits(model: str) -> ModelLimits | None:
    """The catalogue's limits for a model name, or None when it is not a known family."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:]
    for prefix, window, out in _BY_LENGTH:
        if name.startswith(prefix):
            return ModelLimits(window, out)
    return None


def limits_for(
    model: str,
    default_window: int,
    default_output: int,
    window: int | None = None,
    output: int | None = None,
) -> ModelLimits:
    """A model's limits: explicit per-model values, else the catalogue's, else the defaults."""
    known = published_limits(model)
    return ModelLimits(
        window if window is not None else (known.context_window if known else default_window),
        output if output is not None else (known.max_output_tokens if known else default_output),
    )
