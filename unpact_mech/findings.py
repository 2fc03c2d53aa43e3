"""The paper's findings as library calls (used by the CLI, the demo and ``analyses/``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from unpact_mech.analysis import Analysis, annotate
from unpact_mech.emphasis import ROUTES, prompt_sweep, sweep
from unpact_mech.keytokens import KeyTokenParams
from unpact_mech.metrics import destructive_rate, recovery_rate
from unpact_mech.models import Subject
from unpact_mech.probes import Probe
from unpact_mech.scoring import probe_table
from unpact_mech.tracking import prepare_comparison


def recovery(
    base: Analysis | Subject,
    unlearned: Subject,
    probes: Sequence[Probe] | None,
    factors: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    routes: Sequence[str] = ROUTES,
    prompt_styles: Sequence[str] = ("repeat", "mark", "instruct"),
    params: KeyTokenParams | None = None,
    fmt: str = "auto",
    eligible_only: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Finding 2: emphasis on the base model's KeyTokens, weights unchanged.

    Returns the per-probe sweep (route, factor, LP, fact top-1) and the recovery rate per route and factor
    (``scope="factor"``) plus ``scope="best"`` = restored at any factor > 1 of that route (factor NaN);
    rates are numbers: k, n, rate, low, high among probes the base answers and the unlearned
    model does not. The sweep runs on those eligible probes only (``eligible_only=False``: on all probes).
    ``base``: an :class:`~unpact_mech.analysis.Analysis` (its KeyTokens and scores are reused) or a Subject.
    """
    an, tps = prepare_comparison(base, unlearned, probes, params, fmt)
    b = an.scores(tps)
    u = probe_table(unlearned, tps).set_index("probe_id")
    if eligible_only:
        tps = [tp for tp in tps if b.fact_top1[tp.probe.id] and not u.fact_top1[tp.probe.id]]
    pos = an.keytoken_positions(tps)
    sw = pd.concat([sweep(unlearned, tps, pos, factors, routes), prompt_sweep(unlearned, tps, pos, prompt_styles)],
                   ignore_index=True)
    if sw.empty:
        sw = pd.DataFrame(columns=["probe_id", "model", "route", "factor", "lp", "fact_top1"])
    sw["base_correct"] = sw.probe_id.map(b.fact_top1)
    sw["unlearned_correct"] = sw.probe_id.map(u.fact_top1)
    ids = list(b.index)

    def rate(sel: pd.DataFrame) -> dict[str, Any]:
        got = sel.groupby("probe_id").fact_top1.any() if len(sel) else {}
        return recovery_rate([b.fact_top1[i] for i in ids], [u.fact_top1[i] for i in ids],
                             [bool(got.get(i, False)) for i in ids]).to_dict()

    combos = [(r, float(f)) for r in routes for f in factors] + [(f"prompt:{st}", float("nan")) for st in prompt_styles]
    rows = []
    for route, factor in combos:
        sel = sw[(sw.route == route) & ((sw.factor == factor) if factor == factor else sw.factor.isna())]
        rows.append({"route": route, "scope": "factor", "factor": factor, **rate(sel)})
    for route in [*routes, *(f"prompt:{st}" for st in prompt_styles)]:  # restored at any factor > 1
        sel = sw[(sw.route == route) & (sw.factor.isna() | (sw.factor > 1))]
        rows.append({"route": route, "scope": "best", "factor": float("nan"), **rate(sel)})
    return an.annotate(sw), an.annotate(pd.DataFrame(rows))


def destruction(base: Analysis | Subject, unlearned: Subject, probes: Sequence[Probe] | None = None,
                fmt: str = "auto") -> tuple[pd.DataFrame, dict]:
    """Finding 3 (rate): per split, the share of probes the base answers that the unlearned model fails.

    ``base``: an :class:`~unpact_mech.analysis.Analysis` (its base scores are reused) or a Subject.
    """
    an, tps = prepare_comparison(base, unlearned, probes, None, fmt)
    b, u = an.scores(tps).reset_index(), probe_table(unlearned, tps)
    df = b[["probe_id", "split", "lp", "fact_top1"]].merge(
        u[["probe_id", "lp", "fact_top1"]], on="probe_id", suffixes=("_base", "_unlearned"))
    rates = {split: destructive_rate(list(g.fact_top1_base), list(g.fact_top1_unlearned))
             for split, g in df.groupby("split")}
    return df, rates


FUNCTION_WORDS = frozenset(
    "a an the of in on at to for by with from and or but is are was were be been it its this that these those "
    "what which who whom whose when where why how do does did ? . , ! ; :".split()
)


def function_word_penalisation(comparison: Any, params: KeyTokenParams | None = None) -> pd.DataFrame:
    """Finding 3 (mechanism): contribution change of function words vs base KeyTokens vs other tokens.

    ``comparison`` is a :class:`~unpact_mech.tracking.Comparison` on retain/general probes; its KeyToken
    parameters are used unless ``params`` is given.
    """
    from unpact_mech.keytokens import select_keytokens

    params = params or comparison.params
    rows = []
    for rb, ru in zip(comparison.base, comparison.unlearned):
        keys = set(select_keytokens(rb.contributions, params))
        for i, pos in enumerate(rb.positions):
            tok = rb.tprobe.tokens[pos].strip().lower()
            kind = "KeyToken" if i in keys else ("function word" if tok in FUNCTION_WORDS else "other")
            rows.append({"probe_id": rb.tprobe.probe.id, "split": rb.tprobe.probe.split, "token": tok, "kind": kind,
                         "base": float(rb.contributions[i]), "unlearned": float(ru.contributions[i])})
    df = pd.DataFrame(rows)
    df["change"] = df["unlearned"] - df["base"]
    return annotate(df, params)
