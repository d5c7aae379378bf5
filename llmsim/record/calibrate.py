"""`llmsim calibrate`: recordings in, a profile per model out, with each fit's quality."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmsim.record import fits
from llmsim.record.profile_file import Itl, ModelProfile, ProfileFile, Spread, Ttft, dump_profile
from llmsim.record.recording import read_recordings

GENERATING_APIS = frozenset(
    {"chat", "completions", "responses", "anthropic", "azure-chat", "azure-completions", "gemini"}
)
MIN_REQUESTS = 50  # below this a model's fits get a warning
MIN_PROMPT_CV = 0.05  # prompts must vary this much for a prompt-length term to be tried
PREFILL_MIN_T = 4.0  # ... and the slope be this many standard errors above zero
STALL_SPREADS = 5.0  # a gap this many robust spreads above the request's median is a stall ...
STALL_MIN_MS = 20.0  # ... and at least this much above it
NATURAL_FINISH = frozenset({"stop", "end_turn", "STOP", "completed", "stop_sequence"})
# Recorded error kinds → the simulator's fault kinds; other 4xx are the client's own mistakes.
_FAULT_OF = {"429": "429", "500": "500", "502": "502", "503": "503", "529": "529"}
_FAULT_OF.update({"504": "timeout", "drop": "drop", "stream-error": "stream-error"})
_NOT_THE_MODEL = frozenset({"client_disconnect", "upstream_unreachable"})


@dataclass
class ModelFit:
    """One model's profile and what calibrate says about it."""

    model: str
    profile: ModelProfile | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Calibration:
    """Every model's fit, and how many lines were not usable."""

    models: list[ModelFit]
    lines: int
    skipped: int
    ignored: int  # lines of other APIs (models, embeddings…) or without a model

    def profile_file(self) -> ProfileFile:
        """The fitted models as a profile file."""
        return ProfileFile(
            {m.model: m.profile for m in self.models if m.profile is not None},
            {"lines": self.lines, "skipped_lines": self.skipped},
        )

    def report(self) -> str:
        """What calibrate prints: per model its fits and their quality, then the warnings."""
        out = [f"read {self.lines} recording lines ({self.skipped} truncated or foreign, skipped)"]
        if self.ignored:
            out[-1] += f"; {self.ignored} not from a generating API, ignored"
        for m in self.models:
            out.append(f"{m.model}:")
            out += [f"  {n}" for n in m.notes]
            out += [f"  warning: {w}" for w in m.warnings]
        return "\n".join(out)


def _per_token_gaps(line: dict[str, Any]) -> list[tuple[float, int]]:
    toks = line.get("event_tokens") or []
    gaps = line["gaps_ms"]
    # gap i leads to event i+1; an event's tokens came out over that gap.
    return [(g, max(1, toks[i + 1] if i + 1 < len(toks) else 1)) for i, g in enumerate(gaps)]


