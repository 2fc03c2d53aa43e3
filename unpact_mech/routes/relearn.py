"""The ``relearn`` route: k full-batch AdamW steps of answer-token NLL on retain facts (disjoint from the forget
set), forget accuracy at each k; controls: facts neither model knew, and collateral damage (general facts the
unlearned model lost without being asked to)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unpact_mech.evals.criteria import criterion
from unpact_mech.model.backends.hf import HFBackend
from unpact_mech.model.subject import wrap
from unpact_mech.routes.base import RouteContext, RouteOptions, flags, register_route, route_row
from unpact_mech.unlearning import fit


@dataclass(frozen=True)
class RelearnOptions(RouteOptions):
    """``steps``: the k at which forget accuracy is read; ``lr``: AdamW's rate; ``seed``; ``progress``: a bar."""

    steps: tuple[int, ...] = (1, 2, 4)
    lr: float = 1e-5
    seed: int = 0
    progress: bool = False


@register_route("relearn", RelearnOptions)
def _relearn(ctx: RouteContext) -> list[dict[str, Any]]:
    """k full-batch steps of mean answer-token NLL on the retain probes through the one trainer
    (:func:`unpact_mech.unlearning.fit`: AdamW, gradient clipping, NaN guards), evaluated at each k in ``steps``."""
    o = ctx.opts("relearn", RelearnOptions)
    steps, lr = sorted(o.steps), float(o.lr)
    rows: list[dict[str, Any]] = []

    def evaluate(k: int, model: Any) -> None:
        if k not in steps:
            return
        # the model being trained, scored as it is now (no copy; eval mode, no grad)
        snap = wrap(model, ctx.unlearned.tokenizer, f"{ctx.unlearned.name}+relearn{k}", ctx.unlearned.source,
                    HFBackend(model)).memoize()
        for crit in ctx.route_criteria("relearn"):
            elig, unk = ctx.eligible(crit)
            treatment = f"{k} step{'s' * (k != 1)} on retain (lr {lr:g})"
            recovered = flags(snap, elig, crit)
            rows.append(route_row("relearn", treatment, crit, recovered, "unknown facts", flags(snap, unk, crit)))
            if ctx.collateral and criterion(crit).applies([tp.probe for tp in ctx.collateral]):
                rows.append(route_row("relearn", treatment, crit, recovered, "collateral damage",
                                      flags(snap, ctx.collateral_lost(crit), crit)))

    fit(ctx.unlearned, ctx.retain, steps=max(steps), lr=lr, full_batch=True, check_every=1,
        seed=int(o.seed), fmt=ctx.analysis.probes.fmt, on_snapshot=evaluate,
        progress=o.progress)
    return rows
