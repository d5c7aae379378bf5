"""API-mode timing: when each token of a reply is due, and how many tokens each event carries.

Per request (`plan`): a TTFT (the profile's heavy-tailed distribution, plus prefill time per
prompt token) and a mean time between tokens (TBT). Per token (`TokenClock`): each gap is drawn
lognormally around the request's TBT with coefficient of variation `itl_jitter_cv` (mean kept),
and with probability `stall_probability` a gap is longer by an exponential stall of mean
`stall_ms`, as hosted APIs' streams show. Per event (`ChunkSpec`): how many tokens one SSE content
event carries (`chunk_tokens`: an integer, or `normal:mean=4,stddev=1`, `uniform:min=2,max=6`).

Everything a profile describes lives in one `TimingConfig` per model, whose field names are the
settings' (and a profile file's) keys: a loaded profile (`--profile-file`) supplies one directly.
With both stddevs 0 and `itl_jitter_cv` 0 (and no stalls) every gap is exactly `tbt_ms`.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, fields

# Keys of TimingConfig, in the order a profile file lists them.
TIMING_KEYS = (
    "ttft_ms",
    "ttft_stddev_ms",
    "tbt_ms",
    "tbt_stddev_ms",
    "latency_distribution",
    "itl_jitter_cv",
    "stall_probability",
    "stall_ms",
    "chunk_tokens",
    "prefill_ms_per_1k",
    "output_tokens",
    "output_tokens_stddev",
)

_SPEC = re.compile(r"^\s*(normal|uniform|constant)\s*:\s*(.*)$")


@dataclass(frozen=True)
class ChunkSpec:
    """Tokens per content event: a constant, or a normal/uniform distribution (rounded, >= 1)."""

    kind: str = "constant"  # constant, normal or uniform
    a: float = 1.0  # constant value, normal mean, uniform min
    b: float = 0.0  # normal stddev, uniform max

    @classmethod
    def parse(cls, text: str | int | ChunkSpec) -> ChunkSpec:
        """`4`, `normal:mean=4,stddev=1`, `uniform:min=2,max=6`; ValueError naming the problem."""
        if isinstance(text, ChunkSpec):
            return text
        if isinstance(text, bool):
            raise ValueError(f"expected a token count or a distribution, got {text!r}")
        if isinstance(text, (int, float)):
            text = str(text)
        s = str(text).strip()
        if re.fullmatch(r"\d+", s):
            n = int(s)
            if n < 1:
                raise ValueError(f"tokens per event must be at least 1, got {n}")
            return cls("constant", float(n))
        m = _SPEC.match(s)
        if not m:
            raise ValueError(
                f"expected N, normal:mean=M,stddev=S or uniform:min=A,max=B, got {text!r}"
            )
        kind, rest = m.group(1), m.group(2)
        params: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = part.partition("=")
            try:
                params[key.strip()] = float(value)
            except ValueError:
                raise ValueError(f"{kind}: {part!r} is not name=number") from None
            if not sep:
                raise ValueError(f"{kind}: {part!r} is not name=number")
        want = {"constant": ("value",), "normal": ("mean", "stddev"), "uniform": ("min", "max")}
        if set(params) != set(want[kind]):
            raise ValueError(f"{kind} takes {', '.join(want[kind])}, got {', '.join(params)}")
        vals = [params[k] for k in want[kind]]
        if any(not math.isfinite(v) for v in vals) or vals[0] < 1 or min(vals) < 0:
            raise ValueError(f"{text!r}: values must be finite and the mean/min at least 1")
        if kind == "uniform" and vals[1] < vals[0]:
            raise ValueError(f"{text!r}: max is below min")
        return cls(kind, vals[0], vals[1] if len(vals) > 1 else 0.0)

    @property
    def exact(self) -> int | None:
        """The constant token count, or None for a distribution."""
        if self.kind == "constant" or (self.b == 0 and self.kind == "normal"):
            return max(1, round(self.a))
        if self.kind == "uniform" and self.a == self.b:
            return max(1, round(self.a))
        return None

    def draw(self, rng: random.Random) -> int:
        """Tokens in the next event (at least 1)."""
        n = self.exact
        if n is not None:
            return n
        if self.kind == "normal":
            return max(1, round(rng.gauss(self.a, self.b)))
        return max(1, round(rng.uniform(self.a, self.b)))

    def __str__(self) -> str:
        if self.kind == "constant":
            return str(round(self.a))
        names = ("mean", "stddev") if self.kind == "normal" else ("min", "max")
        return f"{self.kind}:{names[0]}={self.a:g},{names[1]}={self.b:g}"


@dataclass(frozen=True)
class TimingConfig:
    """What one model's timing is made of; field names are the settings' keys (TIMING_KEYS)."""

    ttft_ms: float
    ttft_stddev_ms: float
    tbt_ms: float
    tbt_stddev_ms: float
    latency_distribution: str = "lognormal"
    itl_jitter_cv: float = 0.0
    stall_probability: float = 0.0
    stall_ms: float = 0.0
    chunk_tokens: ChunkSpec = ChunkSpec()
    prefill_ms_per_1k: float = 0.0
    output_tokens: int = 256
    output_tokens_stddev: float | None = None
    # A recorded TTFT distribution (llmsim.record): values at evenly spaced probabilities from
    # 0 to 1, drawn by inverse CDF instead of the lognormal when given.
    ttft_quantiles_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The profile-file spelling of this config (chunk_tokens as its text)."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["chunk_tokens"] = str(self.chunk_tokens)
        return out


def sample_ms(rng: random.Random, mean: float, stddev: float, distribution: str) -> float:
    """A non-negative duration with the given mean and standard deviation.

    lognormal is the default because real latencies are right-skewed: a long tail of slow
    requests, never a negative one.
    """
    if stddev <= 0 or mean <= 0 or distribution == "constant":
        return max(0.0, mean)
    if distribution == "normal":
        return max(0.0, rng.gauss(mean, stddev))
    # The ratio is capped so that a tiny mean beside a large stddev cannot overflow the square
    # (a coefficient of variation of 1e6 is already a distribution of nearly all zeros).
    cv = min(stddev / mean, 1e6)
    sigma2 = math.log1p(cv * cv)
    mu = math.log(mean) - sigma2 / 2
    return rng.lognormvariate(mu, math.sqrt(sigma2))


@dataclass(frozen=True)
class RequestTiming:
    """One request's plan: first token offset and mean gap (seconds from its arrival)."""

    ttft_s: float  # sampled TTFT, before prefill and queueing
    prefill_s: float
    tbt_s: float  # this request's mean gap