def _itl(ok: list[dict[str, Any]], m: ModelFit) -> Itl:
    means: list[float] = []
    devs: list[float] = []  # per-token relative deviations of the gaps that are not stalls
    gaps_total = 0
    excess: list[float] = []  # how far each stall went beyond its detection threshold
    thresholds: list[float] = []
    for line in ok:
        pairs = _per_token_gaps(line)
        if not pairs:
            continue
        med = statistics.median(g / k for g, k in pairs)
        # An event of k tokens spans k per-token gaps: its deviation, in per-token terms, is
        # sqrt(k) times larger than its per-token average's. A robust spread (MAD) keeps the
        # stalls themselves from widening the threshold that finds them.
        scaled = [(g / k - med) * math.sqrt(k) for g, k in pairs]
        spread = 1.4826 * statistics.median(abs(d) for d in scaled)
        normal = []
        for g, k in pairs:
            gaps_total += 1
            c = max(STALL_MIN_MS, STALL_SPREADS * spread * math.sqrt(k))
            if g - med * k > c:
                excess.append(g - med * k - c)
                thresholds.append(c)
            else:
                normal.append((g / k, k))
        if not normal:
            continue
        mean = sum(pt for pt, _ in normal) / len(normal)
        means.append(mean)
        if mean > 0:
            devs += [(pt / mean - 1.0) * math.sqrt(k) for pt, k in normal]
    if not means:
        m.warnings.append("no stream with two or more content events: ITL not fitted (0)")
        return Itl(0.0)
    fit = fits.fit_lognormal(means)
    cv = math.sqrt(sum(d * d for d in devs) / len(devs)) if devs else 0.0
    # Stalls are exponential, so memoryless: beyond its threshold a stall still lasts stall_ms
    # on average, and the share found is exp(-threshold / stall_ms) of those that happened.
    stall_ms = sum(excess) / len(excess) if excess else 0.0
    p_stall = 0.0
    if excess and gaps_total:
        seen = sum(math.exp(-c / stall_ms) for c in thresholds) / len(thresholds)
        p_stall = min(1.0, len(excess) / gaps_total / max(seen, 1e-9))
    m.notes.append(
        f"itl: per-request mean lognormal mean {fit.mean:.2f} ms, stddev {fit.stddev:.2f} ms "
        f"(KS {fit.ks:.3f}, n={fit.n}); per-token jitter CV {cv:.3f} over {len(devs)} gaps; "
        f"stalls {p_stall:.4f} of gaps ({len(excess)} seen), {stall_ms:.1f} ms on average"
    )
    return Itl(fit.mean, fit.stddev, cv, p_stall, stall_ms)


def _ttft(ok: list[dict[str, Any]], m: ModelFit) -> Ttft:
    values = [float(x["ttft_ms"]) for x in ok]
    prompts = [x.get("prompt_tokens") for x in ok]
    prefill = 0.0
    if all(isinstance(p, int) for p in prompts) and len(values) >= 30:
        mean_p = sum(prompts) / len(prompts)
        cv = statistics.pstdev(prompts) / mean_p if mean_p > 0 else 0.0
        line = fits.fit_line(prompts, values) if cv > MIN_PROMPT_CV else None
        if line is not None and line.slope > 0 and line.t > PREFILL_MIN_T:
            prefill = line.slope * 1000.0
            values = [v - line.slope * p for v, p in zip(values, prompts, strict=True)]
            m.notes.append(
                f"ttft: grows with the prompt, {prefill:.2f} ms per 1k tokens "
                f"(t = {line.t:.1f}, R² {line.r2:.3f}); fitted below on what is left"
            )
        elif line is not None:
            m.notes.append(f"ttft: no prompt-length term (slope t = {line.t:.1f})")
    fit = fits.fit_lognormal(values)
    if fits.lognormal_fits_badly(fit):
        q = fits.quantiles(values)
        m.notes.append(
            f"ttft: empirical quantiles (a lognormal fits badly: KS {fit.ks:.3f}, n={fit.n}); "
            f"p50 {q[50]:.1f} ms, p90 {q[90]:.1f} ms, p99 {q[99]:.1f} ms"
        )
        return Ttft("empirical", sum(values) / len(values), 0.0, q, prefill)
    m.notes.append(
        f"ttft: lognormal mean {fit.mean:.1f} ms, stddev {fit.stddev:.1f} ms "
        f"(KS {fit.ks:.3f}, n={fit.n})"
    )
    return Ttft("lognormal", fit.mean, fit.stddev, (), prefill)


