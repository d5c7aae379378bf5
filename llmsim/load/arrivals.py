"""Open-loop arrival schedules: when each request is due, independent of the replies.

`poisson` (exponential gaps, CV 1), `constant` (CV 0) and `gamma:cv=C` (burstier above 1, more
regular below), as vLLM's `--burstiness` and AIPerf's gamma arrivals: gaps are Gamma(k = 1/C²,
θ = 1/(rate·k)), whose mean is 1/rate and coefficient of variation C.

With several Locust processes (or users) each runs its own schedule at rate/N. Poisson streams
superpose to a Poisson stream at the full rate; constant streams are phase-shifted by i/N of a
period so the whole swarm is constant too; gamma streams keep their CV per process.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

KINDS = ("poisson", "constant", "gamma")


@dataclass(frozen=True)
class Arrival:
    """An arrival process: its kind and the coefficient of variation of its gaps."""

    kind: str = "poisson"
    cv: float = 1.0

    def __str__(self) -> str:
        return f"gamma:cv={self.cv:g}" if self.kind == "gamma" else self.kind


def parse_arrival(text: str) -> Arrival:
    """`poisson`, `constant` or `gamma:cv=C` (C > 0); ValueError with a one-line reason."""
    raw = str(text).strip().lower()
    if raw == "poisson":
        return Arrival("poisson", 1.0)
    if raw == "constant":
        return Arrival("constant", 0.0)
    kind, _, rest = raw.partition(":")
    if kind == "gamma":
        key, eq, value = rest.partition("=")
        try:
            cv = float(value) if key.strip() == "cv" and eq else None
        except ValueError:
            cv = None
        if cv is None or not cv > 0 or cv != cv:
            raise ValueError(f"expected gamma:cv=C with C > 0, got {text!r}")
        return Arrival("gamma", cv)
    raise ValueError(f"expected poisson, constant or gamma:cv=C, got {text!r}")


def gaps(arrival: Arrival, rate: float, rng: random.Random) -> Iterator[float]:
    """Successive gaps in seconds between arrivals at `rate` per second."""
    if rate <= 0:
        raise ValueError(f"rate must be above 0, got {rate:g}")
    mean = 1.0 / rate
    if arrival.kind == "constant":
        while True:
            yield mean
    if arrival.kind == "poisson":
        while True:
            yield rng.expovariate(rate)
    shape = 1.0 / (arrival.cv * arrival.cv)
    scale = mean / shape
    while True:
        yield rng.gammavariate(shape, scale)


def schedule(
    arrival: Arrival, rate: float, rng: random.Random, phase: float = 0.0
) -> Iterator[float]:
    """Offsets in seconds from the start at which requests are due.

    `phase` (0 to 1): where in the first period a constant schedule starts, so that N
    phase-shifted schedules at rate/N add up to one at the full rate.
    """
    t = 0.0
    it = gaps(arrival, rate, rng)
    if arrival.kind == "constant":
        t = phase / rate
        yield t
        for gap in it:
            t += gap
            yield t
    for gap in it:
        t += gap
        yield t
