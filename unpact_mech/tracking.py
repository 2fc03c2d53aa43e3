"""Base vs unlearned: how the prompt tokens' contributions and the KeyTokens changed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from scipy.stats import spearmanr

from unpact_mech.attribution.loo import LooResult, loo_contributions
from unpact_mech.keytokens import KeyTokenParams, focus_share, select_keytokens
from unpact_mech.probes import Probe, TokenizedProbe, tokenize_probes


class TokenizerMismatch(ValueError):
    """Two subjects whose token ids do not mean the same thing."""


def check_same_tokenizer(a: Any, b: Any) -> None:
    """Refuse to compare subjects with different vocabularies."""
    if a.tokenizer_fingerprint() != b.tokenizer_fingerprint():
        raise TokenizerMismatch(
            f"models '{a.name}' and '{b.name}' use different tokenizers; token-level comparison needs the "
            "same vocabulary (compare an unlearned model with the base it was made from)"
        )


@dataclass
class Comparison:
    """Per-probe comparison table, the summary, and the raw leave-one-out results of both models."""

    per_probe: pd.DataFrame
    summary: dict[str, float]
    base: list[LooResult]
    unlearned: list[LooResult]


def _jaccard(a: set[int], b: set[int]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def compare(
    base: Any,
    unlearned: Any,
    probes: Sequence[Probe | TokenizedProbe],
    params: KeyTokenParams | None = None,
    fmt: str = "auto",
    variant: str = "delete",
    progress: bool = False,
) -> Comparison:
    """Compare leave-one-out contributions and KeyTokens of two models on the same probes."""
    check_same_tokenizer(base, unlearned)
    params = params or KeyTokenParams()
    raw = [p for p in probes if isinstance(p, Probe)]
    tps = [p for p in probes if isinstance(p, TokenizedProbe)] + tokenize_probes(base, raw, fmt)  # type: ignore
    rb = loo_contributions(base, tps, variant, progress=progress)  # type: ignore[arg-type]
    ru = loo_contributions(unlearned, tps, variant, progress=progress)  # type: ignore[arg-type]
    rows = []
    for b, u in zip(rb, ru):
        tp = b.tprobe
        kb = select_keytokens(b.contributions, params)
        ku = select_keytokens(u.contributions, params)
        diff = (u.contributions - b.contributions)[kb]
        same = bool((b.contributions == u.contributions).all())
        rho = 1.0 if same else float(spearmanr(b.contributions, u.contributions).statistic)
        rows.append(
            {
                "probe_id": tp.probe.id,
                "split": tp.probe.split,
                "keytokens_base": " | ".join(tp.tokens[b.positions[i]] for i in kb),
                "keytokens_unlearned": " | ".join(tp.tokens[u.positions[i]] for i in ku),
                "keytoken_jaccard": _jaccard(set(kb), set(ku)),
                "keytoken_contrib_change": float(diff.mean()) if len(kb) else math.nan,
                "rank_correlation": rho,
                "focus_base": focus_share(b.contributions, kb),
                "focus_unlearned": focus_share(u.contributions, kb),
                "lp_base": b.lp,
                "lp_unlearned": u.lp,
            }
        )
    df = pd.DataFrame(rows)
    df["focus_change"] = df["focus_unlearned"] - df["focus_base"]
    df["lp_change"] = df["lp_unlearned"] - df["lp_base"]
    summary = {
        "n_probes": float(len(df)),
        "mean_keytoken_jaccard": float(df["keytoken_jaccard"].mean()),
        "mean_rank_correlation": float(df["rank_correlation"].mean()),
        "mean_focus_base": float(df["focus_base"].mean()),
        "mean_focus_unlearned": float(df["focus_unlearned"].mean()),
        "mean_keytoken_contrib_change": float(df["keytoken_contrib_change"].mean()),
        "mean_lp_change": float(df["lp_change"].mean()),
    }
    return Comparison(df, summary, rb, ru)
