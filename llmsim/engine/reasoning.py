"""Reasoning models: the hidden tokens they bill, consistent with the time they take.

A reasoning model thinks before its first visible token, so its latency profile already has a
long TTFT (o-series 2 s, deepseek-reasoner 1.5 s). The reasoning tokens it reports are the part
of that TTFT spent thinking, generated at the model's own pace: share × TTFT / TBT. Timing and
token counts then tell the same story, and `--ttft-ms` moves both.
"""

from __future__ import annotations

# Name prefixes of models that reason (after any "provider/" and "ft:" prefix).
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5", "deepseek-reasoner", "deepseek-r1")
_NOT_REASONING = ("gpt-5-chat",)

# How much of the TTFT is thinking, by reasoning.effort (None: the API's default, medium).
EFFORT_SHARE = {"none": 0.0, "minimal": 0.1, "low": 0.5, "medium": 0.8, "high": 0.95}
EFFORT_SHARE["xhigh"] = EFFORT_SHARE["high"]


def is_reasoning_model(model: str) -> bool:
    """Whether a model name (after any "provider/" and "ft:") is of a family that reasons."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:]
    return name.startswith(_REASONING_PREFIXES) and not name.startswith(_NOT_REASONING)


def reasoning_tokens(model: str, ttft_s: float, tbt_s: float, effort: str | None) -> int:
    """Hidden tokens a reply bills: share × TTFT / TBT (seconds), the share by `effort`.

    An unknown or missing effort counts as medium; 0 for a model that does not reason, or when
    TBT is 0 (e.g. the `instant` profile).
    """
    if not is_reasoning_model(model) or tbt_s <= 0:
        return 0
    share = EFFORT_SHARE.get(effort or "medium", EFFORT_SHARE["medium"])
    return int(share * ttft_s / tbt_s)
