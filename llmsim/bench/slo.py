"""Service-level objectives: `ttft_p95<=800ms`, `error_rate<=1%`, `output_tps>=1000`.

An SLO is parsed before the run starts (a typo is a usage error, not a failed run discovered a
minute later) and evaluated against summary.json's figures, so what the exit code judged is
exactly what the report shows.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LATENCY_METRICS = ("ttft", "itl", "tpot", "e2e")
STATS = ("p50", "p90", "p95", "p99", "mean", "min", "max")

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
# The sign is matched so that a negative bound gets its own message, and fidelity (signed) can
# have a lower bound below zero.
_EXPR = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*(-?[0-9]*\.?[0-9]+)\s*([a-z%/]*)\s*$")


def _dig(summary: Mapping[str, Any], *path: str) -> float | None:
    node: Any = summary
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return None if node is None else float(node)


def _error_rate(summary: Mapping[str, Any]) -> float | None:
    total = _dig(summary, "requests", "total")
    failed = _dig(summary, "requests", "failed")
    if not total or failed is None:
        return None
    return failed / total


# name -> (kind, getter). kind decides which units a threshold may carry.
METRICS: dict[str, tuple[str, Callable[[Mapping[str, Any]], float | None]]] = {}
for _m in LATENCY_METRICS:
    for _s in STATS:
        METRICS[f"{_m}_{_s}"] = ("ms", lambda s, m=_m, st=_s: _dig(s, f"{m}_ms", st))
for _s in STATS:
    # Fidelity is signed (measured minus planned), so an SLO on it bounds the tool's own error.
    METRICS[f"fidelity_{_s}"] = ("ms", lambda s, st=_s: _dig(s, "fidelity", "ttft_ms", st))
METRICS.update(
    {
        "error_rate": ("ratio", _error_rate),
        "output_tps": ("per_s", lambda s: _dig(s, "tokens", "output_per_s")),
        "input_tps": ("per_s", lambda s: _dig(s, "tokens", "input_per_s")),
        "rps": ("per_s", lambda s: _dig(s, "requests", "per_s")),
        "goodput": ("per_s", lambda s: _dig(s, "goodput", "per_s")),
        "requests": ("count", lambda s: _dig(s, "requests", "total")),
        "failures": ("count", lambda s: _dig(s, "requests", "failed")),
    }
)

_UNITS: dict[str, dict[str, float]] = {
    "ms": {"": 1.0, "ms": 1.0, "s": 1000.0},
    "ratio": {"": 1.0, "%": 0.01},
    "per_s": {"": 1.0, "/s": 1.0},
    "count": {"": 1.0},
}


class SLOError(ValueError):
    """An SLO expression that cannot be parsed; str() is one line naming the expression."""


@dataclass(frozen=True)
class SLO:
    """One parsed --slo objective, `metric op threshold`; `kind` is ms, ratio, per_s or count."""

    expr: str
    metric: str
    op: str
    threshold: float  # in the metric's base unit: ms, a fraction, or per second
    kind: str

    def evaluate(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        """This objective judged on summary.json's figures: one entry of `slo.results`. A
        metric the run has no figure for fails."""
        actual = METRICS[self.metric][1](summary)
        passed = actual is not None and _OPS[self.op](actual, self.threshold)
        result: dict[str, Any] = {
            "slo": self.expr,
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "unit": _base_unit(self.kind),
            "actual": None if actual is None else round(actual, 6),
            "passed": passed,
        }
        if actual is None:
            result["reason"] = "no data for this metric in the run"
        return result


def _base_unit(kind: str) -> str:
    return {"ms": "ms", "ratio": "fraction", "per_s": "per second", "count": "count"}[kind]


def parse_slo(expr: str) -> SLO:
    """An --slo expression with its threshold in the metric's base unit (1s: 1000 ms, 1%: 0.01);
    SLOError says what is wrong with it."""
    m = _EXPR.match(expr.lower())
    if m is None:
        raise SLOError(
            f"--slo {expr!r}: expected METRIC OP VALUE, e.g. ttft_p95<=800ms, error_rate<=1%"
        )
    metric, op, number, unit = m.groups()
    if metric not in METRICS:
        raise SLOError(f"--slo {expr!r}: unknown metric {metric!r} (known: {known_metrics()})")
    kind = METRICS[metric][0]
    if unit == "/s" or unit == "ps":
        unit = "/s"
    scale = _UNITS[kind].get(unit)
    if scale is None:
        allowed = ", ".join(u or "none" for u in _UNITS[kind])
        raise SLOError(f"--slo {expr!r}: unit {unit!r} does not fit {metric} (use {allowed})")
    threshold = float(number) * scale or 0.0  # "-0" is 0, not a -0.0 in summary.json
    _check_bound(expr, metric, kind, threshold)
    return SLO(expr.strip(), metric, op, threshold, kind)


def _check_bound(expr: str, metric: str, kind: str, threshold: float) -> None:
    """Refuse a threshold the metric can never take: such an SLO always passes or always fails,
    which is a typo (150% for 1.5%) and not an objective."""
    if threshold < 0 and not metric.startswith("fidelity_"):  # fidelity alone is signed
        raise SLOError(f"--slo {expr!r}: {metric} is never negative")
    if kind == "ratio" and threshold > 1:
        raise SLOError(f"--slo {expr!r}: {metric} is a fraction, from 0 to 1 (0% to 100%)")
    if kind == "count" and threshold != int(threshold):
        raise SLOError(f"--slo {expr!r}: {metric} is a count, a whole number")


def known_metrics() -> str:
    """The metric names for an error message, the latency percentiles folded into one pattern."""
    names = [n for n in METRICS if not n.startswith(("ttft_", "itl_", "tpot_", "e2e_", "fid"))]
    return "{ttft,itl,tpot,e2e,fidelity}_{p50,p90,p95,p99,mean,min,max}, " + ", ".join(names)


def evaluate_slos(slos: list[SLO], summary: Mapping[str, Any]) -> dict[str, Any]:
    """The `slo` block of summary.json: every result, and whether all passed."""
    results = [slo.evaluate(summary) for slo in slos]
    return {"passed": all(r["passed"] for r in results), "results": results}
