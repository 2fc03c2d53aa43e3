"""Exact patching and AtP* on the plain HF view over the subjects' own weights (the fast paths of
:mod:`unpact_mech.patching`, which dispatches to them).

* :func:`patch_fast`: a patch at (layer l, position p) changes nothing below l and nothing before p, so a cell
  takes the target's clean residual entering l and the clean KV cache before its chunk of positions, and
  computes only layers >= l there (:meth:`~unpact_mech.model.backends.hf.HFBackend.hidden_from`).
* :func:`atp_star`: attribution patching with the QK fix and GradDrop (Kramár et al. 2024).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from unpact_mech.core.errors import UnpactError
from unpact_mech.model.backends import fast_path
from unpact_mech.model.backends.hf import HFBackend, expand_cache
from unpact_mech.model.backends.kernel import AnswerIndex, answer_logprobs
from unpact_mech.model.subject import Subject, check_same_tokenizer
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import score_sequences

DIRECTIONS = ("base->unlearned", "unlearned->base")
CHUNK = 4  # positions per batch of the fast exact path: rows recompute at most CHUNK - 1 clean positions
KINDS = ("resid_pre", "attn_out", "mlp_out")  # per-(layer, position) sites; heads are ``z`` sites


def restoration_of(lp: float, lp_target: float, gap: float) -> float:
    """(LP_patched - LP_target) / (LP_source - LP_target); NaN when the two models score the answer alike
    (gap 0: nothing to restore)."""
    return (lp - lp_target) / gap if gap != 0 else float("nan")


def position_row(tp: TokenizedProbe, direction: str, kind: str, layer: int, p: int, lp: float, lp_target: float,
                 gap: float, **extra: float) -> dict[str, Any]:
    """One row of a per-(kind, layer, position) patching table (every method writes this schema)."""
    return {"probe_id": tp.probe.id, "direction": direction, "kind": kind, "layer": layer, "position": p,
            "token": tp.tokens[p], "lp": lp, "restoration": restoration_of(lp, lp_target, gap), **extra}


def head_row(tp: TokenizedProbe, direction: str, layer: int, head: int, lp: float, lp_target: float, gap: float,
             **extra: float) -> dict[str, Any]:
    """One row of a per-(layer, head) patching table."""
    return {"probe_id": tp.probe.id, "direction": direction, "layer": layer, "head": head, "lp": lp,
            "restoration": restoration_of(lp, lp_target, gap), **extra}


def _grid(base: Subject, tp: TokenizedProbe, kinds: Sequence[str], layers: Sequence[int] | None,
          positions: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(layers, positions) of a patching map: all layers, and the question's first token onwards, by default."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UnpactError(f"unknown patch kind(s) {unknown}: use {sorted(KINDS)}")
    n_layers, n_pos = base.n_layers, len(tp.ids) - 1  # the last token predicts nothing
    layers = list(range(n_layers)) if layers is None else list(layers)
    positions = list(range(min(tp.attributable), n_pos)) if positions is None else list(positions)
    bad_l = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n_layers]
    bad_p = [x for x in positions if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < n_pos]
    if bad_l or bad_p or not layers or not positions:
        raise UnpactError(f"probe '{tp.probe.id}': patching needs layers in 0..{n_layers - 1} and positions in "
                          f"0..{n_pos - 1}, got layers {bad_l or layers[:0] or 'none'} and positions "
                          f"{bad_p or positions[:0] or 'none'}")
    return layers, positions


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
                head_rows.append(head_row(tp, direction, layer, h, lp_tgt + eff, lp_tgt, gap, graddrop=sc))
            continue
        for p, eff, sc in zip(positions, plain[site].tolist(), score.tolist()):
            rows.append(position_row(tp, direction, kind, layer, p, lp_tgt + eff, lp_tgt, gap, graddrop=sc))
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
    rows = [position_row(tp, direction, k, layer, p, found[(k, layer, p)], lp_tgt, gap)
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
        head_rows += [head_row(tp, direction, layer, h, lp, lp_tgt, gap) for h, lp in enumerate(lps)]
    return pd.DataFrame(rows), pd.DataFrame(head_rows)


def _row_patch(src: Tensor, rows: Sequence[tuple[int, int]], start: int) -> Any:
    """Site edit: batch row r takes the source activation of position p (``src[p]``), at column p - start."""

    def fn(a: Tensor) -> Tensor:
        a = a.clone()
        for r, p in rows:
            a[r, p - start] = src[p].to(a.dtype)
        return a

    return fn
