"""Localisation: where (layer, head, source token) the answer's direct route changed between two models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from unpact_mech.analysis import Analysis
from unpact_mech.analysis.compare import prepare_comparison
from unpact_mech.attribution.dla import Target, decompose, logit_lens
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, TokenizedProbe
from unpact_mech.probes.keytokens import KeyTokenParams


@dataclass
class Localisation:
    """Change base -> unlearned per head, per (layer, source token), and along the KeyToken route."""

    heads: pd.DataFrame  # split, layer, head, base, unlearned, change (head DLA, mean over probes/answer)
    layer_source: pd.DataFrame  # probe_id, split, layer, position, token, base, unlearned, change
    keytoken_route: pd.DataFrame  # split, layer, head, base, unlearned, lost (= base - unlearned), rank
    logit_lens: pd.DataFrame  # probe_id, split, model, layer, score (answer log-prob), mean_rank
    summary: str


def _head_frame(values: Any, split: str, name: str) -> pd.DataFrame:
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
