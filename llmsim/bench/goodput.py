"""Goodput: requests per second that met every per-request objective (`ttft<=500ms,tpot<=50ms`).

Unlike an SLO gate on a percentile, goodput judges each request on its own, as vLLM's benchmark
and AIPerf do: a request counts only if it succeeded and met all the objectives at once.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Per-request metrics in requests.csv (ITL is a distribution per request, so it has no row).
METRICS = ("ttft", "tpot", "e2e")
_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt}
_ITEM = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|<)\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*$")


@dataclass(frozen=True)
class Objective:
    """One per-request objective: metric (ms) op threshold."""

    metric: str
    op: str
    threshold_ms: float

    def met(self, value: float | None) -> bool:
        """Whether a request's value meets it (a missing value does not)."""
        return value is not None and _OPS[self.op](value, self.threshold_ms)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold_ms:g}ms"


def parse_goodput(text: str) -> list[Objective]:
    """`ttft<=500ms,tpot<=50ms`; ValueError with a one-line reason."""
    out = []
    for item in filter(None, (p.strip() for p in text.lower().split(","))):
        m = _ITEM.match(item)
        if m is None:
            raise ValueError(f"--goodput {text!r}: expected METRIC<=VALUE items like ttft<=500ms")
        metric, op, number, unit = m.groups()
        metric = metric.removesuffix("_ms")
        if metric not in METRICS:
            hint = " (ITL has no per-request value: use tpot)" if metric == "itl" else ""
            raise ValueError(
                f"--goodput {text!r}: unknown metric {metric!r}; use {', '.join(METRICS)}{hint}"
            )
        scale = 1000.0 if unit == "s" else 1.0
        out.append(Objective(metric, op, float(number) * scale))
    if not out:
        raise ValueError(f"--goodput {text!r}: no objective given")
    return out


def meets(objectives: list[Objective], values: Mapping[str, float | None]) -> bool:
    """Whether one successful request (values by metric, in ms) met every objective."""
    return all(o.met(values.get(o.metric)) for o in objectives)


def summary_block(
    objectives: list[Objective], good: int, total: int, seconds: float | None
) -> dict[str, Any]:
    """The `goodput` block of summary.json."""
    return {
        "objectives": [str(o) for o in objectives],
        "good_requests": good,
        "requests": total,
        "fraction": round(good / total, 6) if total else None,
        "per_s": round(good / seconds, 3) if seconds else None,
    }