def plan(cfg: TimingConfig, rng: random.Random, prompt_tokens: int) -> RequestTiming:
    """Sample one request's TTFT and mean TBT."""
    q = cfg.ttft_quantiles_ms
    if q:
        x = rng.random() * (len(q) - 1)
        i = min(int(x), len(q) - 2)
        ttft = q[i] + (q[i + 1] - q[i]) * (x - i)
    else:
        ttft = sample_ms(rng, cfg.ttft_ms, cfg.ttft_stddev_ms, cfg.latency_distribution)
    tbt = sample_ms(rng, cfg.tbt_ms, cfg.tbt_stddev_ms, cfg.latency_distribution)
    prefill = cfg.prefill_ms_per_1k * prompt_tokens / 1000.0
    return RequestTiming(ttft / 1000.0, prefill / 1000.0, tbt / 1000.0)


class TokenClock:
    """Per-token gaps around a request's mean: lognormal jitter and exponential stalls.

    `gap()` returns the next gap in seconds. Exact (one multiplication) when jitter and stalls
    are off, so `fast`, `instant` and stddev-0 runs keep every gap at the configured value.
    """

    __slots__ = ("_mu", "_rng", "_sigma", "_stall_mean", "_stall_p", "tbt_s")

    def __init__(self, cfg: TimingConfig, tbt_s: float, rng: random.Random) -> None:
        self.tbt_s = tbt_s
        self._rng = rng
        cv = cfg.itl_jitter_cv if tbt_s > 0 else 0.0
        if cv > 0:
            sigma2 = math.log1p(cv * cv)
            self._sigma = math.sqrt(sigma2)
            self._mu = math.log(tbt_s) - sigma2 / 2  # keeps the mean gap at tbt_s
        else:
            self._sigma = 0.0
            self._mu = 0.0
        self._stall_p = cfg.stall_probability if cfg.stall_ms > 0 else 0.0
        self._stall_mean = cfg.stall_ms / 1000.0

    @property
    def exact(self) -> bool:
        """Every gap is the request's mean (no jitter, no stalls)."""
        return self._sigma == 0.0 and self._stall_p == 0.0

    def gap(self) -> float:
        """The next gap, in seconds."""
        rng = self._rng
        g = rng.lognormvariate(self._mu, self._sigma) if self._sigma else self.tbt_s
        if self._stall_p and rng.random() < self._stall_p:
            g += rng.expovariate(1.0 / self._stall_mean)
        return g


