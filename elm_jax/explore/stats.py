"""Statistics for comparing runs: group summaries, paired differences with bootstrap intervals,
and power-law fits L(C) = A C^-alpha (+ E) with bootstrap intervals. NumPy only.

Bootstrap intervals are percentile intervals over resampled seeds (or budgets). With three seeds a
resample can take only ten distinct values, so such an interval is coarse: read it as "the seeds
agree / disagree on the sign", not as a calibrated 95 % interval.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from elm_jax.errors import ConfigError

BOOTSTRAP_SAMPLES = 10_000
FIT_BOOTSTRAP_SAMPLES = 1_000
FLOOR_GRID = 128
REFINEMENTS = 4  # each narrows the floor's bracket 64-fold


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof 1); 0 for a single value


def summarize(values: Sequence[float]) -> Summary:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ConfigError("no values to summarise")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return Summary(int(values.size), float(values.mean()), std)


@dataclasses.dataclass(frozen=True)
class Difference:
    """``treatment - reference`` averaged over the pairs both have, with a bootstrap interval."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float


def bootstrap_interval(values: Sequence[float], *, confidence: float = 0.95,
                       samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over ``samples`` resamples with replacement."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_difference(reference: Mapping[object, float], treatment: Mapping[object, float], *,
                      confidence: float = 0.95, samples: int = BOOTSTRAP_SAMPLES,
                      seed: int = 0) -> Difference:
    """Mean of ``treatment[k] - reference[k]`` over the keys (e.g. seeds) both hold."""
    keys = [k for k in reference if k in treatment]
    if not keys:
        raise ConfigError("no common pairing key (e.g. seed) between the two groups")
    diffs = np.array([treatment[k] - reference[k] for k in keys], np.float64)
    low, high = bootstrap_interval(diffs, confidence=confidence, samples=samples, seed=seed)
    return Difference(len(keys), float(diffs.mean()), low, high, confidence)


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """``L(C) = A * C**-alpha + E`` (``E`` = 0 for a pure power law), with bootstrap intervals."""

    A: float
    alpha: float
    E: float
    intervals: dict[str, tuple[float, float]]
    n: int

    def predict(self, compute: np.ndarray | float) -> np.ndarray:
        return self.A * np.asarray(compute, np.float64) ** -self.alpha + self.E


def _log_linear(logc: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares ``log y = log A - alpha log C``: returns (A, alpha)."""
    logy = np.log(y)
    dx = logc - logc.mean()
    slope = float((dx * (logy - logy.mean())).sum() / (dx * dx).sum())
    return math.exp(float(logy.mean()) - slope * float(logc.mean())), -slope


def _saturating_sse(logc: np.ndarray, loss: np.ndarray, floors: np.ndarray) -> np.ndarray:
    """Squared error in loss of the best power law above each candidate floor (vectorised)."""
    logy = np.log(loss[None, :] - floors[:, None])
    dx = logc - logc.mean()
    slope = (dx * (logy - logy.mean(axis=1, keepdims=True))).sum(axis=1) / (dx * dx).sum()
    log_a = logy.mean(axis=1) - slope * logc.mean()
    fitted = np.exp(log_a[:, None] + slope[:, None] * logc[None, :]) + floors[:, None]
    return ((fitted - loss[None, :]) ** 2).sum(axis=1)


def _fit_once(compute: np.ndarray, loss: np.ndarray, saturating: bool) -> tuple[float, float, float]:
    logc = np.log(compute)
    if not saturating:
        return (*_log_linear(logc, loss), 0.0)
    lo, hi = 0.0, float(loss.min()) * (1 - 1e-9)  # the floor E lies below every observed loss
    for _ in range(REFINEMENTS):  # grid search, then a finer grid around the best point
        floors = np.linspace(lo, hi, FLOOR_GRID)
        best = int(np.argmin(_saturating_sse(logc, loss, floors)))
        lo, hi = floors[max(best - 1, 0)], floors[min(best + 1, FLOOR_GRID - 1)]
    e = float(floors[best])
    return (*_log_linear(logc, loss - e), e)


def fit_power_law(compute: Sequence[float], loss: Sequence[float], *, saturating: bool = False,
                  confidence: float = 0.95, samples: int = FIT_BOOTSTRAP_SAMPLES,
                  seed: int = 0) -> PowerLaw:
    """Fit ``L = A C^-alpha`` (log-log least squares) or, with ``saturating``, ``L = A C^-alpha + E``
    (``E`` profiled out: for each floor the rest is log-linear); intervals from resampling points."""
    compute, loss = np.asarray(compute, np.float64), np.asarray(loss, np.float64)
    need = 3 if saturating else 2
    if compute.shape != loss.shape or np.unique(compute).size < need or (compute <= 0).any() \
            or (loss <= 0).any():
        raise ConfigError(f"a power-law fit needs at least {need} distinct positive budgets with a "
                          f"positive loss each; got {compute.size} point(s)")
    A, alpha, E = _fit_once(compute, loss, saturating)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        pick = rng.integers(0, compute.size, compute.size)
        if np.unique(compute[pick]).size >= need:
            draws.append(_fit_once(compute[pick], loss[pick], saturating))
    draws = np.array(draws)
    tail = (1 - confidence) / 2
    intervals = {name: (float(np.quantile(draws[:, i], tail)), float(np.quantile(draws[:, i], 1 - tail)))
                 for i, name in enumerate(("A", "alpha", "E"))}
    return PowerLaw(A, alpha, E, intervals, int(compute.size))