def _output(done: list[dict[str, Any]], m: ModelFit) -> Spread | None:
    natural = [x["output_tokens"] for x in done if x.get("finish_reason") in NATURAL_FINISH]
    lengths = natural
    if len(natural) < max(10, len(done) // 10):
        lengths = [x["output_tokens"] for x in done]
        if lengths:
            m.warnings.append(
                f"{len(done) - len(natural)} of {len(done)} replies were cut by max_tokens: "
                "the output length is a lower bound of the model's own"
            )
    lengths = [n for n in lengths if isinstance(n, int) and n > 0]
    if not lengths:
        return None
    fit = fits.fit_lognormal(lengths)
    m.notes.append(
        f"output tokens: lognormal mean {fit.mean:.1f}, stddev {fit.stddev:.1f} "
        f"(KS {fit.ks:.3f}, n={fit.n})"
    )
    return Spread(fit.mean, fit.stddev)


def _chunks(ok: list[dict[str, Any]], m: ModelFit) -> Spread:
    sizes = [n for x in ok for n in (x.get("event_tokens") or []) if n > 0]
    if not sizes:
        return Spread(1.0)
    mean = sum(sizes) / len(sizes)
    sd = statistics.pstdev(sizes) if len(sizes) > 1 else 0.0
    if sd == 0:
        m.notes.append(f"tokens per event: {mean:g} always")
        return Spread(round(mean))
    m.notes.append(f"tokens per event: mean {mean:.2f}, stddev {sd:.2f} ({len(sizes)} events)")
    return Spread(mean, sd)


def _errors(lines: list[dict[str, Any]], m: ModelFit) -> dict[str, float]:
    counted = [x for x in lines if x.get("error_kind") not in _NOT_THE_MODEL]
    kinds = Counter(x.get("error_kind") for x in counted if x.get("error_kind"))
    other = {k: v for k, v in kinds.items() if k not in _FAULT_OF and not k.startswith("5")}
    rates: dict[str, float] = {}
    for kind, n in kinds.items():
        fault = _FAULT_OF.get(kind) or ("500" if kind.startswith("5") else None)
        if fault is not None:
            rates[fault] = rates.get(fault, 0.0) + n / len(counted)
    gone = len(lines) - len(counted)
    text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(rates.items())) or "none"
    m.notes.append(f"errors (share of {len(counted)} requests): {text}")
    if other:
        m.notes.append(
            "not served as faults (the client's own mistakes): "
            + ", ".join(f"{k} ×{v}" for k, v in sorted(other.items()))
        )
    if gone:
        m.notes.append(f"{gone} requests left out (client hung up, or upstream unreachable)")
    return rates


def _rate_limits(lines: list[dict[str, Any]]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for x in lines:
        for k, v in (x.get("rate_limit") or {}).items():
            if k.endswith(("limit-requests", "limit-tokens")):
                seen[k] = v
    return seen


def fit_model(model: str, lines: list[dict[str, Any]]) -> ModelFit:
    """Fit one model's profile from its recording lines."""
    m = ModelFit(model, None)
    if len(lines) < MIN_REQUESTS:
        m.warnings.append(f"only {len(lines)} requests (fewer than {MIN_REQUESTS}): fits are rough")
    done = [x for x in lines if x["status"] < 400 and x.get("error_kind") is None]
    ok = [x for x in done if x["stream"] and x.get("ttft_ms") is not None]
    errors = _errors(lines, m)
    if not ok:
        m.warnings.append("no successful streamed reply: timing cannot be fitted, model left out")
        return m
    ttft = _ttft(ok, m)
    itl = _itl(ok, m)
    chunks = _chunks(ok, m)
    output = _output(done, m)
    quality: dict[str, Any] = {"requests": len(lines), "streamed_ok": len(ok)}
    limits = _rate_limits(lines)
    if limits:
        quality["rate_limits_seen"] = limits
        m.notes.append("rate limits announced: " + ", ".join(f"{k}={v}" for k, v in limits.items()))
    m.profile = ModelProfile(ttft, itl, chunks, output, errors, quality)
    return m


def calibrate(paths: Iterable[str | Path]) -> Calibration:
    """Fit a profile per model from recording files."""
    rec = read_recordings(paths)
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ignored = 0
    for line in rec.lines:
        if line.get("api") in GENERATING_APIS and isinstance(line.get("model"), str):
            by_model[line["model"]].append(line)
        else:
            ignored += 1
    models = [fit_model(name, by_model[name]) for name in sorted(by_model)]
    return Calibration(models, len(rec.lines) + rec.skipped, rec.skipped, ignored)


def write_profile(cal: Calibration, out: str | Path) -> int:
    """Write the profile file; returns how many models it holds."""
    pf = cal.profile_file()
    Path(out).write_text(dump_profile(pf), "utf-8")
    return len(pf.models)
