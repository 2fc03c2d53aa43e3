"""Planted effects with known answers: can the recovery analysis find a forgetting that is recoverable by
construction, and does it leave alone one that is not?

* **Planted suppression** (recoverable): the base model's weights, with the attention scores of every query to
  the probe's base KeyTokens lowered by log(1/strength) at every layer (:func:`unpact_mech.hooks.steer_attention`
  with factor ``strength`` < 1, attached for that probe only). This is exactly the mechanism Finding 1 posits:
  the knowledge is intact, the focus on the KeyTokens is gone. Emphasis on the same tokens by factor f adds
  log(f) back, so at f = 1/strength the subject *is* the base model on that probe.
* **Planted erasure** (not recoverable): facts the base model never knew (it fails them with no hook). Emphasis
  cannot bring back what was never there; any recovery there is the analysis' false-positive rate.

For each probe the full recovery analysis runs (:func:`unpact_mech.findings.recovery`: KeyTokens, random-token
and function-word controls, each criterion; a suppressed probe only where the base answers it and the planted
subject does not, an erased one always). Per probe, K = 1 if some factor of ``route`` restores it with the
KeyTokens emphasised, R = the share of random draws that do; the summary pools the probes as the study does:
K rate with its Wilson interval, the random control's rate (:func:`unpact_mech.core.stats.draw_mean_rate`) and the
paired KeyTokens-minus-random difference (:func:`unpact_mech.core.stats.paired_difference`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from unpact_mech.analysis import Analysis
from unpact_mech.core.errors import UnpactError, check_float
from unpact_mech.core.stats import draw_mean_rate, paired_difference, wilson
from unpact_mech.evals.criteria import check_criteria
from unpact_mech.findings import recovery
from unpact_mech.hooks import applied, steer_attention
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe


def suppressed(an: Analysis, planted: Subject, probe: Probe, strength: float) -> list:
    """The planted suppression hooks for one probe: its base KeyTokens' attention scores times ``strength``."""
    tp = an.probes.get(probe)
    keys = an.keytoken_positions([tp])[0]
    return steer_attention(keys, strength, planted.n_layers)


def planted_recovery(an: Analysis, planted: Subject, recoverable: Sequence[Probe], erased: Sequence[Probe] = (),
                     strength: float = 1 / 8, factors: Sequence[float] = (2.0, 8.0), route: str = "attention",
                     n_draws: int = 2, criteria: Sequence[str] = ("teacher_forced",), seed: int = 0) -> pd.DataFrame:
    """Per probe and criterion: kind ("suppressed" or "erased"), base right, planted subject right, K and R (see
    the module docstring). ``planted`` is a second Subject over the base model's weights (not ``an.base``, whose
    answers the analysis keeps as the reference); ``erased`` probes get no hook."""
    check_float(strength, "strength", 0.0, 1.0)
    check_criteria(criteria)
    if planted is an.base:
        raise UnpactError("planted must be a second Subject of the base model (load it again), not the "
                          "analysis' base: hooks on it would change the reference answers")
    rows = []
    for kind, probes in (("suppressed", recoverable), ("erased", erased)):
        for p in probes:
            hooks = suppressed(an, planted, p, strength) if kind == "suppressed" else []
            with applied(planted, hooks):
                res = recovery(an, planted, [p], (1.0, *factors), modes=(route,), prompt_styles=(),
                               criteria=criteria, n_draws=n_draws, seed=seed, eligible_only=(kind == "suppressed"))
            for crit in criteria:
                e = res.eligibility[res.eligibility.criterion == crit].iloc[0]
                sw = res.sweep[(res.sweep.criterion == crit) & (res.sweep.route == route)]
                # restored at some factor, per draw (the rates' "best over factors"), then K and the draws' share R
                got = sw.groupby(["condition", "draw"]).correct.any()
                k = float(got["keytokens"].mean()) if "keytokens" in got else math.nan
                r = float(got["random"].mean()) if "random" in got else math.nan
                rows.append({"probe_id": p.id, "kind": kind, "criterion": crit, "strength": strength,
                             "base_correct": bool(e.base_correct), "planted_correct": bool(e.unlearned_correct),
                             "keytokens": k, "random": r})
    return pd.DataFrame(rows)


def planted_summary(per_probe: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (kind, criterion): n scored probes, the KeyToken recovery rate (Wilson), the random control's rate
    (hull interval) and the paired KeyTokens-minus-random difference with its bootstrap interval and p-value."""
    out = []
    for (kind, crit), g in per_probe.groupby(["kind", "criterion"], sort=False):
        g = g[g.keytokens.notna()]
        k, r = [float(x) for x in g.keytokens], [float(x) for x in g.random]
        kr = wilson(int(round(sum(k))), len(k))
        rr = draw_mean_rate(r, seed)
        d = paired_difference(k, r, seed)
        out.append({"kind": kind, "criterion": crit, "n": len(k), "hidden": int((~g.planted_correct).sum()),
                    "keytokens": kr.rate, "keytokens_k": kr.k, "keytokens_low": kr.low, "keytokens_high": kr.high,
                    "random": rr["rate"], "random_low": rr["low"], "random_high": rr["high"],
                    "specific": d["diff"], "specific_low": d["diff_low"], "specific_high": d["diff_high"],
                    "specific_p": d["p"]})
    return pd.DataFrame(out)


__all__ = ["planted_recovery", "planted_summary", "suppressed"]
