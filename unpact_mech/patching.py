"""Activation patching between a base and an unlearned model: which layer, position or head restores the answer.

restoration = (LP_patched - LP_target) / (LP_source - LP_target), where activations of the *source* run are
patched into the *target* model (direction ``base->unlearned``: source = base, target = unlearned; the reverse
direction measures how much one site of the unlearned model damages the base). Per (layer, position) sites are
batched: row r of a batch patches position r only.

Three methods (``PATCH_METHODS``), in the same units:

* ``exact``: exact patching from the target's clean run. A patch at (layer l, position p) changes nothing below
  layer l and nothing before position p, so a cell takes the clean residual entering layer l and the clean KV
  cache of the positions before the chunk of positions it belongs to, and computes only layers >= l at those
  positions (:meth:`~unpact_mech.backends.hf.HFBackend.hidden_from`, on the plain HF view over the subjects'
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

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from unpact_mech.backends import fast_path
from unpact_mech.backends.hf import HFBackend, expand_cache
from unpact_mech.backends.kernel import AnswerIndex, answer_logprobs
from unpact_mech.errors import UnpactError
from unpact_mech.hooks import act_name, applied, patch_from_cache
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import score_sequences
from unpact_mech.subject import Subject, check_same_tokenizer

DIRECTIONS = ("base->unlearned", "unlearned->base")
PATCH_METHODS = ("exact", "exact_full", "atp", "atp*")
ESTIMATES = ("atp", "atp*")  # methods that estimate (and can be verified)
CHUNK = 4  # positions per batch of the fast exact path: rows recompute at most CHUNK - 1 clean positions
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
                rows.append({"probe_id": tp.probe.id, "direction": direction, "kind": kind, "layer": layer,
                             "position": p, "token": tp.tokens[p], "lp": lp,
                             "restoration": restoration_of(lp, lp_tgt, gap)})
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


def atp_star(
    base: Subject,
    unlearned: Subject,
    tp: TokenizedProbe,
    kinds: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "base->unlearned",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """AtP* (Kramár et al. 2024, arXiv 2403.00745): the tables of :func:`atp` with two fixes.

    * **QK fix** (section 3.1.1, eq. 7-10): AtP linearises the attention softmax, which is wrong where attention
      is saturated. A ``resid_pre`` cell at (l, p) feeds layer l's query and key at p; AtP* replaces the
      linear term of that path, dr_p . h_l,p with h_l = d<A_l, g_A>/dr_l, by the exact change of layer l's
      attention probabilities, sum_heads <A'_l - A_l, g_A>, where A'_l is recomputed with position p's residual
      patched (query row p and key column p; :meth:`HFBackend.hidden_from` on layer l alone) and
      g_A = dLP/dA_l. The paper's nodes are queries and keys themselves; applying the fix to the attention a
      residual site feeds directly is this toolkit's reading for residual sites. ``attn_out``, ``mlp_out`` and
      head outputs feed no softmax directly and keep AtP's estimate.
    * **GradDrop** (section 3.1.2, eq. 11): cancellation of direct and indirect effects. For each layer ℓ the
      gradient is recomputed with layer ℓ's residual contributions (attention and MLP outputs) detached, giving
      I_ℓ(n); the score is c(n) = sum_ℓ |I_ℓ(n)| / (L - 1) (column ``graddrop``, in restoration units,
      unsigned: a ranking score). ``restoration`` is the signed QK-fixed estimate.

    Runs on the plain HF view of both subjects (no hooks attached)."""
    layers, positions = _grid(base, tp, kinds, layers, positions)
    ends = _view_endpoints(base, unlearned, tp, direction)
    if ends is None:
        raise UnpactError("atp* runs on the plain HF view of both models, which attached hooks would bypass; "
                          "detach them (or use method='atp')")
    src, tgt, lp_tgt, gap = ends
    n_layers = len(tgt.sites.layers)
    sites = [(k, layer) for k in kinds for layer in layers] + [("z", layer) for layer in layers]
    act = _record(src, tp.ids, sites)
    qk = [layer for layer in layers if "resid_pre" in kinds]
    patterns = _patched_patterns(tgt, tp, act, qk, positions)
    pos_t = torch.tensor(positions)

    def estimates(drop: int | None) -> dict[tuple[str, int], Tensor]:
        """Per site, the effect per position ([pos]) or per head ([head]) with the gradient through layer
        ``drop``'s outputs detached (None: plain), QK-fixed for resid_pre. Sites at layers >= ``drop`` are not
        affected by the drop (eq. 11's I_l(n) = I(n) there) and are left out."""
        todo = [x for x in sites if drop is None or x[1] < drop]
        g = _view_gradients(tgt, tp, todo, [x for x in qk if drop is None or x < drop], drop)
        out = {}
        for site in todo:
            grad, a = g.grads[site]
            delta = (act[site][0].double() - a) * grad
            if site[0] == "z":
                out[site] = delta.sum((0, 2))
                continue
            eff = delta[pos_t].sum(-1)
            if site[0] == "resid_pre":
                layer = site[1]
                lin = ((act[site][0].double() - a) * g.pattern_grad[layer])[pos_t].sum(-1)
                exact = torch.tensor([float(((patterns[(layer, p)] - g.pattern[layer][:, p:])
                                             * g.grad_pattern[layer][:, p:]).sum()) for p in positions],
                                     dtype=torch.float64)
                eff = eff - lin + exact
            out[site] = eff
        return out

    plain = estimates(None)
    drops = [{**plain, **estimates(ell)} if any(x[1] < ell for x in sites) else plain for ell in range(n_layers)]
    denom = max(1, n_layers - 1) * abs(gap) if gap != 0 else float("nan")
    rows, head_rows = [], []
    for site in sites:
        score = torch.stack([d[site].abs() for d in drops]).sum(0) / denom
        kind, layer = site
        if kind == "z":
            for h, (eff, sc) in enumerate(zip(plain[site].tolist(), score.tolist())):
                head_rows.append({"probe_id": tp.probe.id, "direction": direction, "layer": layer, "head": h,
                                  "lp": lp_tgt + eff, "restoration": restoration_of(lp_tgt + eff, lp_tgt, gap),
                                  "graddrop": sc})
            continue
        for p, eff, sc in zip(positions, plain[site].tolist(), score.tolist()):
            rows.append({"probe_id": tp.probe.id, "direction": direction, "kind": kind, "layer": layer,
                         "position": p, "token": tp.tokens[p], "lp": lp_tgt + eff,
                         "restoration": restoration_of(lp_tgt + eff, lp_tgt, gap), "graddrop": sc})
    return pd.DataFrame(rows).assign(method="atp*"), pd.DataFrame(head_rows).assign(method="atp*")


@dataclass
class ViewGradients:
    """One forward + backward of the HF view: per site (dLP/da, a) ([pos, ...], float64, CPU); per QK layer the
    attention probabilities A ([head, query, key]), g_A = dLP/dA, and d<A, g_A>/d resid_pre ([pos, d_model])."""

    grads: dict[tuple[str, int], tuple[Tensor, Tensor]]
    pattern: dict[int, Tensor]
    grad_pattern: dict[int, Tensor]
    pattern_grad: dict[int, Tensor]


def _view_gradients(view: HFBackend, tp: TokenizedProbe, sites: Sequence[tuple[str, int]], qk: Sequence[int],
                    drop: int | None) -> ViewGradients:
    """Gradients of the answer's mean log-prob on the HF view; with ``drop``, layer ``drop``'s attention and MLP
    outputs are detached (GradDrop; ``sites`` must lie below ``drop``)."""
    leaves: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
    probs: dict[int, Tensor] = {}
    want = set(sites) | {("resid_pre", layer) for layer in qk}

    def site_fn(site: tuple[str, int]) -> Any:
        def fn(a: Tensor) -> Tensor:
            zero = torch.zeros_like(a, requires_grad=True)
            leaves[site] = (zero, a.detach())
            return a + zero
        return fn

    def keep(layer: int) -> Any:
        def fn(a: Tensor) -> Tensor:
            probs[layer] = a
            return a
        return fn

    def detached(a: Tensor) -> Tensor:
        return a.detach()

    edits: dict[tuple[str, int], Any] = {site: site_fn(site) for site in want}
    if drop is not None:  # GradDrop: no gradient through layer ``drop``'s contributions to the residual stream
        edits.update({("attn_out", drop): detached, ("mlp_out", drop): detached})
    edits.update({("pattern", layer): keep(layer) for layer in qk})
    ids = torch.tensor([list(tp.ids)], device=view.device)
    with torch.enable_grad(), view.sites.edited(edits):
        h = view.body(input_ids=ids, use_cache=False).last_hidden_state
        idx = AnswerIndex.build([(tp.ids, tp.prompt_len)], h.device)
        lp = answer_logprobs(view.logits(idx.gather(h)), idx.targets)[0].mean()
        order = list(leaves)
        got = torch.autograd.grad(lp, [leaves[s][0] for s in order] + [probs[layer] for layer in qk],
                                  retain_graph=bool(qk))
        grads = {s: (g[0].double().cpu(), leaves[s][1][0].double().cpu()) for s, g in zip(order, got)}
        g_a = {layer: g[0].detach() for layer, g in zip(qk, got[len(order):])}
        through = {}
        for layer in qk:  # the pattern path of resid_pre: d<A_l, g_A>/dr_l (only layer l's own ops are traversed)
            (gr,) = torch.autograd.grad((probs[layer][0] * g_a[layer]).sum(), leaves[("resid_pre", layer)][0],
                                        retain_graph=True)
            through[layer] = gr[0].double().cpu()
    return ViewGradients(grads, {k: v[0].detach().double().cpu() for k, v in probs.items()},
                         {k: v.double().cpu() for k, v in g_a.items()}, through)


def _patched_patterns(view: HFBackend, tp: TokenizedProbe, act: dict[tuple[str, int], Tensor], layers: Sequence[int],
                      positions: Sequence[int]) -> dict[tuple[int, int], Tensor]:
    """Layer l's attention probabilities of queries >= p ([head, query - p, key], float64) with position p's
    residual entering l taken from the source: layer l alone, run on positions >= p after the clean cache of
    positions < p (earlier queries do not change)."""
    if not layers:
        return {}
    ordered = sorted(set(positions))
    clean = clean_run(view, tp.ids, tp.prompt_len, ordered)
    out = {}
    for layer in layers:
        for p in ordered:
            resid = clean.resid[layer][:, p:].clone()
            resid[0, 0] = act[("resid_pre", layer)][0, p]
            got: dict[str, Tensor] = {}

            def keep(a: Tensor, got: dict = got) -> Tensor:
                got["A"] = a
                return a

            pos = torch.arange(p, len(tp.ids), device=resid.device)[None]
            view.hidden_from(layer, resid, copy.deepcopy(clean.caches[p]), pos, {("pattern", layer): keep}, stop=layer)
            out[(layer, p)] = got["A"][0].double().cpu()  # [head, queries p.., keys 0..]
    return out


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
    verify: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-position table, per-head table) of restorations by ``method`` (``PATCH_METHODS``).

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


