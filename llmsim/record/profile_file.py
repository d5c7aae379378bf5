"""The profile file: per model, the timing, lengths and errors `llmsim serve` plays.

Written by `llmsim calibrate`, or by hand. Every key is checked; an unknown key or a bad value
is a ProfileError whose message names it (`models.gpt-4o.itl.jitter_cv: must be at least 0`).

    version: 1
    models:
      gpt-4o:
        ttft:                       # time to first token
          distribution: lognormal   # or empirical (then quantiles_ms)
          mean_ms: 300
          stddev_ms: 90
          prefill_ms_per_1k: 0      # added per 1,000 prompt tokens
        itl:                        # time between tokens
          mean_ms: 25               # mean of the per-request mean
          stddev_ms: 6              # spread of the per-request mean
          jitter_cv: 0.2            # per-token variation around the request's mean
          stall_probability: 0.0    # share of gaps that stall ...
          stall_ms: 0               # ... for this long on average (exponential)
        chunk_tokens: 1             # tokens per event: N, or {mean: M, stddev: S}
        output_tokens: {mean: 256, stddev: 64}
        errors: {"429": 0.01, "500": 0.002, drop: 0.0}   # share of requests, by kind
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmsim.engine.faults import FAULT_KINDS
from llmsim.yaml_file import YamlFileError, read_yaml

FORMAT_VERSION = 1
# What a profile's `errors` may hold: the simulator's fault kinds.
ERROR_KINDS = FAULT_KINDS


class ProfileError(ValueError):
    """A bad profile file; str() is one line naming the key."""


@dataclass(frozen=True)
class Ttft:
    """Time to first token: lognormal (mean, stddev) or empirical quantiles, plus prefill."""

    distribution: str = "lognormal"
    mean_ms: float = 0.0
    stddev_ms: float = 0.0
    quantiles_ms: tuple[float, ...] = ()
    prefill_ms_per_1k: float = 0.0


@dataclass(frozen=True)
class Itl:
    """Time between tokens: a mean per request, then per-token jitter and stalls."""

    mean_ms: float = 0.0
    stddev_ms: float = 0.0
    jitter_cv: float = 0.0
    stall_probability: float = 0.0
    stall_ms: float = 0.0


@dataclass(frozen=True)
class Spread:
    """A mean and a standard deviation (a length drawn lognormally around the mean)."""

    mean: float
    stddev: float = 0.0


@dataclass(frozen=True)
class ModelProfile:
    """What one model does, as recorded."""

    ttft: Ttft
    itl: Itl
    chunk_tokens: Spread | None = None  # None: the API's own default
    output_tokens: Spread | None = None
    errors: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)  # informational, from calibrate


@dataclass(frozen=True)
class ProfileFile:
    """A whole profile file: model name → ModelProfile."""

    models: dict[str, ModelProfile]
    source: dict[str, Any] = field(default_factory=dict)

    def get(self, model: str) -> ModelProfile | None:
        """The model's profile; None means: use the built-in one."""
        return self.models.get(model)

    def error_rates(self) -> dict[str, dict[str, float]]:
        """Model → fault kind → rate, for the fault injector."""
        return {name: dict(m.errors) for name, m in self.models.items()}


# --- reading and checking -------------------------------------------------------------------


def _fail(where: str, what: str) -> ProfileError:
    return ProfileError(f"{where}: {what}")