class Chunking:
    """Which tokens each content event carries: step i covers tokens [end(i-1), end(i)).

    Sizes are drawn from a seeded generator as the steps are asked for, in order, so nothing
    grows with the reply; asking for an earlier step replays the draws from the start.
    `total` is the longest choice's token count: the last step ends there.
    """

    __slots__ = ("_end", "_k", "_rng", "_seed", "_spec", "_step", "total")

    def __init__(self, spec: ChunkSpec, total: int, seed: int = 0) -> None:
        self.total = total
        self._spec = spec
        self._k = spec.exact
        self._seed = seed
        self._rng: random.Random | None = None
        self._step = -1
        self._end = 0

    @property
    def one_per_step(self) -> bool:
        """Every step carries exactly one token (OpenAI's streams)."""
        return self._k == 1

    def end(self, step: int) -> int:
        """Tokens that exist once step `step` is out (capped at the reply's length)."""
        k = self._k
        if k is not None:
            return min(self.total, (step + 1) * k)
        if step < self._step or self._rng is None:
            self._rng = random.Random(self._seed)
            self._step, self._end = -1, 0
        while self._step < step and self._end < self.total:
            self._end += self._spec.draw(self._rng)
            self._step += 1
        return min(self.total, self._end)

    def start(self, step: int) -> int:
        """Tokens that exist before step `step` is out."""
        return 0 if step <= 0 else self.end(step - 1)

    def steps_for(self, tokens: int) -> int:
        """How many steps carry a choice of `tokens` tokens (at least 1: an empty reply still
        has its opening and closing events)."""
        if tokens <= 0:
            return 1
        k = self._k
        if k is not None:
            return -(-tokens // k)
        step = 0
        while self.end(step) < tokens:
            step += 1
        return step + 1


class TokenSchedule:
    """When each token is due, as an offset from the request's arrival (seconds).

    Token 0 at `first_s`; token i one gap after token i-1, each gap drawn by the TokenClock when
    it is first asked for and scaled by the capacity pool's load factor at that moment.
    Exact and without a load factor, any token's time is computed directly.
    """

    __slots__ = ("_clock", "_i", "_pool", "_t", "_tbt", "first_s")

    def __init__(self, first_s: float, clock: TokenClock, pool: object | None = None) -> None:
        self.first_s = first_s
        self._clock = clock
        self._pool = pool if pool is not None and getattr(pool, "load_factor", 0) > 0 else None
        self._i = 0
        self._t = first_s
        # Exact and unloaded: any token's time directly (None: each gap drawn as it comes).
        # Not a bound method stored on self: that would be a reference cycle per request.
        self._tbt = clock.tbt_s if self._pool is None and clock.exact else None

    def due(self, i: int) -> float:
        """Token i's offset, drawing the gaps up to it (in non-decreasing i)."""
        tbt = self._tbt
        if tbt is not None:
            return self.first_s + i * tbt
        clock = self._clock
        # Asked in non-decreasing order (the loop may ask for the same token twice).
        while self._i < i:
            g = clock.gap()
            if self._pool is not None:
                g *= self._pool.tbt_factor()  # type: ignore[attr-defined]
            self._t += g
            self._i += 1
        return self._t
