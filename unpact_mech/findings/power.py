"""What a null could have detected: the power of the study's tests, by simulation with known effects.

**Finding 2 (KeyToken-specific recovery).** Per eligible probe i the study compares K_i (1 if emphasising the
KeyTokens recovers it) with R_i (the share of ``n_draws`` random-token draws that recover it), and calls the route
KeyToken-specific when the 95% percentile bootstrap interval of mean(K - R) lies above 0
(:func:`unpact_mech.core.stats.paired_difference`). Here K_i ~ Bernoulli(p_random + effect) and each draw of R_i ~
Bernoulli(p_random), independently; the *power* at (n, effect) is the share of seeded replicates in which that
same interval excludes 0, and the *minimum detectable effect* (MDE) the smallest effect with power >= 0.8.

**Finding 3 (destruction).** A destructive rate is claimed when its Wilson interval excludes 0, which happens as
soon as k >= 1 (Wilson's lower bound is positive for every k > 0). With k ~ Binomial(n, p): power = 1 - (1-p)^n,
and the MDE at power P is 1 - (1-P)^(1/n) (exact, no simulation).

The simulation draws its bootstrap resamples as :func:`~unpact_mech.core.stats.bootstrap_mean` does (the same
generator and shapes), shared across replicates, so one replicate's decision is the study's decision on the same
outcomes (tested). ``n_boot`` defaults to 2,000 here for speed; the decision differs from 10,000 resamples only
where the interval's end is within Monte Carlo error of 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from unpact_mech.core.errors import check_float, check_int
from unpact_mech.core.stats import wilson_bounds

TARGET_POWER = 0.8
REPS = 400  # simulated studies per point, everywhere the report states a power (Wilson half-width <= 0.05)


def bootstrap_lower(diffs: np.ndarray, n_boot: int = 2_000, seed: int = 0, level: float = 0.95) -> np.ndarray:
    """Per row of ``diffs`` [replicates, n]: the lower end of the percentile bootstrap interval of its mean, with
    the resample indices :func:`~unpact_mech.core.stats.bootstrap_mean` would draw for ``seed`` (shared by the rows).
    Resample b's mean is ``diffs @ counts[b] / n``, ``counts[b, j]`` = how often resample b draws j: one matrix
    product instead of gathering [replicates, n_boot, n] values (the same means, exactly, for differences on a
    lattice of 1/n_draws; within float rounding otherwise)."""
    d = np.asarray(diffs, dtype=float)
    n = d.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    counts = np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    step = max(1, 4_000_000 // n_boot)  # rows per chunk: at most 4M resample means at once
    q = (1 - level) / 2
    out = [np.quantile(d[i : i + step] @ counts.T / n, q, axis=1) for i in range(0, len(d), step)]
    return np.concatenate(out) if out else np.zeros(0)


def simulate_diffs(n: int, effect: float, p_random: float, n_draws: int, reps: int, seed: int) -> np.ndarray:
    """[reps, n] paired differences K - R under the model in the module docstring."""
    rng = np.random.default_rng(seed)
    k = rng.random((reps, n)) < p_random + effect
    r = (rng.random((reps, n, n_draws)) < p_random).mean(-1)
    return k.astype(float) - r


def specific_power(n: int, effect: float, p_random: float = 0.05, n_draws: int = 2, reps: int = REPS,
                   seed: int = 0, n_boot: int = 2_000) -> float:
    """Share of ``reps`` simulated studies of ``n`` eligible probes whose KeyTokens-minus-random interval lies
    above 0, when emphasis recovers ``effect`` more often than the random control's rate ``p_random``."""
    check_int(n, "n", 1)
    check_int(n_draws, "n_draws", 1)
    check_int(reps, "reps", 1)
    check_float(p_random, "p_random", 0.0, 1.0, lo_open=False)
    if not 0 <= p_random + effect <= 1:
        raise ValueError(f"p_random + effect must lie in [0, 1], got {p_random} + {effect}")
    # scaled by n_draws the differences are integers, so every resample's sum is exact and a bound that is 0 is
    # exactly 0 (not above it by a rounding)
    diffs = simulate_diffs(n, effect, p_random, n_draws, reps, seed) * n_draws
    return float((bootstrap_lower(diffs, n_boot, seed) > 0).mean())


@functools.lru_cache(maxsize=256)  # a pure function of its numbers: the report asks for the same n twice
def specific_mde(n: int, p_random: float = 0.05, n_draws: int = 2, power: float = TARGET_POWER, reps: int = REPS,
                 seed: int = 0, step: float = 0.01) -> float:
    """The smallest effect (on a grid of ``step``) whose simulated power reaches ``power``, by bisection (power
    grows with the effect); NaN when even p_random + effect = 1 falls short."""
    grid = np.round(np.arange(step, 1 - p_random + 1e-9, step), 10)
    if not len(grid) or specific_power(n, float(grid[-1]), p_random, n_draws, reps, seed) < power:
        return math.nan
    lo, hi = -1, len(grid) - 1  # power(grid[hi]) >= power; grid[lo] below it (or none)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if specific_power(n, float(grid[mid]), p_random, n_draws, reps, seed) >= power:
            hi = mid
        else:
            lo = mid
    return float(grid[hi])


def destruction_power(n: int, rate: float) -> float:
    """P(Wilson interval of k/n excludes 0) = P(k >= 1) = 1 - (1 - rate)^n."""
    return 1 - (1 - rate) ** n


def destruction_mde(n: int, power: float = TARGET_POWER) -> float:
    """The smallest destructive rate detected with ``power``: 1 - (1 - power)^(1/n)."""
    return 1 - (1 - power) ** (1 / n) if n > 0 else math.nan


def power_curve(ns: Sequence[int], effects: Sequence[float], p_random: float = 0.05, n_draws: int = 2,
                reps: int = REPS, seed: int = 0) -> pd.DataFrame:
    """One row per (n, effect): simulated power with its Wilson 95% interval over the ``reps`` replicates."""
    rows = []
    for n in ns:
        for e in effects:
            pw = specific_power(int(n), float(e), p_random, n_draws, reps, seed)
            lo, hi = wilson_bounds(pw, reps)
            rows.append({"n": int(n), "effect": float(e), "power": pw, "power_low": lo, "power_high": hi,
                         "reps": reps, "p_random": p_random, "n_draws": n_draws})
    return pd.DataFrame(rows)


__all__ = ["REPS", "TARGET_POWER", "bootstrap_lower", "destruction_mde", "destruction_power", "power_curve",
           "simulate_diffs", "specific_mde", "specific_power"]
