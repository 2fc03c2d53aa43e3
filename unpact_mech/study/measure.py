"""The study's findings stage: unlearn (cached), then the three findings per method on the shared base Analysis,
under both correctness criteria, with the recovery controls, localisation, patching and the frontier."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.analysis.compare import compare
from unpact_mech.analysis.localise import localise
from unpact_mech.core.stats import bootstrap_mean, rate_columns
from unpact_mech.evals.criteria import CRITERIA, choice_table, criteria_for, generation_table
from unpact_mech.evals.metrics import accuracy
from unpact_mech.findings import destruction, function_word_penalisation, recovery
from unpact_mech.model import loading as models
from unpact_mech.model.loading import data_hash, read_provenance
from unpact_mech.patching import patch_positions
from unpact_mech.probes.keytokens import KeyTokenParams, select_keytokens
from unpact_mech.routes.frontier import frontier_point
from unpact_mech.runtime.pipeline import announce, make_stamp, stage
from unpact_mech.runtime.results import RESULT_FILE, MethodResult
from unpact_mech.scoring import probe_table
from unpact_mech.study.base import LazyBase
from unpact_mech.study.settings import probe_key
from unpact_mech.study.unlearn import checkpoint_stamp, unlearn_stage

CODE = ("unpact_mech.study.measure",)


def findings_stamp(lazy: LazyBase, method: str, data: dict[str, list], steps: int | None, target: float,
                   patch: bool, params: KeyTokenParams) -> dict[str, Any]:
    """What determines a method's findings: its checkpoint's stamp, the data, the KeyToken parameters, whether it
    patches, the budget and this stage's code."""
    return make_stamp(CODE, checkpoint=checkpoint_stamp(lazy, method, data["forget"], data["retain"], steps, target),
                      params=asdict(params), data={k: data_hash([probe_key(p) for p in v]) for k, v in data.items()},
                      patch=patch, budget=asdict(lazy.budget), factors=lazy.factors)


def strip_choices(cmp_f: Any, cmp_r: Any) -> list[tuple[Any, int, str]]:
    """The probes a method's token strips show, chosen from its own results: the forget probes whose LP fell
    most and least, and the retain probe whose LP fell most ((comparison, index, why) each)."""
    out: list[tuple[Any, int, str]] = []
    for cmp, picks in ((cmp_f, (("largest", False), ("smallest", True))), (cmp_r, (("largest", False),))):
        drop = -cmp.per_probe["lp_change"].reset_index(drop=True)
        if drop.empty:
            continue
        for word, low in picks:
            i = int(drop.idxmin() if low else drop.idxmax())
            why = f"{word} LP drop among {len(drop)} {cmp.base[i].tprobe.probe.split} probes"
            if all(j != i or c is not cmp for c, j, _ in out):
                out.append((cmp, i, why))
    return out


def token_example(cmp: Any, i: int, why: str, params: KeyTokenParams) -> dict[str, Any]:
    """One token strip: probe i's attributable tokens with base and unlearned leave-one-out contributions."""
    rb, ru = cmp.base[i], cmp.unlearned[i]
    tp = rb.tprobe
    keys = {rb.positions[j] for j in select_keytokens(rb.contributions, params)}
    b = [float("nan")] * tp.prompt_len
    u = [float("nan")] * tp.prompt_len
    for pos, cb, cu in zip(rb.positions, rb.contributions.tolist(), ru.contributions.tolist()):
        b[pos], u[pos] = cb, cu
    lo = min(tp.attributable)
    pp = cmp.per_probe.iloc[i]
    return {"id": tp.probe.id, "split": tp.probe.split, "why": why, "prompt": tp.probe.prompt,
            "answer": tp.probe.answer, "lp_base": float(pp.lp_base), "lp_unlearned": float(pp.lp_unlearned),
            "tokens": list(tp.tokens[lo : tp.prompt_len]), "base": b[lo:], "unlearned": u[lo:],
            "keys": [k - lo for k in keys]}


def method_stage(lazy: LazyBase, method: str, data: dict[str, list], out: Path, steps: int | None, target: float,
                 patch: bool, params: KeyTokenParams, on_change: str = "recompute") -> dict[str, Any]:
    """Unlearn with one method (cached) and measure the three findings under the KeyToken ``params``; results
    cached as JSON and reused while their stamp (:func:`findings_stamp`) is unchanged."""
    res_file = out / method / RESULT_FILE
    return stage(f"findings {method}", out / method / "result.stamp.json",
                 findings_stamp(lazy, method, data, steps, target, patch, params), res_file.exists,
                 lambda: json.loads(res_file.read_text()),
                 lambda: _measure(lazy, method, data, out, steps, target, patch, params, on_change), on_change)


