"""Finding 1, base vs unlearned: how the prompt tokens' contributions, the KeyTokens and the focus on them changed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from scipy.stats import spearmanr

from unpact_mech.analysis import Analysis, as_analysis
from unpact_mech.attribution.loo import LooResult, loo_contributions
from unpact_mech.core.display import frame_html, loo_block, nb_html
from unpact_mech.core.errors import UnpactError
from unpact_mech.model.subject import Subject, TokenizerMismatch, check_same_tokenizer
from unpact_mech.probes import Probe, TokenizedProbe
from unpact_mech.probes.keytokens import KeyTokenParams, focus_share, select_keytokens

__all__ = ["Comparison", "TokenizerMismatch", "compare", "prepare_comparison", "summarise"]


@dataclass
class Comparison:
    """Per-probe comparison table, the summary, the raw leave-one-out results of both models, and the
    KeyToken parameters that selected the KeyTokens."""

    per_probe: pd.DataFrame
    summary: dict[str, float]
    base: list[LooResult]
    unlearned: list[LooResult]
    params: KeyTokenParams = field(default_factory=KeyTokenParams)

    def _repr_html_(self, max_probes: int = 5) -> str:
        """Notebook display: the summary, then per probe the base and unlearned contributions on the same
        tokens (base KeyTokens outlined in both)."""
        summary = pd.DataFrame([{k.replace("_", " "): v for k, v in self.summary.items()}])
        parts = [f"<div class='hd'><b>Comparison</b> of {len(self.base)} probes (KeyTokens: alpha = "
                 f"{self.params.alpha}, beta = {self.params.beta})</div>", frame_html(summary)]
        for rb, ru in list(zip(self.base, self.unlearned))[:max_probes]:
            keys = {rb.positions[i] for i in select_keytokens(rb.contributions, self.params)}
            parts += [loo_block(rb.tprobe, rb.contributions.tolist(), keys, rb.lp, "base"),
                      loo_block(ru.tprobe, ru.contributions.tolist(), keys, ru.lp, "unlearned")]
        if len(self.base) > max_probes:
            parts.append(f"<div class='sc'>... {len(self.base) - max_probes} more in .base / .unlearned</div>")
        return nb_html(*parts)


def prepare_comparison(
    base: Analysis | Subject, unlearned: Subject, probes: Sequence[Probe | TokenizedProbe] | None, params: KeyTokenParams | None, fmt: str
) -> tuple[Analysis, list[TokenizedProbe]]:
    """Shared prologue of comparisons: the base side (an Analysis, given or built) and the same tokenizer."""
    an, tps = as_analysis(base, probes, params, fmt)
    check_same_tokenizer(an.base, unlearned)
    if not tps:
        raise UnpactError("no probes to compare: give at least one probe")
    return an, tps


def _jaccard(a: set[int], b: set[int]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def compare(
    base: Analysis | Subject,
    unlearned: Subject,
    probes: Sequence[Probe | TokenizedProbe] | None = None,
    params: KeyTokenParams | None = None,
    fmt: str = "auto",
    progress: bool = False,
) -> Comparison:
    """Compare leave-one-out contributions and KeyTokens of two models on the same probes.

    ``base`` is an :class:`~unpact_mech.analysis.Analysis` (its probes, parameters and leave-one-out variant
    are used; ``probes`` may pick a subset) or a base Subject (an Analysis is built on ``probes``).
    """
    an, tps = prepare_comparison(base, unlearned, probes, params, fmt)
    params = an.params
    rb = an.loo(tps, progress=progress)
    ru = loo_contributions(unlearned, tps, an.variant, progress=progress)
    rows = []
    for b, u, kb in zip(rb, ru, an.keytokens(tps)):
        tp = b.tprobe
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
    an.annotate(df)
    return Comparison(df, summarise(df), rb, ru, params)


def summarise(df: pd.DataFrame) -> dict[str, float]:
    """The comparison's summary: the number of probes and the mean of each per-probe measure over them."""
    return {
        "n_probes": float(len(df)),
        "mean_keytoken_jaccard": float(df["keytoken_jaccard"].mean()),
        "mean_rank_correlation": float(df["rank_correlation"].mean()),
        "mean_focus_base": float(df["focus_base"].mean()),
        "mean_focus_unlearned": float(df["focus_unlearned"].mean()),
        "mean_keytoken_contrib_change": float(df["keytoken_contrib_change"].mean()),
        "mean_lp_change": float(df["lp_change"].mean()),
    }