def _view_endpoints(base: Subject, unlearned: Subject, tp: TokenizedProbe,
                    direction: str) -> tuple[HFBackend, HFBackend, float, float] | None:
    """(source view, target view, LP of the target, LP_source - LP_target), or None when a subject cannot take
    the HF view (hooks attached)."""
    check_same_tokenizer(base, unlearned)
    if direction not in DIRECTIONS:
        raise UnpactError(f"unknown direction {direction!r}: 'base->unlearned' or 'unlearned->base'")
    views = _views(base, unlearned, direction)
    if views is None:
        return None
    source, target = (base, unlearned) if direction == "base->unlearned" else (unlearned, base)
    lp_src = score_sequences(source, [(tp.ids, tp.prompt_len)])[0].lp
    lp_tgt = score_sequences(target, [(tp.ids, tp.prompt_len)])[0].lp
    return views[0], views[1], lp_tgt, lp_src - lp_tgt


def _views(base: Subject, unlearned: Subject, direction: str) -> tuple[HFBackend, HFBackend] | None:
    """(source, target) HF views when both subjects may take the fast path (no hooks attached), else None."""
    source, target = (base, unlearned) if direction == "base->unlearned" else (unlearned, base)
    src, tgt = fast_path(source.backend), fast_path(target.backend)
    if src is None or tgt is None:
        return None
    return src, tgt


