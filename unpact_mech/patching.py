"""Activation patching between a base and an unlearned model: which layer, position or head restores the answer.

restoration = (LP_patched - LP_target) / (LP_source - LP_target), where activations of the *source* run are
patched into the *target* model (direction ``base->unlearned``: source = base, target = unlearned; the reverse
direction measures how much one site of the unlearned model damages the base). Per (layer, position) sites are
batched: row r of a batch patches position r only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from unpact_mech.errors import UnpactError
from unpact_mech.hooks import applied
from unpact_mech.models import Subject
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import score_sequences
from unpact_mech.tracking import check_same_tokenizer

DIRECTIONS = ("base->unlearned", "unlearned->base")
KINDS = {"resid_pre": "blocks.{l}.hook_resid_pre", "attn_out": "blocks.{l}.hook_attn_out", "mlp_out": "blocks.{l}.hook_mlp_out"}


def _rowwise_patch(src: torch.Tensor, positions: Sequence[int]) -> Any:
    """Hook: in row r, overwrite position positions[r] with the source activation there."""

    def fn(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        act = act.clone()
        for r, p in enumerate(positions[: act.shape[0]]):
            act[r, p] = src[0, p].to(act.dtype)
        return act

    return fn


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
) -> pd.DataFrame:
    """Restoration per (kind, layer, position). Positions default to the question's first token onwards."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UnpactError(f"unknown patch kind(s) {unknown}: use {sorted(KINDS)}")
    layers = list(range(base.cfg.n_layers)) if layers is None else list(layers)
    positions = list(range(min(tp.attributable), len(tp.ids) - 1)) if positions is None else list(positions)
    names = {KINDS[k].format(l=layer) for k in kinds for layer in layers}
    target, cache, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, names)
    gap = lp_src - lp_tgt
    rows = []
    for kind in kinds:
        for layer in layers:
            name = KINDS[kind].format(l=layer)
            lps = _lp_batch(target, tp, len(positions), [(name, _rowwise_patch(cache[name], positions))])
            for p, lp in zip(positions, lps.tolist()):
                rows.append({"probe_id": tp.probe.id, "direction": direction, "kind": kind, "layer": layer,
                             "position": p, "token": tp.tokens[p], "lp": lp,
                             "restoration": (lp - lp_tgt) / gap if gap != 0 else float("nan")})
    return pd.DataFrame(rows)


def patch_heads(
    base: Subject, unlearned: Subject, tp: TokenizedProbe, layers: Sequence[int] | None = None, direction: str = "base->unlearned"
) -> pd.DataFrame:
    """Restoration per (layer, head): the head's ``hook_z`` at every position patched from the source run."""
    layers = list(range(base.cfg.n_layers)) if layers is None else list(layers)
    n_heads = base.cfg.n_heads
    names = {f"blocks.{layer}.attn.hook_z" for layer in layers}
    target, cache, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, names)
    gap = lp_src - lp_tgt
    rows = []
    for layer in layers:
        src = cache[f"blocks.{layer}.attn.hook_z"]

        def fn(z: torch.Tensor, hook: Any = None, src: torch.Tensor = src) -> torch.Tensor:
            z = z.clone()
            for h in range(min(n_heads, z.shape[0])):
                z[h, :, h] = src[0, :, h].to(z.dtype)
            return z

        lps = _lp_batch(target, tp, n_heads, [(f"blocks.{layer}.attn.hook_z", fn)])
        for h, lp in enumerate(lps.tolist()):
            rows.append({"probe_id": tp.probe.id, "direction": direction, "layer": layer, "head": h, "lp": lp,
                         "restoration": (lp - lp_tgt) / gap if gap != 0 else float("nan")})
    return pd.DataFrame(rows)


def restoration(base: Subject, unlearned: Subject, tp: TokenizedProbe, hooks: list, direction: str = "base->unlearned") -> float:
    """Restoration of one arbitrary set of patch hooks applied to the target model."""
    target, _, lp_src, lp_tgt = _endpoints(base, unlearned, tp, direction, set())
    lp = float(_lp_batch(target, tp, 1, hooks)[0])
    return (lp - lp_tgt) / (lp_src - lp_tgt)
