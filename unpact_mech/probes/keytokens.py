"""KeyToken selection, paper eq.3-4.

Let P = {i : C_i > 0}. If |P| < beta, every positive token is a KeyToken (eq.3). Otherwise each positive
contribution is normalised by the positive mass, c_i = C_i / sum_{j in P} C_j, and the KeyTokens are those
with c_i > alpha (eq.4). The paper does not publish its constants; ours:

* ``alpha = 0.1``: a KeyToken carries more than a tenth of the positive contribution mass;
* ``beta = 5``: with fewer than five positive tokens all of them are kept (short questions);
* ``max_keytokens = None`` (the paper's N, read as an optional cap keeping the N largest);
* ``min_keytokens = 1``: if eq.4 keeps nothing (many small positives), keep the largest one, so every
  probe with a positive contribution has a focus to measure. Set 0 for the strict reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unpact_mech.core.errors import UnpactError

ALPHA = 0.1
BETA = 5


@dataclass(frozen=True)
class KeyTokenParams:
    """Constants of eq.3-4 (see module docstring for the defaults' reasons)."""

    alpha: float = ALPHA
    beta: int = BETA
    max_keytokens: int | None = None
    min_keytokens: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise UnpactError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.beta < 1:
            raise UnpactError(f"beta must be >= 1, got {self.beta}")
        if self.max_keytokens is not None and self.max_keytokens < 1:
            raise UnpactError(f"max_keytokens must be >= 1 or None, got {self.max_keytokens}")


def select_keytokens(
    scores: Float[Tensor, " n"] | Float[np.ndarray, " n"] | Sequence[float], params: KeyTokenParams | None = None
) -> list[int]:
    """Indices (into ``scores``) of the KeyTokens, largest contribution first."""
    p = params or KeyTokenParams()
    # a copy: a column read from parquet (or under pandas' copy-on-write) is a read-only array
    c = scores.to(torch.float64) if isinstance(scores, Tensor) else torch.tensor(np.asarray(scores, np.float64))
    pos = [int(i) for i in torch.nonzero(c > 0).flatten()]
    pos.sort(key=lambda i: -float(c[i]))
    if len(pos) < p.beta:
        keys = pos
    else:
        mass = float(c[pos].sum())
        keys = [i for i in pos if float(c[i]) / mass > p.alpha]
        if len(keys) < p.min_keytokens:
            keys = pos[: p.min_keytokens]
    if p.max_keytokens is not None:
        keys = keys[: p.max_keytokens]
    return keys


def focus_share(scores: Float[Tensor, " n"] | Sequence[float], keys: Sequence[int]) -> float:
    """Share of positive contribution mass that falls on ``keys`` (NaN when nothing is positive)."""
    c = torch.as_tensor(scores, dtype=torch.float64).clamp(min=0)
    total = float(c.sum())
    if total <= 0:
        return float("nan")
    return float(c[list(keys)].sum()) / total if keys else 0.0


def keytoken_table(results: Sequence[Any], params: KeyTokenParams | None = None) -> pd.DataFrame:
    """One row per probe (leave-one-out results): prompt, LP and its KeyTokens with their contributions."""
    rows = []
    for r in results:
        keys = select_keytokens(r.contributions, params)
        rows.append({"probe_id": r.tprobe.probe.id, "prompt": r.tprobe.probe.prompt, "lp": round(r.lp, 3),
                     "keytokens": ", ".join(f"{r.tprobe.tokens[r.positions[i]].strip()!s}({float(r.contributions[i]):+.2f})"
                                            for i in keys)})
    return pd.DataFrame(rows)