@dataclass
class CleanRun:
    """The target's clean run of one sequence: the residual entering each layer (``[1, pos, d_model]``), the
    answer log-prob of each answer-predicting column (float64), and KV caches holding positions < p."""

    resid: list[Tensor]
    lp_col: dict[int, float]
    caches: dict[int, Any]


def clean_run(view: HFBackend, ids: Sequence[int], prompt_len: int, starts: Sequence[int]) -> CleanRun:
    """Run ``ids`` on ``view`` in pieces cut at ``starts``, keeping a copy of the cache before each start."""
    dev, n_layers = view.device, len(view.sites.layers)
    cuts = sorted({0, *starts, len(ids)})
    cache = view.new_cache()
    pieces: list[list[Tensor]] = [[] for _ in range(n_layers)]
    finals, caches = [], {}

    def rec(layer: int) -> Any:
        def fn(a: Tensor) -> Tensor:
            pieces[layer].append(a)
            return a
        return fn

    with view.sites.edited({("resid_pre", layer): rec(layer) for layer in range(n_layers)}):
        for a, b in zip(cuts[:-1], cuts[1:]):
            caches[a] = copy.deepcopy(cache)
            pos = torch.arange(a, b, device=dev)[None]
            finals.append(view.hidden(torch.tensor([list(ids[a:b])], device=dev), cache, position_ids=pos))
    h = torch.cat(finals, 1)
    idx = AnswerIndex.build([(ids, prompt_len)], dev)
    lp, _ = answer_logprobs(view.logits(idx.gather(h)), idx.targets)
    return CleanRun([torch.cat(x, 1) for x in pieces], dict(zip(idx.cols.tolist(), lp.tolist())), caches)


