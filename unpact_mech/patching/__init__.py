"""Activation patching between a base and an unlearned model: which layer, position or head restores the answer.

restoration = (LP_patched - LP_target) / (LP_source - LP_target), where activations of the *source* run are
patched into the *target* model (direction ``base->unlearned``: source = base, target = unlearned; the reverse
direction measures how much one site of the unlearned model damages the base). Per (layer, position) sites are
batched: row r of a batch patches position r only.

Three methods (``PATCH_METHODS``), in the same units:

* ``exact``: exact patching from the target's clean run. A patch at (layer l, position p) changes nothing below
  layer l and nothing before position p, so a cell takes the clean residual entering layer l and the clean KV
  cache of the positions before the chunk of positions it belongs to, and computes only layers >= l at those
  positions (:meth:`~unpact_mech.model.backends.hf.HFBackend.hidden_from`, on the plain HF view over the subjects'
  own weights). A head's ``hook_z`` patch (every position) reuses the layers below l. Many cells per batch.
* ``exact_full``: every patched sequence from token 0 through every layer, through the TransformerLens hooks
  (one batched forward of the target per site): the reference the fast path is tested against, and the path
  taken when hooks are attached or the backend has no HF view.
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

from unpact_mech.core.errors import UnpactError
from unpact_mech.hooks import act_name, applied, patch_from_cache
from unpact_mech.model.backends.kernel import AnswerIndex, answer_logprobs
from unpact_mech.model.subject import Subject, check_same_tokenizer
from unpact_mech.patching.views import (
    CHUNK,
    DIRECTIONS,
    KINDS,
    _grid,
    atp_star,
    head_row,
    patch_fast,
    position_row,
    restoration_of,
)
from unpact_mech.probes import Probe, TokenizedProbe, tokenize_probe
from unpact_mech.scoring import score_sequences

PATCH_METHODS = ("exact", "exact_full", "atp", "atp*")
ESTIMATES = ("atp", "atp*")  # methods that estimate (and can be verified)


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


def patch_positions(
    base: Subject,
    unlearned: Subject,
    tp: TokenizedProbe,
    kinds: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "base->unlearned",
    method: str = "exact",
) -> pd.DataFrame:
    """Restoration per (kind, layer, position). Positions default to the question's first token onwards.

    ``method="exact"`` computes from the target's clean run where the subjects allow (:func:`patch_fast`);
    ``"exact_full"`` (and the fallback) runs one batched forward of the target per site through the hooks."""
    if method == "exact":
        fast = patch_fast(base, unlearned, tp, kinds, layers, positions, direction, heads=False)
        if fast is not None:
            return fast[0]
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
                rows.append(position_row(tp, direction, kind, layer, p, lp, lp_tgt, gap))
    return pd.DataFrame(rows)


def patch_heads(
    base: Subject, unlearned: Subject, tp: TokenizedProbe, layers: Sequence[int] | None = None,
    direction: str = "base->unlearned", method: str = "exact",
) -> pd.DataFrame:
    """Restoration per (layer, head): the head's ``hook_z`` at every position patched from the source run
    (``method`` as in :func:`patch_positions`)."""
    if method == "exact":
        fast = patch_fast(base, unlearned, tp, kinds=(), layers=layers, direction=direction)
        if fast is not None:
            return fast[1]
    layers = list(range(base.n_layers)) if layers is None else list(layers)
    n_heads = base.cfg.n_heads
    names = {act_name("z", layer) for layer in layers}
    target, cache, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, names)
    gap = lp_src - lp_tgt
    rows = []
    for layer in layers:  # row h patches head h at every position
        hooks = patch_from_cache(cache, act_name("z", layer), heads=[[h] for h in range(n_heads)])
        lps = _lp_batch(target, tp, n_heads, hooks)
        for h, lp in enumerate(lps.tolist()):
            rows.append(head_row(tp, direction, layer, h, lp, lp_tgt, gap))
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
                head_rows.append(head_row(tp, direction, layer, h, lp_tgt + eff, lp_tgt, gap))
            continue
        for p, eff in zip(positions, delta[pos_t].sum(-1).tolist()):
            rows.append(position_row(tp, direction, kind, layer, p, lp_tgt + eff, lp_tgt, gap))
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
    tp: TokenizedProbe | Probe,
    method: str = "exact",
    kinds: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "base->unlearned",
    verify: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-position table, per-head table) of restorations by ``method`` (``PATCH_METHODS``), on one probe
    (raw probes are tokenised by ``base``; both models must share its tokenizer).

    ``verify=k`` (estimates only): the estimate's top-k position cells and top-k heads by |restoration| are
    patched exactly (fast path) and reported beside it in ``exact_lp`` / ``exact_restoration`` (NaN for the
    cells not verified), ``verified`` marking them: screen, then confirm, in one call."""
    if method not in PATCH_METHODS:
        raise UnpactError(f"unknown patching method {method!r}: use one of {PATCH_METHODS}")
    if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
        raise UnpactError(f"verify must be a whole number of cells >= 0, got {verify!r}")
    if verify and method not in ESTIMATES:
        raise UnpactError(f"verify={verify} checks an estimate against exact patching; method {method!r} is already "
                          f"exact (use verify with one of {ESTIMATES})")
    check_same_tokenizer(base, unlearned)  # token ids index both models' embeddings
    if isinstance(tp, Probe):
        tp = tokenize_probe(base.tokenizer, tp, max_len=base.n_ctx)
    _grid(base, tp, kinds, layers, positions)
    lp_base, lp_unl = (score_sequences(m, [(tp.ids, tp.prompt_len)])[0].lp for m in (base, unlearned))
    if lp_base == lp_unl:
        raise UnpactError(f"probe '{tp.probe.id}': the two models give the answer the same log-prob ({lp_base:.4f}), "
                          "so there is nothing to restore (every restoration would be 0/0); are --base and "
                          "--unlearned the same model?")
    if method in ESTIMATES:
        run = atp if method == "atp" else atp_star
        est = run(base, unlearned, tp, kinds, layers, positions, direction)
        return verified(base, unlearned, tp, *est, verify, direction) if verify else est
    if method == "exact":
        fast = patch_fast(base, unlearned, tp, kinds, layers, positions, direction)
        if fast is not None:
            return fast[0].assign(method="exact"), fast[1].assign(method="exact")
    pos = patch_positions(base, unlearned, tp, kinds, layers, positions, direction, method="exact_full")
    heads = patch_heads(base, unlearned, tp, layers, direction, method="exact_full")
    return pos.assign(method=method), heads.assign(method=method)


