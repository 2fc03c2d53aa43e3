"""Leave-one-out contributions, paper eq.1-2: C(x_i, y) = LP(x, y) - LP(x without x_i, y).

All n variants of a probe (and of many probes) go through :func:`score_sequences` as right-padded chunks, so
the cost is about one batched forward of the variants. ``variant="delete"`` removes the token (the paper);
``variant="replace"`` substitutes a baseline token (what captum's FeatureAblation does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unpact_mech.attribution import register
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import DEFAULT_BATCH_TOKENS, score_sequences
from unpact_mech.tables import make_table

Variant = Literal["delete", "replace"]


@dataclass(frozen=True)
class LooResult:
    """Per probe: LP of the full prompt and the contribution of each attributable position."""

    tprobe: TokenizedProbe
    lp: float
    contributions: Float[Tensor, " n_attributable"]

    @property
    def positions(self) -> tuple[int, ...]:
        return self.tprobe.attributable


def baseline_token_id(tokenizer: Any, baseline: int | str | None = None) -> int:
    """Replacement token for ``variant='replace'``: given id/string, else unk, pad or eos."""
    if isinstance(baseline, int):
        return baseline
    if isinstance(baseline, str):
        ids = tokenizer(baseline, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"baseline token {baseline!r} is {len(ids)} tokens; give a single-token string")
        return ids[0]
    for attr in ("unk_token_id", "pad_token_id", "eos_token_id"):
        val = getattr(tokenizer, attr, None)
        if val is not None:
            return int(val)
    raise ValueError("tokenizer has no unk/pad/eos token; pass baseline_token explicitly")


def loo_variants(tp: TokenizedProbe, variant: Variant = "delete", baseline_id: int = 0) -> list[tuple[list[int], int]]:
    """The (ids, answer_start) sequences for each attributable position of a probe."""
    ids = list(tp.ids)
    out = []
    for i in tp.attributable:
        if variant == "delete":
            out.append((ids[:i] + ids[i + 1 :], tp.prompt_len - 1))
        elif variant == "replace":
            out.append((ids[:i] + [baseline_id] + ids[i + 1 :], tp.prompt_len))
        else:
            raise ValueError(f"unknown leave-one-out variant {variant!r}: use 'delete' or 'replace'")
    return out


def loo_contributions(
    subject: Any,
    tprobes: Sequence[TokenizedProbe],
    variant: Variant = "delete",
    baseline_token: int | str | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    hooks: Sequence[Any] = (),
    progress: bool = False,
) -> list[LooResult]:
    """Leave-one-out contributions for many probes in chunked, padded batches."""
    base_id = baseline_token_id(subject.tokenizer, baseline_token) if variant == "replace" else 0
    seqs: list[tuple[list[int], int]] = []
    spans = []
    for tp in tprobes:
        start = len(seqs)
        seqs.append((list(tp.ids), tp.prompt_len))
        seqs += loo_variants(tp, variant, base_id)
        spans.append((start, len(seqs)))
    scores = score_sequences(subject, seqs, hooks, batch_tokens, progress="leave-one-out" if progress else False)
    results = []
    for tp, (a, b) in zip(tprobes, spans):
        full = scores[a].lp
        contrib = torch.tensor([full - s.lp for s in scores[a + 1 : b]], dtype=torch.float64)
        results.append(LooResult(tp, full, contrib))
    return results


def loo_table(results: Sequence[LooResult], model: str, method: str) -> pd.DataFrame:
    """Tidy table of leave-one-out results (one row per attributable position)."""
    rows = [
        {
            "probe_id": r.tprobe.probe.id,
            "model": model,
            "method": method,
            "position": pos,
            "token": r.tprobe.tokens[pos],
            "score": float(c),
        }
        for r in results
        for pos, c in zip(r.positions, r.contributions.tolist())
    ]
    return make_table(rows)


@register("loo")
def loo(subject: Any, tprobes: Sequence[TokenizedProbe], **kw: Any) -> pd.DataFrame:
    """Paper eq.1-2 by deletion."""
    return loo_table(loo_contributions(subject, tprobes, "delete", **kw), subject.name, "loo")


@register("loo_replace")
def loo_replace(subject: Any, tprobes: Sequence[TokenizedProbe], **kw: Any) -> pd.DataFrame:
    """Leave-one-out by replacing each token with a baseline token."""
    return loo_table(loo_contributions(subject, tprobes, "replace", **kw), subject.name, "loo_replace")