def _record(view: HFBackend, ids: Sequence[int], sites: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Tensor]:
    """The activations at ``sites`` ((kind, layer), HF module sites) of one clean run of ``ids``."""
    got: dict[tuple[str, int], Tensor] = {}

    def rec(site: tuple[str, int]) -> Any:
        def fn(a: Tensor) -> Tensor:
            got[site] = a.clone()
            return a
        return fn

    with view.sites.edited({s: rec(s) for s in sites}):
        view.hidden(torch.tensor([list(ids)], device=view.device), view.new_cache())
    return got


def _suffix_lps(view: HFBackend, clean: CleanRun, tp: TokenizedProbe, layer: int, start: int,
                resid: Tensor, edits: dict) -> list[float]:
    """Per batch row, the answer's mean log-prob when layers >= ``layer`` run positions >= ``start`` from
    ``resid`` (rows of the residual entering ``layer`` there) under ``edits``; earlier columns are clean."""
    n, width = resid.shape[0], resid.shape[1]
    pos = torch.arange(start, start + width, device=resid.device)[None].expand(n, -1)
    h = view.hidden_from(layer, resid, expand_cache(clean.caches[start], n), pos, edits)
    cols = [c for c in sorted(clean.lp_col) if c >= start]
    before = sum(v for c, v in clean.lp_col.items() if c < start)
    targets = torch.tensor([tp.ids[c + 1] for c in cols], device=h.device)
    lp, _ = answer_logprobs(view.logits(h[:, [c - start for c in cols]].flatten(0, 1)),
                            targets.repeat(n))
    return ((lp.view(n, len(cols)).sum(1) + before) / tp.n_answer).tolist()


