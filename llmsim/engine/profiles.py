"""Latency profiles: how long a model takes to its first token and between tokens.

Each request samples one TTFT and one mean time-between-tokens (TBT) from its profile (both
are sent to the client in headers); each gap then varies around that mean with the profile's
per-token jitter and stalls, and a long prompt starts later by its prefill time (see
engine/timing.py and docs/timing.md for where the hosted figures come from).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsim.engine.timing import sample_ms  # noqa: F401  (its home before engine.timing)

DISTRIBUTIONS = ("lognormal", "normal", "constant")


@dataclass(frozen=True)
class LatencyProfile:
    """One model family's timing defaults (any setting overrides its field)."""

    name: str
    ttft_ms: float
    ttft_stddev_ms: float
    tbt_ms: float
    tbt_stddev_ms: float
    itl_jitter_cv: float = 0.0
    stall_probability: float = 0.0
    stall_ms: float = 0.0
    prefill_ms_per_1k: float = 0.0


# Hosted APIs' per-token shape (docs/timing.md gives the sources): gaps vary token by token
# with a coefficient of variation around 0.5, and about one gap in a hundred is a stall of
# ~150 ms; prefill adds ~10-30 ms of TTFT per 1,000 prompt tokens.
HOSTED_JITTER_CV = 0.5
HOSTED_STALL_P = 0.01
HOSTED_STALL_MS = 150.0


def _p(
    name: str, ttft: float, ttft_sd: float, tbt: float, tbt_sd: float, prefill: float = 0.0
) -> LatencyProfile:
    hosted = prefill > 0
    return LatencyProfile(
        name,
        ttft,
        ttft_sd,
        tbt,
        tbt_sd,
        HOSTED_JITTER_CV if hosted else 0.0,
        HOSTED_STALL_P if hosted else 0.0,
        HOSTED_STALL_MS if hosted else 0.0,
        prefill,
    )


PROFILES: dict[str, LatencyProfile] = {
    p.name: p
    for p in (
        _p("gpt-5", 600, 150, 40, 12, 20),
        _p("gpt-5-mini", 300, 80, 20, 6, 10),
        _p("gpt-4", 800, 200, 50, 15, 30),
        _p("gpt-4o", 400, 100, 25, 8, 20),
        _p("o-series", 2000, 500, 30, 10, 20),
        _p("claude-opus", 1000, 250, 60, 20, 30),
        _p("claude-sonnet", 500, 120, 30, 10, 20),
        _p("claude-haiku", 200, 50, 15, 5, 10),
        _p("gemini-pro", 600, 150, 35, 10, 15),
        _p("gemini-flash", 200, 50, 15, 5, 8),
        _p("deepseek", 500, 120, 30, 10, 25),
        _p("deepseek-reasoner", 1500, 400, 25, 8, 25),
        _p("embedding", 60, 15, 0, 0),
        _p("fast", 10, 2, 1, 0),
        _p("instant", 0, 0, 0, 0),
    )
}

DEFAULT_PROFILE = "gpt-4o"

# Family matches on the model name, most specific first.
_FAMILY_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("text-embedding", "embed"), "embedding"),
    (("gpt-5-mini", "gpt-5-nano", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o-mini"), "gpt-5-mini"),
    (("gpt-5",), "gpt-5"),
    (("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5"), "gpt-4o"),
    (("gpt-4", "gpt-3.5", "gpt-35"), "gpt-4"),
    (("o1", "o3", "o4"), "o-series"),
    (("claude-opus", "claude-3-opus", "claude-4-opus"), "claude-opus"),
    (("claude-haiku", "claude-3-haiku", "claude-3-5-haiku"), "claude-haiku"),
    (("claude",), "claude-sonnet"),
    (("gemini-pro", "gemini-1.5-pro", "gemini-2.5-pro", "gemini-2.0-pro"), "gemini-pro"),
    (("gemini",), "gemini-flash"),
    (("deepseek-reasoner", "deepseek-r1"), "deepseek-reasoner"),
    (("deepseek",), "deepseek"),
)


def profile_name_for_model(model: str) -> str:
    """The latency profile a model name gets when none is set.

    After any "provider/" and "ft:" prefix: a profile's own name, else the first family whose
    prefix the name starts with, else the first it merely contains, else gpt-4o.
    """
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:]
    if name in PROFILES:
        return name
    for prefixes, profile in _FAMILY_RULES:
        if any(name.startswith(p) for p in prefixes):
            return profile
    for prefixes, profile in _FAMILY_RULES:
        if any(p in name for p in prefixes):
            return profile
    return DEFAULT_PROFILE
