"""Base vs unlearned: how the prompt tokens' contributions and the KeyTokens changed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from scipy.stats import spearmanr

from unpact_mech.analysis import Analysis, as_analysis
from unpact_mech.attribution.dla import Target
from unpact_mech.attribution.loo import LooResult, loo_contributions
from unpact_mech.errors import UnpactError
from unpact_mech.keytokens import KeyTokenParams, focus_share, select_keytokens
from unpact_mech.models import Subject
from unpact_mech.probes import Probe, TokenizedProbe


class TokenizerMismatch(UnpactError):
    """Two subjects whose token ids do not mean the same thing."""


def check_same_tokenizer(a: Subject, b: Subject) -> None:
    """Refuse to compare subjects with different vocabularies."""
    if a.tokenizer_fingerprint() != b.tokenizer_fingerprint():
        raise TokenizerMismatch(
            f"models '{a.name}' and '{b.name}' use different tokenizers; token-level comparison needs the "
            "same vocabulary (compare an unlearned model with the base it was made from)"
        )


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
        from unpact_mech.keytokens import select_keytokens
        from unpact_mech.report.html import frame_html, loo_block, nb_html

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
    summary = {
        "n_probes": float(len(df)),
        "mean_keytoken_jaccard": float(df["keytoken_jaccard"].mean()),
        "mean_rank_correlation": float(df["rank_correlation"].mean()),
        "mean_focus_base": float(df["focus_base"].mean()),
        "mean_focus_unlearned": float(df["focus_unlearned"].mean()),
        "mean_keytoken_contrib_change": float(df["keytoken_contrib_change"].mean()),
        "mean_lp_change": float(df["lp_change"].mean()),
    }
    return Comparison(df, summary, rb, ru, params)


# ----------------------------------------------------------------------------------------------------------
# Localisation: where (layer, head, source token) the answer's direct route changed.
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Localisation:
    """Change base -> unlearned per head, per (layer, source token), and along the KeyToken route."""

    heads: pd.DataFrame  # split, layer, head, base, unlearned, change (head DLA, mean over probes/answer)
    layer_source: pd.DataFrame  # probe_id, split, layer, position, token, base, unlearned, change
    keytoken_route: pd.DataFrame  # split, layer, head, base, unlearned, lost (= base - unlearned), rank
    logit_lens: pd.DataFrame  # probe_id, split, model, layer, score (answer log-prob), mean_rank
    summary: str


def _head_frame(values: Any, split: str, name: str) -> pd.DataFrame:
    import numpy as np

    L, H = values.shape
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    return pd.DataFrame({"split": split, "layer": layer.ravel(), "head": head.ravel(), name: values.ravel()})


def localise(
    base: Analysis | Subject,
    unlearned: Subject,
    probes: Sequence[Probe | TokenizedProbe] | None = None,
    params: KeyTokenParams | None = None,
    fmt: str = "auto",
    target: Target = "logit",
    top_k: int = 5,
    progress: bool = False,
) -> Localisation:
    """Localise the change of the answer's direct routes between two models, split by probe split."""
    from tqdm.auto import tqdm

    from unpact_mech.attribution.dla import decompose, logit_lens

    an, tps = prepare_comparison(base, unlearned, probes, params, fmt)
    base = an.base
    head_acc: dict[str, list] = {}
    route_acc: dict[str, list] = {}
    ls_rows, lens = [], []
    for tp, keypos in tqdm(list(zip(tps, an.keytoken_positions(tps))), desc="localise", disable=not progress):
        db = decompose(base, tp, target)
        du = decompose(unlearned, tp, target)
        split = tp.probe.split
        assert db.paths is not None and du.paths is not None  # decompose(with_paths=True)
        pb, pu = db.paths.mean(2), du.paths.mean(2)  # [L, H, S]
        head_acc.setdefault(split, []).append((db.heads.mean(-1), du.heads.mean(-1)))
        route_acc.setdefault(split, []).append((pb[:, :, keypos].sum(-1), pu[:, :, keypos].sum(-1)))
        sb, su = pb.sum(1), pu.sum(1)  # [L, S]
        for layer in range(sb.shape[0]):
            for pos in tp.attributable:
                ls_rows.append({"probe_id": tp.probe.id, "split": split, "layer": layer, "position": pos,
                                "token": tp.tokens[pos], "is_keytoken": pos in keypos,
                                "base": float(sb[layer, pos]), "unlearned": float(su[layer, pos])})
        for subject in (base, unlearned):
            lens.append(logit_lens(subject, tp).assign(split=split))
    heads, route = [], []
    for split, pairs in head_acc.items():
        b = torch.stack([p[0] for p in pairs]).mean(0).numpy()
        u = torch.stack([p[1] for p in pairs]).mean(0).numpy()
        heads.append(_head_frame(b, split, "base").assign(unlearned=u.ravel()))
        rb = torch.stack([p[0] for p in route_acc[split]]).mean(0).numpy()
        ru = torch.stack([p[1] for p in route_acc[split]]).mean(0).numpy()
        route.append(_head_frame(rb, split, "base").assign(unlearned=ru.ravel()))
    heads_df = pd.concat(heads, ignore_index=True)
    heads_df["change"] = heads_df["unlearned"] - heads_df["base"]
    route_df = pd.concat(route, ignore_index=True)
    route_df["lost"] = route_df["base"] - route_df["unlearned"]
    route_df = route_df.sort_values(["split", "lost"], ascending=[True, False]).reset_index(drop=True)
    route_df["rank"] = route_df.groupby("split").cumcount() + 1
    an.annotate(route_df)
    ls_df = pd.DataFrame(ls_rows)
    ls_df["change"] = ls_df["unlearned"] - ls_df["base"]
    an.annotate(ls_df)
    return Localisation(heads_df, ls_df, route_df, pd.concat(lens, ignore_index=True),
                        describe_route(route_df, top_k))


def describe_route(route: pd.DataFrame, top_k: int = 5) -> str:
    """One sentence per split: the heads that lost the most KeyToken route."""
    lines = []
    for split, g in route.groupby("split", sort=True):
        top = g[g["lost"] > 0].head(top_k)
        if top.empty:
            lines.append(f"{split}: no head lost KeyToken route")
            continue
        heads = ", ".join(f"{int(r.layer)}.{int(r.head)} ({r.lost:+.3f})" for r in top.itertuples())
        lines.append(f"{split}: layers {int(top.layer.min())}-{int(top.layer.max())} lost the KeyToken route "
                     f"through heads {heads}")
    return "\n".join(lines)