def patch_fast(
    base: Subject,
    unlearned: Subject,
    tp: TokenizedProbe,
    kinds: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    direction: str = "base->unlearned",
    chunk: int = CHUNK,
    heads: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The tables of :func:`patch_positions` and :func:`patch_heads`, computed from the target's clean run
    (method ``exact``); None when a subject cannot take the fast path (then :func:`patch` runs ``exact_full``).

    Positions are cut into chunks of ``chunk``; a chunk starting at q shares the clean cache of positions < q,
    and its row for (kind, l, p) runs layers >= l at positions >= q from the clean residual entering l, with
    position p's ``resid_pre`` replaced (or its ``attn_out`` / ``mlp_out`` replaced inside layer l). Heads: row h
    runs layers >= l at every position, with head h's ``z`` replaced at every position."""
    layers, positions = _grid(base, tp, kinds, layers, positions)
    ends = _view_endpoints(base, unlearned, tp, direction)
    if ends is None:
        return None
    src, tgt, lp_tgt, gap = ends
    ordered = sorted(set(positions))
    groups = [ordered[i : i + chunk] for i in range(0, len(ordered), chunk)]
    clean = clean_run(tgt, tp.ids, tp.prompt_len, [g[0] for g in groups] if kinds else [])
    sites = [(k, layer) for k in kinds for layer in layers] + ([("z", layer) for layer in layers] if heads else [])
    act = _record(src, tp.ids, sites)
    found: dict[tuple[str, int, int], float] = {}
    for layer in layers if kinds else []:
        for g in groups:
            q = g[0]
            cells = [(k, p) for p in g for k in kinds]
            resid = clean.resid[layer][:, q:].repeat(len(cells), 1, 1)
            rows_of: dict[str, list[tuple[int, int]]] = {}
            for r, (k, p) in enumerate(cells):
                if k == "resid_pre":
                    resid[r, p - q] = act[(k, layer)][0, p]
                else:
                    rows_of.setdefault(k, []).append((r, p))
            edits = {(k, layer): _row_patch(act[(k, layer)][0], rp, q) for k, rp in rows_of.items()}
            for (k, p), lp in zip(cells, _suffix_lps(tgt, clean, tp, layer, q, resid, edits)):
                found[(k, layer, p)] = lp
    rows = [{"probe_id": tp.probe.id, "direction": direction, "kind": k, "layer": layer, "position": p,
             "token": tp.tokens[p], "lp": found[(k, layer, p)],
             "restoration": restoration_of(found[(k, layer, p)], lp_tgt, gap)}
            for k in kinds for layer in layers for p in positions]
    head_rows = []
    n_heads = tgt.sites.n_heads
    for layer in layers if heads else []:
        z = act[("z", layer)][0]  # [pos, head, d_head]

        def heads_fn(a: Tensor, z: Tensor = z) -> Tensor:
            a = a.clone()
            for h in range(a.shape[0]):
                a[h, :, h] = z[:, h]
            return a

        resid = clean.resid[layer].repeat(n_heads, 1, 1)
        lps = _suffix_lps(tgt, clean, tp, layer, 0, resid, {("z", layer): heads_fn})
        head_rows += [{"probe_id": tp.probe.id, "direction": direction, "layer": layer, "head": h, "lp": lp,
                       "restoration": restoration_of(lp, lp_tgt, gap)} for h, lp in enumerate(lps)]
    return pd.DataFrame(rows), pd.DataFrame(head_rows)


def _row_patch(src: Tensor, rows: Sequence[tuple[int, int]], start: int) -> Any:
    """Site edit: batch row r takes the source activation of position p (``src[p]``), at column p - start."""

    def fn(a: Tensor) -> Tensor:
        a = a.clone()
        for r, p in rows:
            a[r, p - start] = src[p].to(a.dtype)
        return a

    return fn


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
