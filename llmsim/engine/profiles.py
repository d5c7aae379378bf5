"""Latency profiles: how long a model takes to its first token and between tokens.

Each request samples one TTFT and one time-between-tokens (TBT) from its profile; the reply is
then paced exactly at that TBT, and both values are sent to the client in headers so it can
compare what it measured with what was planned.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

DISTRIBUTIONS = ("lognormal", "normal", "constant")


@dataclass(frozen=True)
class LatencyProfile:
    name: str
    ttft_ms: float
    ttft_stddev_ms: float
    tbt_ms: float
    tbt_stddev_ms: float

    def with_overrides(
        self,
        ttft_ms: float | None = None,
        ttft_stddev_ms: float | None = None,
        tbt_ms: float | None = None,
        tbt_stddev_ms: float | None = None,
    ) -> LatencyProfile:
        changes = {
            k: v
            for k, v in {
                "ttft_ms": ttft_ms,
                "ttft_stddev_ms": ttft_stddev_ms,
                "tbt_ms": tbt_ms,
                "tbt_stddev_ms": tbt_stddev_ms,
            }.items()
            if v is not None
        }
        return replace(self, **changes) if changes else self


def _p(name: str, ttft: float, ttft_sd: float, tbt: float, tbt_sd: float) -> LatencyProfile:
    return LatencyProfile(name, ttft, ttft_sd, tbt, tbt_sd)


PROFILES: dict[str, LatencyProfile] = {
    p.name: p
    for p in (
        _p("gpt-5", 600, 150, 40, 12),
        _p("gpt-5-mini", 300, 80, 20, 6),
        _p("gpt-4", 800, 200, 50, 15),
        _p("gpt-4o", 400, 100, 25, 8),
        _p("o-series", 2000, 500, 30, 10),
        _p("claude-opus", 1000, 250, 60, 20),
        _p("claude-sonnet", 500, 120, 30, 10),
        _p("claude-haiku", 200, 50, 15, 5),
        _p("gemini-pro", 600, 150, 35, 10),
        _p("gemini-flash", 200, 50, 15, 5),
        _p("deepseek", 500, 120, 30, 10),
        _p("deepseek-reasoner", 1500, 400, 25, 8),
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


def sample_ms(rng: random.Random, mean: float, stddev: float, distribution: str) -> float:
    """Sample a non-negative duration with the given mean and standard deviation.

    lognormal is the default because real latencies are right-skewed: a long tail of slow
    requests, never a negative one.
    """
    if stddev <= 0 or mean <= 0 or distribution == "constant":
        return max(0.0, mean)
    if distribution == "normal":
        return max(0.0, rng.gauss(mean, stddev))
    sigma2 = math.log1p((stddev / mean) ** 2)
    mu = math.log(mean) - sigma2 / 2
    return rng.lognormvariate(mu, math.sqrt(sigma2))