def verified(base: Subject, unlearned: Subject, tp: TokenizedProbe, pos: pd.DataFrame, heads: pd.DataFrame, k: int,
             direction: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The estimate's tables with its top-``k`` cells of each (by |restoration|, or AtP*'s GradDrop score)
    patched exactly beside it."""
    pos, heads = pos.copy(), heads.copy()
    for t in (pos, heads):
        t["exact_lp"] = float("nan")
        t["exact_restoration"] = float("nan")
        t["verified"] = False
    rank = "graddrop" if "graddrop" in pos else "restoration"  # AtP* ranks by its GradDrop score
    for i in pos[rank].abs().nlargest(min(k, len(pos))).index:
        r = pos.loc[i]
        one = patch_positions(base, unlearned, tp, [r.kind], [int(r.layer)], [int(r.position)], direction)
        pos.loc[i, ["exact_lp", "exact_restoration", "verified"]] = [one.lp.iloc[0], one.restoration.iloc[0], True]
    top = heads[rank].abs().nlargest(min(k, len(heads))).index
    for layer in sorted({int(heads.loc[i, "layer"]) for i in top}):
        exact = patch_heads(base, unlearned, tp, [layer], direction).set_index("head")
        for i in [i for i in top if int(heads.loc[i, "layer"]) == layer]:
            h = int(heads.loc[i, "head"])
            heads.loc[i, ["exact_lp", "exact_restoration", "verified"]] = [exact.lp[h], exact.restoration[h], True]
    return pos, heads


def agreement(exact: pd.DataFrame, approx: pd.DataFrame, keys: Sequence[str], top_k: int = 10,
              rank: str = "restoration") -> dict[str, float]:
    """How far an approximation (AtP, AtP*) can be trusted against exact patching on the same cells: Pearson and
    Spearman correlation of the restorations over all cells, and the share of the exact top-k cells (by
    |restoration|) that are also in the approximation's top-k (by |``rank``|: AtP*'s ``graddrop`` score)."""
    m = exact.merge(approx, on=list(keys), suffixes=("_exact", "_approx"))
    a, b = m["restoration_exact"], m["restoration_approx"]
    r = m[rank if rank in m else f"{rank}_approx"]
    k = min(top_k, len(m))
    top_e = set(a.abs().nlargest(k).index)
    top_a = set(r.abs().nlargest(k).index)
    return {"n_cells": float(len(m)), "pearson": float(a.corr(b)), "spearman": float(a.corr(b, method="spearman")),
            f"top{top_k}_overlap": len(top_e & top_a) / k if k else float("nan")}


__all__ = ["CHUNK", "DIRECTIONS", "ESTIMATES", "KINDS", "PATCH_METHODS", "agreement", "atp", "atp_star", "patch",
           "patch_fast", "patch_heads", "patch_positions", "restoration", "restoration_of", "verified"]
