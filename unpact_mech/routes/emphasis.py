"""The ``emphasis`` route: the paper's FocusOnKey (:func:`unpact_mech.findings.recovery`), the best factor per
emphasis mode, against random non-KeyTokens emphasised alike on the same probes (paired)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unpact_mech.core.stats import rate_columns
from unpact_mech.findings import recovery
from unpact_mech.hooks import EMPHASIS_MODES
from unpact_mech.routes.base import RouteContext, RouteOptions, register_route


@dataclass(frozen=True)
class EmphasisOptions(RouteOptions):
    """``factors``: emphasis factors (the best is taken per mode); ``modes``: emphasis modes
    (``hooks.EMPHASIS_MODES``); ``n_draws``: random-token control draws; ``result``: a precomputed
    :class:`~unpact_mech.findings.RecoveryResult` (its ``rates`` and ``control`` tables) to reuse."""

    factors: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    modes: tuple[str, ...] = tuple(EMPHASIS_MODES)
    n_draws: int = 3
    result: Any = None


@register_route("emphasis", EmphasisOptions)
def _emphasis(ctx: RouteContext) -> list[dict[str, Any]]:
    """Best over factors per emphasis mode; control = random non-KeyTokens, paired per probe: the
    KeyToken-minus-random difference that :func:`~unpact_mech.findings.recovery` computed (its ``control`` table),
    reused, never recomputed. A precomputed :class:`~unpact_mech.findings.RecoveryResult` may be given as option
    ``result`` (its ``rates`` and ``control`` tables)."""
    o = ctx.opts("emphasis", EmphasisOptions)
    res = o.result
    if res is None:
        res = recovery(ctx.analysis, ctx.unlearned, [tp.probe for tp in ctx.forget], factors=o.factors,
                       routes=o.modes, prompt_styles=(), criteria=ctx.criteria, n_draws=o.n_draws)
    rows = []
    best = res.rates[res.rates.scope == "best"]
    control = res.control[res.control.scope == "best"].set_index(["criterion", "route"])
    for (crit, route), g in best.groupby(["criterion", "route"], sort=False):
        if crit not in ctx.route_criteria("emphasis"):
            continue
        k = g.set_index("condition")
        kt, rnd = k.loc["keytokens"], k.loc["random"]
        n = int(kt.n)
        c = control.loc[(crit, route)]
        rows.append({"route": "emphasis", "treatment": f"{route} (best factor)", "criterion": crit, "n": n,
                     **rate_columns("recovered", kt), "control_kind": "random tokens", **rate_columns("control", rnd),
                     "excess": c.vs_random_diff, "excess_low": c.vs_random_diff_low,
                     "excess_high": c.vs_random_diff_high, "base_kept": float("nan")})
    return rows