def _mapping(value: Any, where: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {value!r}")
    for key in value:
        if key not in known:
            raise _fail(f"{where}.{key}", f"unknown key (known: {', '.join(known)})")
    return value


def _number(value: Any, where: str, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"expected a number, got {value!r}")
    if value < low:
        raise _fail(where, f"must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise _fail(where, f"must be at most {high:g}, got {value:g}")
    return float(value)


def _ttft(raw: Any, where: str) -> Ttft:
    keys = ("distribution", "mean_ms", "stddev_ms", "quantiles_ms", "prefill_ms_per_1k")
    m = _mapping(raw, where, keys)
    dist = m.get("distribution", "lognormal")
    if dist not in ("lognormal", "empirical"):
        raise _fail(f"{where}.distribution", f"must be lognormal or empirical, got {dist!r}")
    prefill = _number(m.get("prefill_ms_per_1k", 0), f"{where}.prefill_ms_per_1k")
    if dist == "empirical":
        q = m.get("quantiles_ms")
        if not isinstance(q, list) or len(q) < 2:
            raise _fail(f"{where}.quantiles_ms", "expected a list of at least 2 numbers")
        values = tuple(_number(v, f"{where}.quantiles_ms[{i}]") for i, v in enumerate(q))
        if any(b < a for a, b in itertools.pairwise(values)):
            raise _fail(f"{where}.quantiles_ms", "must not decrease")
        return Ttft("empirical", sum(values) / len(values), 0.0, values, prefill)
    if "mean_ms" not in m:
        raise _fail(f"{where}.mean_ms", "missing (the lognormal's mean)")
    return Ttft(
        "lognormal",
        _number(m["mean_ms"], f"{where}.mean_ms"),
        _number(m.get("stddev_ms", 0), f"{where}.stddev_ms"),
        (),
        prefill,
    )


def _itl(raw: Any, where: str) -> Itl:
    keys = ("mean_ms", "stddev_ms", "jitter_cv", "stall_probability", "stall_ms")
    m = _mapping(raw, where, keys)
    if "mean_ms" not in m:
        raise _fail(f"{where}.mean_ms", "missing (the mean time between tokens)")
    return Itl(
        _number(m["mean_ms"], f"{where}.mean_ms"),
        _number(m.get("stddev_ms", 0), f"{where}.stddev_ms"),
        _number(m.get("jitter_cv", 0), f"{where}.jitter_cv", 0, 10),
        _number(m.get("stall_probability", 0), f"{where}.stall_probability", 0, 1),
        _number(m.get("stall_ms", 0), f"{where}.stall_ms"),
    )


def _spread(raw: Any, where: str, low: float) -> Spread:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return Spread(_number(raw, where, low))
    m = _mapping(raw, where, ("mean", "stddev"))
    if "mean" not in m:
        raise _fail(f"{where}.mean", "missing")
    return Spread(
        _number(m["mean"], f"{where}.mean", low), _number(m.get("stddev", 0), f"{where}.stddev")
    )


def _errors(raw: Any, where: str) -> dict[str, float]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        raw = {str(k): v for k, v in raw.items()}  # YAML reads 429: as an integer key
    m = _mapping(raw, where, ERROR_KINDS)
    rates = {k: _number(v, f"{where}.{k}", 0, 1) for k, v in m.items()}
    if sum(rates.values()) > 1 + 1e-9:
        raise _fail(where, f"rates add up to {sum(rates.values()):g}, more than 1")
    return rates


_MODEL_KEYS = ("ttft", "itl", "chunk_tokens", "output_tokens", "errors", "quality")


def parse_model(raw: Any, where: str) -> ModelProfile:
    """One model's entry, checked."""
    m = _mapping(raw, where, _MODEL_KEYS)
    for needed in ("ttft", "itl"):
        if needed not in m:
            raise _fail(f"{where}.{needed}", "missing")
    quality = m.get("quality") or {}
    if not isinstance(quality, dict):
        raise _fail(f"{where}.quality", "expected a mapping")
    return ModelProfile(
        ttft=_ttft(m["ttft"], f"{where}.ttft"),
        itl=_itl(m["itl"], f"{where}.itl"),
        chunk_tokens=(
            None
            if m.get("chunk_tokens") is None
            else _spread(m["chunk_tokens"], f"{where}.chunk_tokens", 1)
        ),
        output_tokens=(
            None
            if m.get("output_tokens") is None
            else _spread(m["output_tokens"], f"{where}.output_tokens", 1)
        ),
        errors=_errors(m.get("errors"), f"{where}.errors"),
        quality=quality,
    )


def parse_profile(raw: Any, name: str = "profile") -> ProfileFile:
    """A decoded profile document, checked."""
    top = _mapping(raw, name, ("version", "models", "source"))
    version = top.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise _fail(f"{name}: version", f"must be {FORMAT_VERSION}, got {version!r}")
    models = top.get("models")
    if not isinstance(models, dict) or not models:
        raise _fail(f"{name}: models", "expected a mapping of model name: profile")
    return ProfileFile(
        {str(k): parse_model(v, f"{name}: models.{k}") for k, v in models.items()},
        top.get("source") or {},
    )


def load_profile(path: str | Path) -> ProfileFile:
    """Read and check a profile file; ProfileError (one line) when it is not usable."""
    p = Path(path)
    try:
        raw = read_yaml(p)
    except YamlFileError as exc:
        raise ProfileError(f"{p}: {exc}") from None
    return parse_profile(raw, str(p))


def _clean(v: float) -> float | int:
    r = round(v, 3)
    return int(r) if r == int(r) else r


def model_to_dict(m: ModelProfile) -> dict[str, Any]:
    """The YAML form of one model's profile (what parse_model reads back)."""
    t = m.ttft
    ttft: dict[str, Any] = {"distribution": t.distribution}
    if t.distribution == "empirical":
        ttft["quantiles_ms"] = [_clean(q) for q in t.quantiles_ms]
    else:
        ttft.update(mean_ms=_clean(t.mean_ms), stddev_ms=_clean(t.stddev_ms))
    ttft["prefill_ms_per_1k"] = _clean(t.prefill_ms_per_1k)
    i = m.itl
    out: dict[str, Any] = {
        "ttft": ttft,
        "itl": {
            "mean_ms": _clean(i.mean_ms),
            "stddev_ms": _clean(i.stddev_ms),
            "jitter_cv": _clean(i.jitter_cv),
            "stall_probability": _clean(i.stall_probability),
            "stall_ms": _clean(i.stall_ms),
        },
    }
    c = m.chunk_tokens
    if c is not None:
        out["chunk_tokens"] = (
            _clean(c.mean)
            if c.stddev == 0
            else {"mean": _clean(c.mean), "stddev": _clean(c.stddev)}
        )
    if m.output_tokens is not None:
        out["output_tokens"] = {
            "mean": _clean(m.output_tokens.mean),
            "stddev": _clean(m.output_tokens.stddev),
        }
    out["errors"] = {k: round(v, 6) for k, v in m.errors.items()}
    if m.quality:
        out["quality"] = m.quality
    return out


def dump_profile(pf: ProfileFile) -> str:
    """The profile file's text."""
    doc = {
        "version": FORMAT_VERSION,
        "source": pf.source,
        "models": {k: model_to_dict(v) for k, v in pf.models.items()},
    }
    head = (
        "# llmsim profile file (docs/record-calibrate.md); serve it: llmsim serve --profile-file\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
