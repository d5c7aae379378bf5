"""Small statistical fits for calibration: lognormal by log-moments, KS distance, quantiles,
a least-squares line with its t statistic."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LognormalFit:
    """A lognormal fitted to data, in the simulator's terms (mean, stddev), and its KS distance."""

    mean: float
    stddev: float
    mu: float
    sigma: float
    ks: float
    n: int

    def cdf(self, x: float) -> float:
        """The fitted CDF at x."""
        if x <= 0:
            return 0.0
        if self.sigma <= 0:
            return 1.0 if x >= self.mean else 0.0
        return 0.5 * (1.0 + math.erf((math.log(x) - self.mu) / (self.sigma * math.sqrt(2.0))))


def ks_distance(values: Sequence[float], cdf: Callable[[float], float]) -> float:
    """Kolmogorov–Smirnov distance between the data's empirical CDF and `cdf`."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return 0.0
    f = np.array([cdf(v) for v in x])
    upper = np.arange(1, n + 1) / n - f
    lower = f - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def fit_lognormal(values: Sequence[float]) -> LognormalFit:
    """Fit by the moments of log(x) (the maximum-likelihood fit); values <= 0 are clipped."""
    x = np.maximum(np.asarray(values, dtype=float), 1e-6)
    logs = np.log(x)
    mu = float(logs.mean())
    sigma = float(logs.std(ddof=1)) if len(x) > 1 else 0.0
    mean = math.exp(mu + sigma * sigma / 2)
    stddev = mean * math.sqrt(math.expm1(sigma * sigma))
    fit = LognormalFit(mean, stddev, mu, sigma, 0.0, len(x))
    return LognormalFit(mean, stddev, mu, sigma, ks_distance(x, fit.cdf), len(x))


def quantiles(values: Sequence[float], points: int = 101) -> tuple[float, ...]:
    """Values at `points` evenly spaced probabilities from 0 to 1."""
    return tuple(
        float(q) for q in np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, points))
    )


def lognormal_fits_badly(fit: LognormalFit) -> bool:
    """Whether the data reject the lognormal: above the KS critical value at 5 % and above an
    absolute 0.05 (with thousands of requests any small misfit is significant, but a KS under
    0.05 keeps every percentile within a few per cent)."""
    return fit.ks > max(0.05, 1.36 / math.sqrt(max(fit.n, 1)))


@dataclass(frozen=True)
class Line:
    """y = intercept + slope × x, by least squares."""

    intercept: float
    slope: float
    t: float  # slope / its standard error
    r2: float


def fit_line(x: Sequence[float], y: Sequence[float]) -> Line | None:
    """Least-squares line, or None when x does not vary."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xa)
    if n < 3 or float(xa.std()) == 0.0:
        return None
    slope, intercept = np.polyfit(xa, ya, 1)
    resid = ya - (intercept + slope * xa)
    sxx = float(((xa - xa.mean()) ** 2).sum())
    s2 = float((resid**2).sum()) / (n - 2)
    se = math.sqrt(s2 / sxx) if sxx > 0 and s2 > 0 else 0.0
    syy = float(((ya - ya.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / syy if syy > 0 else 0.0
    t = slope / se if se > 0 else math.inf
    return Line(float(intercept), float(slope), float(t), r2)