def _measure(lazy: LazyBase, method: str, data: dict[str, list], out: Path, steps: int | None, target: float,
             patch: bool, params: Any, on_change: str) -> dict[str, Any]:
    """The body of :func:`method_stage`: unlearn (cached), then the three findings on the shared Analysis, under
    both correctness criteria, with the recovery controls and the frontier."""
    base = lazy.get()
    forget, retain, general = data["forget"], data["retain"], data["general"]
    an = lazy.analysis(forget + retain + general, params)  # the base side, once for every method
    fr = lazy.budget.frontier

    def point(name: str, subject: Any, strength: float) -> list[dict]:
        return frontier_point(an, subject, forget, retain + general, strength, fr.factors, fr.modes, fr.n_draws)

    ckpt, points = unlearn_stage(lazy, method, forget, retain, out, steps, target, on_change=on_change,
                                 frontier=point)
    t0 = time.perf_counter()
    prov = read_provenance(ckpt)
    unl = models.load_like(str(ckpt), base).memoize()
    f_tps = an.probes.select(forget)
    announce(f"{method}: finding 1 (leave-one-out of the unlearned model, KeyTokens, focus)")
    f_tab = probe_table(unl, f_tps)
    f_gen = generation_table(unl, f_tps)
    cmp_f = compare(an, unl, forget)
    announce(f"{method}: finding 2 (emphasis under both criteria, with random and function-word controls)")
    f_crits, d_crits = criteria_for(forget), criteria_for(retain + general)  # + multiple_choice on WMDP-like probes
    b = lazy.budget
    rec = recovery(an, unl, forget, lazy.factors, n_draws=b.n_draws, gen_factors=b.gen_factors,
                   gen_prompt_styles=b.gen_prompt_styles, criteria=f_crits)
    announce(f"{method}: finding 3 (destructive rates, function-word penalisation), localisation")
    dest = {c: destruction(an, unl, retain + general, criterion=c) for c in d_crits}
    drates = {c: d[1] for c, d in dest.items()}
    cmp_r = compare(an, unl, retain)  # token-level finding 3 on the retain split (the demo's time budget)
    fw = function_word_penalisation(cmp_r)
    loc = localise(an, unl, forget[:4] + retain[:2])
    tables = {"keyword_focus": cmp_f.per_probe, "retain_focus": cmp_r.per_probe,
              "destruction": pd.concat([t for t, _ in dest.values()], ignore_index=True), "emphasis_sweep": rec.sweep,
              "recovery_rates": rec.rates, "recovery_control": rec.control, "eligibility": rec.eligibility,
              "forget_answers": f_tab.merge(f_gen[["probe_id", "generated", "rouge_l", "gen_correct"]], on="probe_id"),
              "function_words": fw, "frontier": pd.DataFrame(points).assign(method=method), "heads": loc.heads,
              "keytoken_route": loc.keytoken_route, "logit_lens": loc.logit_lens}
    examples = [token_example(c, i, why, params) for c, i, why in strip_choices(cmp_f, cmp_r)]
    if patch:
        tp = an.probes.get(forget[0])
        # the residual stream every third layer (attn_out / mlp_out are one call away: unpact patch)
        tables["patch_positions"] = patch_positions(base, unl, tp, ["resid_pre"], list(range(0, base.n_layers, 3)))
    rates, ctrl = rec.rates, rec.control
    fw_mean = fw.groupby("kind")["change"].mean().to_dict()
    focus: dict[str, float] = {}
    for col, name in (("focus_base", "focus_before"), ("focus_unlearned", "focus_after")):
        est, low, high = bootstrap_mean(list(cmp_f.per_probe[col].dropna()))
        focus.update({name: est, f"{name}_low": low, f"{name}_high": high})
    row: dict[str, Any] = {
        "method": method,
        "dtype": str(base.dtype).replace("torch.", ""),
        "device": str(base.device),
        "steps": prov.get("steps"),
        **({"checkpoint": lazy.given[method]} if method in lazy.given else {}),
        "stopped_at": prov.get("stopped_at"),
        "target_reached": prov.get("target_reached"),
        "tv_scale": prov.get("resolved", {}).get("tv_scale"),
        "train_s": prov.get("train_seconds"),
        **rate_columns("forget_acc", accuracy(list(f_tab.fact_top1))),
        **rate_columns("forget_acc_gen", accuracy(list(f_gen.gen_correct))),
        **(rate_columns("forget_acc_mc", accuracy(list(choice_table(unl, f_tps).correct)))
           if "multiple_choice" in f_crits else {}),
        "forget_lp_before": float(cmp_f.per_probe.lp_base.mean()),
        "forget_lp_after": float(cmp_f.per_probe.lp_unlearned.mean()),
        **focus,
        "keytoken_jaccard": cmp_f.summary["mean_keytoken_jaccard"],
        "fw_change": fw_mean.get("function word", float("nan")),
        "keytoken_change": fw_mean.get("KeyToken", float("nan")),
        "content_change": fw_mean.get("content word", float("nan")),
        "route_summary": loc.summary,
        "examples": examples,
    }
    for crit, sfx in ((c.name, c.suffix) for c in CRITERIA.values() if c.name in f_crits or c.name in d_crits):
        for s_name in ("retain", "general"):
            if s_name in drates.get(crit, {}):
                row.update(rate_columns(f"destructive_{s_name}{sfx}", drates[crit][s_name]))
        best = rates[(rates.criterion == crit) & (rates.scope == "best")]
        for _, r in best.iterrows():
            tag = {"keytokens": "", "random": "_random", "function_words": "_fw"}[r.condition]
            row.update(rate_columns(f"recovery_{r.route}{tag}{sfx}", r))
        for _, c in ctrl[(ctrl.criterion == crit) & (ctrl.scope == "best")].iterrows():
            name = f"specific_{c.route}{sfx}"
            row.update({name: c.vs_random_diff, f"{name}_low": c.vs_random_diff_low,
                        f"{name}_high": c.vs_random_diff_high, f"{name}_p": c.vs_random_p})
    row["analysis_s"] = round(time.perf_counter() - t0, 1)
    MethodResult(method, out, row).save(tables)  # the tables, then result.json
    return row
