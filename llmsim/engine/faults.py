"""Fault injection: random rates, a forcing header, and scripted sequences.

A fault is decided once per request, before any work: HTTP faults answer at once, `timeout`
hangs and then answers 504 (or closes), `drop` closes the connection after k tokens and
`stream-error` sends an error event after k tokens (k uniform over the reply).
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmsim.yaml_file import read_yaml

HTTP_FAULTS = ("429", "500", "502", "503", "529")
FAULT_KINDS = (*HTTP_FAULTS, "timeout", "drop", "stream-error")
OK = "ok"  # a scripted step that succeeds


def _rate(text: str) -> float:
    t = text.strip()
    try:
        rate = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"rate {text!r} is not a number or a percentage") from None
    if not 0 <= rate <= 1:
        raise ValueError(f"rate {text!r} must be between 0 and 1 (or 0% and 100%)")
    return rate


def parse_fault_rates(items: list[str]) -> dict[str, float]:
    """["500=0.05", "drop=2%"] -> {"500": 0.05, "drop": 0.02}; the rates may not sum above 1."""
    rates: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        kind = kind.strip().lower()
        if not sep:
            raise ValueError(f"{item!r}: expected KIND=RATE, e.g. 500=0.05")
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"{item!r}: unknown fault kind {kind!r} (kinds: {', '.join(FAULT_KINDS)})"
            )
        rates[kind] = rates.get(kind, 0.0) + _rate(value)
    if sum(rates.values()) > 1 + 1e-9:
        raise ValueError(f"fault rates add up to {sum(rates.values()):g}, more than 1")
    return rates


@dataclass(frozen=True)
class ScriptRule:
    """One rule of a fault script: `sequence` (fault kinds or "ok") played per API key and model.

    `model` and `key` restrict it (None: any). With `repeat` the sequence cycles; without, once
    it is played out the rule no longer decides and later rules or the fault rates do.
    """

    sequence: tuple[str, ...]
    model: str | None = None
    key: str | None = None
    repeat: bool = False

    def matches(self, model: str, key: str) -> bool:
        """Whether the rule applies to a request for `model` made with API key `key`."""
        return (self.model is None or self.model == model) and (self.key is None or self.key == key)


def _script_step(value: Any) -> str:
    step = str(value).strip().lower()
    if step not in (*FAULT_KINDS, OK):
        raise ValueError(f"unknown step {value!r} (use {', '.join(FAULT_KINDS)} or ok)")
    return step


def load_fault_script(path: str | Path) -> list[ScriptRule]:
    """Read a fault script: a list of rules, each a sequence played per API key and model.

    - sequence: [503, 503, 503, ok]   # then succeed (or cycle, with repeat: true)
      model: gpt-4o                   # optional: only this model
      key: sk-test                    # optional: only this API key
    """
    raw = read_yaml(path)  # YamlFileError is a ValueError: the caller names the file
    if isinstance(raw, dict) and "rules" in raw:
        raw = raw["rules"]
    if not isinstance(raw, list):
        raise ValueError("expected a list of rules, each with a sequence")
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("sequence"), list):
            raise ValueError(f"rule {i + 1}: expected a mapping with a sequence list")
        unknown = set(item) - {"sequence", "model", "key", "repeat"}
        if unknown:
            raise ValueError(f"rule {i + 1}: unknown key {sorted(unknown)[0]!r}")
        try:
            seq = tuple(_script_step(s) for s in item["sequence"])
        except ValueError as exc:
            raise ValueError(f"rule {i + 1}: {exc}") from None
        rules.append(
            ScriptRule(
                seq,
                None if item.get("model") is None else str(item["model"]),
                None if item.get("key") is None else str(item["key"]),
                bool(item.get("repeat", False)),
            )
        )
    return rules


MAX_TRACKED_KEYS = 10_000  # (rule, key, model) script positions remembered at once


class FaultInjector:
    """Decides each request's fault. Scripted sequences advance per (rule, key, model)."""

    def __init__(
        self,
        rates: dict[str, float],
        rules: list[ScriptRule],
        rng: random.Random,
        model_rates: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.rates = [(kind, rate) for kind, rate in rates.items() if rate > 0]
        # A profile file's recorded error rates replace the global ones for its models.
        self.model_rates = {
            m: [(k, r) for k, r in v.items() if r > 0] for m, v in (model_rates or {}).items()
        }
        self.rules = rules
        self._rng = rng
        # Script positions per (rule, key, model), least recently used first; bounded, so
        # clients inventing keys cannot grow it (an evicted key starts its script afresh).
        self._positions: OrderedDict[tuple[int, str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether any fault can happen without the forcing header (rates or scripts set)."""
        return bool(self.rates or self.rules or self.model_rates)

    def decide(self, model: str, key: str, forced: str | None = None) -> str | None:
        """The fault kind for this request, or None. `forced` is the x-llmsim-fault header."""
        if forced:
            kind = forced.strip().lower()
            if kind == OK:
                return None
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {forced!r}")
            return kind
        for i, rule in enumerate(self.rules):
            if rule.matches(model, key):
                with self._lock:
                    where = (i, key, model)
                    pos = self._positions.pop(where, 0)
                    # Kept within one sequence: a repeating one wraps, a one-shot one stops.
                    n = len(rule.sequence)
                    self._positions[where] = (pos + 1) % n if rule.repeat else min(pos + 1, n)
                    if len(self._positions) > MAX_TRACKED_KEYS:
                        self._positions.popitem(last=False)
                if pos < len(rule.sequence) or rule.repeat:
                    step = rule.sequence[pos % len(rule.sequence)]
                    return None if step == OK else step
        rates = self.model_rates.get(model, self.rates)
        if not rates:
            return None
        with self._lock:
            u = self._rng.random()
        for kind, rate in rates:
            if u < rate:
                return kind
            u -= rate
        return None

    def cut_point(self, tokens: int) -> int:
        """After how many tokens a mid-stream fault strikes (uniform over the reply)."""
        with self._lock:
            return self._rng.randrange(max(tokens, 1))
