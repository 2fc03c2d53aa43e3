"""Rates with counts and intervals, and the resampling statistics every finding reports.

* :class:`Rate`: k of n with a Wilson 95% score interval,
  centre = (p + z^2/2n) / (1 + z^2/n), half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
* :func:`bootstrap_mean`: the mean and its percentile bootstrap interval (seeded resampling of the values).
* :func:`sign_flip_p`: the paired two-sided sign-flip (permutation) p-value of mean(d) = 0.
* :func:`paired_difference`: mean(a - b) over paired units with both of the above.
* :func:`newcombe`: a - b of two unpaired rates with Newcombe's hybrid score interval.
* :func:`rate_columns`: the one way a rate becomes table columns (``name, name_k, name_n, name_low, name_high``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Rate:
    """k successes out of n eligible, with a Wilson 95% interval; ``rate`` is NaN when n == 0."""

    k: int
    n: int
    rate: float
    low: float
    high: float

    @property
    def defined(self) -> bool:
        return self.n > 0

    def __str__(self) -> str:
        if not self.defined:
            return "not defined (no eligible probes)"
        return f"{self.rate:.2f} ({self.k}/{self.n}, 95% CI {self.low:.2f}-{self.high:.2f})"

    def to_dict(self) -> dict:
        return asdict(self)


def wilson(k: int, n: int, z: float = 1.96) -> Rate:
    """Wilson score interval for k/n (NaN rate and interval when n == 0)."""
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"invalid counts k={k}, n={n}")
    if n == 0:
        return Rate(0, 0, math.nan, math.nan, math.nan)
    return Rate(k, n, k / n, *wilson_bounds(k / n, n, z))


def wilson_bounds(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a proportion p of n: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: Sequence[float], n_boot: int = 10_000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile bootstrap interval (resampling the values, seeded); NaNs if empty."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    means = v[np.random.default_rng(seed).integers(0, v.size, (n_boot, v.size))].mean(1)
    q = (1 - level) / 2
    scale = float(np.abs(v).max())
    return (_exact_zero(float(v.mean()), scale), _exact_zero(float(np.quantile(means, q)), scale),
            _exact_zero(float(np.quantile(means, 1 - q)), scale))


def _exact_zero(x: float, scale: float) -> float:
    """0 for a value within rounding (1e-12 of the values' scale) of 0: a mean of thirds such as
    (1 - 1/3 - 1/3 - 1/3) / 4 sums to 1.4e-17, and an interval end there must not read as above 0."""
    return 0.0 if abs(x) <= 1e-12 * max(scale, 1.0) else x


def draw_mean_rate(shares: Sequence[float], seed: int = 0) -> dict[str, float]:
    """A control rate averaged over random draws: ``shares[i]`` = the share of draws that recovered probe i.

    rate = sum(shares) / n, with k = sum(shares) (a mean count). Interval: the hull of the percentile bootstrap
    over probes and the Wilson interval at k/n. An averaged draw has at most a Bernoulli's variance, so Wilson is
    conservative; the hull keeps the interval from collapsing to a point at 0/n or n/n, where every bootstrap
    resample is the same (the bootstrap alone reads 0.00-0.00 for 0/11, Wilson 0.00-0.26).
    """
    n = len(shares)
    m, lo, hi = bootstrap_mean(shares, seed=seed)
    if n == 0:
        return {"k": 0.0, "n": 0, "rate": m, "low": lo, "high": hi}
    k = float(sum(shares))
    w_lo, w_hi = wilson_bounds(k / n, n)  # Wilson's formula holds for a real k in [0, n]
    return {"k": k, "n": n, "rate": m, "low": min(lo, w_lo), "high": max(hi, w_hi)}


def sign_flip_p(diffs: Sequence[float], n_mc: int = 20_000, seed: int = 0) -> float:
    """Two-sided paired sign-flip (permutation) test of mean(diffs) = 0: the share of sign assignments whose
    |mean| is at least the observed one. Exact (all 2^m flips of the m nonzero differences) for m <= 16,
    else Monte Carlo with ``n_mc`` draws. 1.0 when every difference is 0."""
    d = np.asarray([x for x in diffs if x != 0], dtype=float)
    if d.size == 0:
        return 1.0
    obs = abs(d.sum()) - 1e-12
    if d.size <= 16:
        signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], (n_mc, d.size))
    return float((np.abs(signs @ d) >= obs).mean())


def check_lengths(*cols: Sequence[Any]) -> None:
    """Refuse per-probe lists of different lengths (they would be paired wrongly)."""
    if len({len(c) for c in cols}) > 1:
        raise ValueError(f"correctness lists differ in length: {[len(c) for c in cols]}")


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, float]:
    """mean(a - b) over paired units with a 95% paired bootstrap interval and the sign-flip p-value."""
    check_lengths(a, b)
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean, low, high = bootstrap_mean(d, seed=seed)
    return {"n": len(d), "diff": mean, "diff_low": low, "diff_high": high, "p": sign_flip_p(d, seed=seed)}


def newcombe(a: Rate, b: Rate) -> tuple[float, float, float]:
    """a - b with Newcombe's hybrid score interval from the two Wilson intervals (unpaired proportions)."""
    d = a.rate - b.rate
    lo = d - math.sqrt((a.rate - a.low) ** 2 + (b.high - b.rate) ** 2)
    hi = d + math.sqrt((a.high - a.rate) ** 2 + (b.rate - b.low) ** 2)
    return d, lo, hi


def rate_columns(name: str, rate: Rate | Mapping[str, Any] | pd.Series | None) -> dict[str, Any]:
    """A rate as numeric columns: ``name`` (the rate), ``name_k``, ``name_n``, ``name_low``, ``name_high``.

    ``rate`` is a :class:`Rate`, or any mapping (a dict, a table row) with ``rate, k, n, low, high``; ``n`` is an
    integer, ``k`` too unless it is a mean over draws (then it keeps its fraction). None: a rate that does not
    apply, as one NaN column ``name``."""
    if rate is None:
        return {name: math.nan}
    d = rate.to_dict() if isinstance(rate, Rate) else rate

    def num(k: str) -> float | int:
        v = float(d[k])
        return int(v) if k == "n" or (k == "k" and v.is_integer()) else v

    return {name: float(d["rate"]), **{f"{name}_{k}": num(k) for k in ("k", "n", "low", "high")}}
