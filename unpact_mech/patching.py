"""Activation patching between a base and an unlearned model: which layer, position or head restores the answer.

restoration = (LP_patched - LP_target) / (LP_source - LP_target), where activations of the *source* run are
patched into the *target* model (direction ``base->unlearned``: source = base, target = unlearned; the reverse
direction measures how much one site of the unlearned model damages the base). Per (layer, position) sites are
batched: row r of a batch patches position r only.

Two methods (``PATCH_METHODS``), in the same units:

* ``exact``: one forward of the target per site (batched).
* ``atp`` (attribution patching, Nanda 2023; Syed et al. 2023): the first-order estimate
  LP_patched - LP_target ~= (a_source - a_target) . dLP_target/da at every site at once, from one cached
  forward of the source and one forward + backward of the target. A head's site is its ``hook_z`` at every
  position, summed over positions, as in :func:`patch_heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from unpact_mech.backends.kernel import AnswerIndex, answer_logprobs
from unpact_mech.errors import UnpactError
from unpact_mech.hooks import act_name, applied, patch_from_cache
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import score_sequences
from unpact_mech.subject import Subject, check_same_tokenizer

DIRECTIONS = ("base->unlearned", "unlearned->base")
PATCH_METHODS = ("exact", "atp")
KINDS = ("resid_pre", "attn_out", "mlp_out")  # per-(layer, position) sites; heads are ``z`` sites


def restoration_of(lp: float, lp_target: float, gap: float) -> float:
    """(LP_patched - LP_target) / (LP_source - LP_target); NaN when the two models score the answer alike
    (gap 0: nothing to restore)."""
    return (lp - lp_target) / gap if gap != 0 else float("nan")


def _endpoints(base: Subject, unlearned: Subject, tp: TokenizedProbe, direction: str, names: set[str]) -> tuple[Any, Any, float, float]:
    """(target model, source cache of ``names``, LP of source, LP of target) for one patching direction."""
    check_same_tokenizer(base, unlearned)
    if direction not in DIRECTIONS:
        raise UnpactError(f"unknown direction {direction!r}: 'base->unlearned' or 'unlearned->base'")
    source, target = (base, unlearned) if direction == "base->unlearned" else (unlearned, base)
    cache = None
    if names:
        with torch.no_grad():
            _, cache = source.bridge.run_with_cache(torch.tensor([tp.ids], device=source.device),
                                                    names_filter=lambda n: n in names)
    lp_src = score_sequences(source, [(tp.ids, tp.prompt_len)])[0].lp
    lp_tgt = score_sequences(target, [(tp.ids, tp.prompt_len)])[0].lp
    return target, cache, lp_src, lp_tgt


def _lp_batch(subject: Subject, tp: TokenizedProbe, n: int, hooks: list) -> torch.Tensor:
    with applied(subject, hooks):
        scores = score_sequences(subject, [(tp.ids, tp.prompt_len)] * n, batch_tokens=n * len(tp.ids))
    return torch.tensor([s.lp for s in scores])


def _grid(base: Subject, tp: TokenizedProbe, kinds: Sequence[str], layers: Sequence[int] | None,
          positions: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(layers, positions) of a patching map: all layers, and the question's first token onwards, by default."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UnpactError(f"unknown patch kind(s) {unknown}: use {sorted(KINDS)}")
    n_layers, n_pos = base.cfg.n_layers, len(tp.ids) - 1  # the last token predicts nothing
    layers = list(range(n_layers)) if layers is None else list(layers)
    positions = list(range(min(tp.attributable), n_pos)) if positions is None else list(positions)
    bad_l = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n_layers]
    bad_p = [x for x in positions if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n_pos]
    if bad_l or bad_p or not layers or not positions:
        raise UnpactError(f"probe '{tp.probe.id}': patching needs layers in 0..{n_layers - 1} and positions in "
                          f"0..{n_pos - 1}, got layers {bad_l or layers[:0] or 'none'} and positions "
                          f"{bad_p or positions[:0] or 'none'}")
    return layers, positions


def patch_positions(
    base: Subject,
    unlearned: Subject,
    tp: TokenizedProbe,
    kinds: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "base->unlearned",
) -> pd.DataFrame:
    """Restoration per (kind, layer, position). Positions default to the question's first token onwards."""
    layers, positions = _grid(base, tp, kinds, layers, positions)
    names = {act_name(k, layer) for k in kinds for layer in layers}
    target, cache, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, names)
    gap = lp_src - lp_tgt
    rows = []
    for kind in kinds:
        for layer in layers:
            name = act_name(kind, layer)  # row r patches position positions[r] only
            lps = _lp_batch(target, tp, len(positions), patch_from_cache(cache, name, [[p] for p in positions]))
            for p, lp in zip(positions, lps.tolist()):
                rows.append({"probe_id": tp.probe.id, "direction": direction, "kind": kind, "layer": layer,
                             "position": p, "token": tp.tokens[p], "lp": lp,
                             "restoration": restoration_of(lp, lp_tgt, gap)})
    return pd.DataFrame(rows)


def patch_heads(
    base: Subject, unlearned: Subject, tp: TokenizedProbe, layers: Sequence[int] | None = None, direction: str = "base->unlearned"
) -> pd.DataFrame:
    """Restoration per (layer, head): the head's ``hook_z`` at every position patched from the source run."""
    layers = list(range(base.cfg.n_layers)) if layers is None else list(layers)
    n_heads = base.cfg.n_heads
    names = {act_name("z", layer) for layer in layers}
    target, cache, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, names)
    gap = lp_src - lp_tgt
    rows = []
    for layer in layers:  # row h patches head h at every position
        hooks = patch_from_cache(cache, act_name("z", layer), heads=[[h] for h in range(n_heads)])
        lps = _lp_batch(target, tp, n_heads, hooks)
        for h, lp in enumerate(lps.tolist()):
            rows.append({"probe_id": tp.probe.id, "direction": direction, "layer": layer, "head": h, "lp": lp,
                         "restoration": restoration_of(lp, lp_tgt, gap)})
    return pd.DataFrame(rows)


def restoration(base: Subject, unlearned: Subject, tp: TokenizedProbe, hooks: list, direction: str = "base->unlearned") -> float:
    """Restoration of one arbitrary set of patch hooks applied to the target model (NaN for a zero gap)."""
    target, _, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, set())
    lp = float(_lp_batch(target, tp, 1, hooks)[0])
    return restoration_of(lp, lp_tgt, lp_src - lp_tgt)


def atp(
    base: Subject,
    unlearned: Subject,
    tp: TokenizedProbe,
    kinds: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "base->unlearned",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attribution patching: estimated restoration per (kind, layer, position) and per (layer, head), the tables
    of :func:`patch_positions` and :func:`patch_heads` (column ``lp`` is the estimated patched LP)."""
    layers, positions = _grid(base, tp, kinds, layers, positions)
    sites = {(k, layer): act_name(k, layer) for k in kinds for layer in layers}
    sites.update({("z", layer): act_name("z", layer) for layer in layers})
    target, cache, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, set(sites.values()))
    grads = _site_gradients(target, tp, list(sites.values()))
    gap = lp_src - lp_tgt
    pos_t = torch.tensor(positions)
    rows, head_rows = [], []
    for (kind, layer), name in sites.items():
        delta = (cache[name][0].double().cpu() - grads[name][1]) * grads[name][0]  # [pos, ...]
        if kind == "z":
            for h, eff in enumerate(delta.sum((0, 2)).tolist()):  # every position, per head
                head_rows.append({"probe_id": tp.probe.id, "direction": direction, "layer": layer, "head": h,
                                  "lp": lp_tgt + eff, "restoration": restoration_of(lp_tgt + eff, lp_tgt, gap)})
            continue
        for p, eff in zip(positions, delta[pos_t].sum(-1).tolist()):
            rows.append({"probe_id": tp.probe.id, "direction": direction, "kind": kind, "layer": layer,
                         "position": p, "token": tp.tokens[p], "lp": lp_tgt + eff,
                         "restoration": restoration_of(lp_tgt + eff, lp_tgt, gap)})
    return pd.DataFrame(rows).assign(method="atp"), pd.DataFrame(head_rows).assign(method="atp")


def _site_gradients(subject: Subject, tp: TokenizedProbe, names: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per hook name: (dLP/da, a) on one run of ``tp`` (float64, CPU, batch row dropped).

    Each hook adds a zero tensor that requires grad; its gradient is dLP/da, and the graph stays connected
    through every later site (weights stay frozen)."""
    leaves: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def make(name: str) -> Any:
        def fn(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            zero = torch.zeros_like(act, requires_grad=True)
            leaves[name] = (zero, act.detach())
            return act + zero

        return fn

    ids = torch.tensor([list(tp.ids)], device=subject.device)
    with torch.enable_grad(), applied(subject, [(n, make(n)) for n in names]):
        logits = subject.bridge(ids)
        idx = AnswerIndex.build([(tp.ids, tp.prompt_len)], logits.device)
        lp = answer_logprobs(idx.gather(logits), idx.targets)[0].mean()
        grads = torch.autograd.grad(lp, [leaves[n][0] for n in names])
    return {n: (g[0].double().cpu(), leaves[n][1][0].double().cpu()) for n, g in zip(names, grads)}


def patch(
    base: Subject,
    unlearned: Subject,
    tp: TokenizedProbe,
    method: str = "exact",
    kinds: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "base->unlearned",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-position table, per-head table) of restorations by ``method`` (``exact`` or ``atp``)."""
    if method not in PATCH_METHODS:
        raise UnpactError(f"unknown patching method {method!r}: use one of {PATCH_METHODS}")
    _grid(base, tp, kinds, layers, positions)
    lp_base, lp_unl = (score_sequences(m, [(tp.ids, tp.prompt_len)])[0].lp for m in (base, unlearned))
    if lp_base == lp_unl:
        raise UnpactError(f"probe '{tp.probe.id}': the two models give the answer the same log-prob ({lp_base:.4f}), "
                          "so there is nothing to restore (every restoration would be 0/0); are --base and "
                          "--unlearned the same model?")
    if method == "atp":
        return atp(base, unlearned, tp, kinds, layers, positions, direction)
    pos = patch_positions(base, unlearned, tp, kinds, layers, positions, direction)
    return pos.assign(method="exact"), patch_heads(base, unlearned, tp, layers, direction).assign(method="exact")


def agreement(exact: pd.DataFrame, approx: pd.DataFrame, keys: Sequence[str], top_k: int = 10) -> dict[str, float]:
    """How far an approximation (AtP) can be trusted against exact patching on the same cells: Pearson and
    Spearman correlation of the restorations over all cells, and the share of the exact top-k cells (by
    |restoration|) that are also in the approximation's top-k."""
    m = exact.merge(approx, on=list(keys), suffixes=("_exact", "_approx"))
    a, b = m["restoration_exact"], m["restoration_approx"]
    k = min(top_k, len(m))
    top_e = set(a.abs().nlargest(k).index)
    top_a = set(b.abs().nlargest(k).index)
    return {"n_cells": float(len(m)), "pearson": float(a.corr(b)), "spearman": float(a.corr(b, method="spearman")),
            f"top{top_k}_overlap": len(top_e & top_a) / k if k else float("nan")}
