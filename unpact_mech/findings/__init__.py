"""Findings 2 and 3 as library calls: recovery by emphasis with its controls, the destructive rate, and the
function-word penalisation (finding 1 is ``unpact_mech.analysis.compare``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from unpact_mech.analysis import Analysis, annotate
from unpact_mech.analysis.compare import prepare_comparison
from unpact_mech.analysis.emphasis import emphasis_sweep
from unpact_mech.core.display import frame_html, nb_html
from unpact_mech.core.errors import (
    UnpactError,
    check_choices,
    check_finite_factor,
    check_int,
    check_unique,
    renamed,
)
from unpact_mech.core.stats import draw_mean_rate, paired_difference, wilson
from unpact_mech.evals.criteria import check_criteria, universal_criteria
from unpact_mech.evals.criteria import criterion as get_criterion
from unpact_mech.evals.metrics import destructive_rate
from unpact_mech.hooks import EMPHASIS_MODES
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, TokenizedProbe
from unpact_mech.probes.keytokens import KeyTokenParams, select_keytokens
from unpact_mech.probes.words import function_word_positions, word_kind

CRITERIA: tuple[str, ...] = universal_criteria()  # the registered criteria that judge any probe, by name
CONDITIONS: tuple[str, ...] = ("keytokens", "random", "function_words")


@dataclass
class RecoveryResult:
    """Finding 2 with its controls, under each correctness criterion.

    * ``sweep``: one row per (criterion, condition, draw, probe, route, factor) among eligible probes:
      ``correct`` (fact top-1 for ``teacher_forced``; :func:`~unpact_mech.evals.metrics.generated_correct` of the
      greedy answer for ``generation``) and ``lp`` (teacher-forced only).
    * ``rates``: restored / eligible per (criterion, condition, route, scope, factor); ``scope="best"`` counts a
      probe restored at any factor > 1 of the route, for every condition alike. KeyTokens and function words:
      k of n with a Wilson interval; random: the mean over draws of each probe's restored share (``k`` is
      fractional), with a bootstrap interval over probes.
    * ``control``: the KeyToken-specific recovery, paired per probe: KeyTokens minus random (and minus
      function words), mean difference with a 95% paired bootstrap interval and a sign-flip p-value.
    * ``eligibility``: per probe, base and unlearned correctness under each criterion.
    """

    sweep: pd.DataFrame
    rates: pd.DataFrame
    control: pd.DataFrame
    eligibility: pd.DataFrame

    def _repr_html_(self) -> str:
        """Notebook display: best-over-factors recovery per condition, and the KeyToken-specific difference."""
        best = self.rates[self.rates.scope == "best"][["criterion", "route", "condition", "k", "n", "rate", "low",
                                                        "high"]]
        ctrl = self.control[self.control.scope == "best"][["criterion", "route", "vs_random_diff", "vs_random_diff_low",
                                                            "vs_random_diff_high", "vs_random_p"]]
        return nb_html("<div class='hd'><b>Recovery</b> (best over factors; eligible = base right, unlearned wrong)"
                       "</div>", frame_html(best), "<div class='hd'>KeyTokens minus random tokens, paired per probe "
                       "(95% bootstrap interval, sign-flip p)</div>", frame_html(ctrl))


def control_positions(tp: TokenizedProbe, keys: Sequence[int], n_draws: int, seed: int = 0) -> dict[str, list[list[int]]]:
    """Positions to emphasise per condition: the KeyTokens; ``n_draws`` seeded draws of as many attributable
    non-KeyTokens (all of them when fewer remain); the prompt's function words (``unpact_mech.probes.words``) that are
    not KeyTokens. A probe without KeyTokens gets no controls either."""
    keys = sorted(keys)
    pool = [p for p in tp.attributable if p not in set(keys)]
    draws = [sorted(random.Random(f"{seed}:{d}:{tp.probe.id}").sample(pool, min(len(keys), len(pool))))
             for d in range(n_draws)]
    fw = [p for p in function_word_positions(tp.words) if p not in set(keys)]
    return {"keytokens": [keys], "random": draws if keys else [[] for _ in range(n_draws)],
            "function_words": [fw if keys else []]}


def judge(who: Analysis | Subject, tps: Sequence[TokenizedProbe], name: str) -> pd.DataFrame:
    """Plain-model correctness per probe under the registered criterion ``name`` (indexed by probe id, in ``tps``
    order): ``correct`` and the criterion's extra columns. An Analysis answers for its base model from its cached
    teacher-forced scores; a memoizing subject reuses its own."""
    crit = get_criterion(name)
    if isinstance(who, Analysis) and crit.extra == "lp":
        return who.scores(tps).rename(columns={"fact_top1": "correct"})
    subject = who.base if isinstance(who, Analysis) else who
    return crit.table(subject, tps).set_index("probe_id")


def recovery(
    base: Analysis | Subject,
    unlearned: Subject,
    probes: Sequence[Probe] | None = None,
    factors: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    modes: Sequence[str] | None = None,
    prompt_styles: Sequence[str] = ("repeat", "mark", "instruct"),
    params: KeyTokenParams | None = None,
    fmt: str = "auto",
    eligible_only: bool = True,
    criteria: Sequence[str] = CRITERIA,
    n_draws: int = 3,
    seed: int = 0,
    gen_factors: Sequence[float] | None = None,
    gen_prompt_styles: Sequence[str] | None = None,
    routes: Sequence[str] | None = None,
) -> RecoveryResult:
    """Finding 2: emphasis on the base model's KeyTokens, weights unchanged, against two controls.

    For every probe the base model answers and the unlearned one does not (per criterion), each route and
    factor emphasises (a) the KeyTokens, (b) ``n_draws`` random non-KeyToken draws of the same size and (c) the
    function words (:func:`control_positions`); prompt edits name the same tokens. ``gen_factors`` limits the
    factors scored by a costly criterion (generation: one forward per generated token; default: all) and
    ``gen_prompt_styles`` its prompt edits (default: all).
    ``base``: an :class:`~unpact_mech.analysis.Analysis` (its KeyTokens and scores are reused) or a Subject.
    ``modes``: the emphasis modes (default every one of ``hooks.EMPHASIS_MODES``; ``routes=`` is its old name);
    the tables name the mode in their ``route`` column.
    """
    routes = list(renamed(modes, routes, "modes", "routes", EMPHASIS_MODES))
    check_criteria(criteria, probes)  # a multiple-choice criterion needs probes with choices
    factors = check_unique([check_finite_factor(f, "each factor") for f in factors], "factors")
    check_int(n_draws, "n_draws", 1)
    if routes:
        check_choices(list(routes), EMPHASIS_MODES, "modes")
    emph = [f for f in factors if f != 1.0]
    if (routes or prompt_styles) and not emph:
        raise UnpactError(f"factors {list(factors)} hold no emphasis (1 is the unemphasised baseline, always scored); "
                          "add a factor other than 1")
    an, tps = prepare_comparison(base, unlearned, probes, params, fmt)
    keys = dict(zip([tp.probe.id for tp in tps], an.keytoken_positions(tps)))
    gen_f = emph if gen_factors is None else [float(f) for f in gen_factors if f != 1.0]
    elig_rows, sweep_rows = [], []
    for crit in criteria:
        b_tab, u_tab = judge(an, tps, crit), judge(unlearned, tps, crit)
        b_ok, u_ok = list(b_tab.correct), list(u_tab.correct)
        extra = get_criterion(crit).extra  # the criterion's evidence (LP, or the generated answer) travels along
        elig_rows += [{"probe_id": tp.probe.id, "criterion": crit, "base_correct": b, "unlearned_correct": u,
                       f"{extra}_base": eb, f"{extra}_unlearned": eu}
                      for tp, b, u, eb, eu in zip(tps, b_ok, u_ok, b_tab[extra], u_tab[extra])]
        todo = [tp for tp, b, u in zip(tps, b_ok, u_ok) if (b and not u) or not eligible_only]
        if not todo:
            continue
        ctrl = {tp.probe.id: control_positions(tp, keys[tp.probe.id], n_draws, seed) for tp in todo}
        # every (probe, condition, draw) is one row of the same batch, per route and factor
        units = [(tp, cond, draw, pos) for tp in todo for cond in CONDITIONS
                 for draw, pos in enumerate(ctrl[tp.probe.id][cond])]
        cheap = not get_criterion(crit).costly
        styles = prompt_styles if cheap or gen_prompt_styles is None else gen_prompt_styles
        sweep_rows += emphasis_sweep(unlearned, units, emph if cheap else gen_f, routes, styles, crit)
    sw = pd.DataFrame(sweep_rows)
    if sw.empty:
        sw = pd.DataFrame(columns=["criterion", "condition", "draw", "probe_id", "model", "route", "factor",
                                   "correct", "lp"])
    elig = pd.DataFrame(elig_rows)
    rate_rows, ctrl_rows = [], []
    for crit in criteria:
        cheap = not get_criterion(crit).costly
        styles = prompt_styles if cheap or gen_prompt_styles is None else gen_prompt_styles
        route_names = [*routes, *(f"prompt:{st}" for st in styles)]
        e = elig[(elig.criterion == crit) & elig.base_correct & ~elig.unlearned_correct]
        ids = list(e.probe_id)
        s_c = sw[sw.criterion == crit]
        f_list = emph if cheap else gen_f
        combos = [(r, f) for r in routes for f in f_list] + [(r, float("nan")) for r in route_names[len(routes):]]
        scopes = [("factor", r, f) for r, f in combos] + [("best", r, float("nan")) for r in route_names]
        for scope, route, factor in scopes:
            sel = s_c[s_c.route == route]
            if scope == "factor" and factor == factor:
                sel = sel[sel.factor == factor]
            per: dict[str, list[float]] = {}
            for cond in CONDITIONS:
                got = sel[sel.condition == cond].groupby(["probe_id", "draw"]).correct.any()
                share = got.groupby(level="probe_id").mean() if len(got) else pd.Series(dtype=float)
                per[cond] = [float(share.get(i, 0.0)) for i in ids]
                if cond == "random":
                    r = draw_mean_rate(per[cond], seed)
                else:
                    r = wilson(int(round(sum(per[cond]))), len(ids)).to_dict()
                rate_rows.append({"criterion": crit, "condition": cond, "route": route, "scope": scope,
                                  "factor": factor, **r})
            ctrl_rows.append({"criterion": crit, "route": route, "scope": scope, "factor": factor,
                              **{f"{c}_rate": (sum(per[c]) / len(ids) if ids else float("nan")) for c in CONDITIONS},
                              **{f"vs_random_{k}": v for k, v in paired_difference(per["keytokens"], per["random"],
                                                                                    seed).items()},
                              **{f"vs_fw_{k}": v for k, v in paired_difference(per["keytokens"],
                                                                               per["function_words"], seed).items()}})
    return RecoveryResult(an.annotate(sw), an.annotate(pd.DataFrame(rate_rows)), an.annotate(pd.DataFrame(ctrl_rows)),
                          elig)


def destruction(base: Analysis | Subject, unlearned: Subject, probes: Sequence[Probe] | None = None,
                fmt: str = "auto", criterion: str = "teacher_forced") -> tuple[pd.DataFrame, dict]:
    """Finding 3 (rate): per split, the share of probes the base answers that the unlearned model fails, under
    one correctness criterion (``teacher_forced``: fact span top-1; ``generation``: the greedy answer).

    ``base``: an :class:`~unpact_mech.analysis.Analysis` (its base scores are reused) or a Subject.
    """
    crit = check_criteria([criterion], probes)[0]
    an, tps = prepare_comparison(base, unlearned, probes, None, fmt)
    b, u = judge(an, tps, crit.name), judge(unlearned, tps, crit.name)
    df = pd.DataFrame({"probe_id": [tp.probe.id for tp in tps], "split": [tp.probe.split for tp in tps],
                       "criterion": crit.name, "correct_base": list(b.correct), "correct_unlearned": list(u.correct)})
    # the criterion's evidence travels with the table: lp_base/lp_unlearned, or generated_base/generated_unlearned
    df[f"{crit.extra}_base"], df[f"{crit.extra}_unlearned"] = list(b[crit.extra]), list(u[crit.extra])
    rates = {split: destructive_rate(list(g.correct_base), list(g.correct_unlearned))
             for split, g in df.groupby("split")}
    return df, rates


def function_word_penalisation(comparison: Any, params: KeyTokenParams | None = None) -> pd.DataFrame:
    """Finding 3 (mechanism): contribution change of function words vs base KeyTokens vs other tokens.

    One row per attributable token: its word (sub-word tokens grouped, ``unpact_mech.probes.words``) and kind
    ("KeyToken" if the base model's KeyToken, else the word's kind: "function word", "punctuation" or
    "content word"), its contribution C before and after, and ``change`` = C_unlearned - C_base.
    ``comparison`` is a :class:`~unpact_mech.analysis.compare.Comparison` on retain/general probes; its KeyToken
    parameters are used unless ``params`` is given.
    """
    params = params or comparison.params
    rows = []
    for rb, ru in zip(comparison.base, comparison.unlearned):
        keys = set(select_keytokens(rb.contributions, params))
        word_of = {p: w for w, ps in rb.tprobe.words for p in ps}
        for i, pos in enumerate(rb.positions):
            word = word_of.get(pos, rb.tprobe.tokens[pos].strip())
            kind = "KeyToken" if i in keys else word_kind(word)
            rows.append({"probe_id": rb.tprobe.probe.id, "split": rb.tprobe.probe.split, "position": pos,
                         "token": rb.tprobe.tokens[pos], "word": word, "kind": kind,
                         "base": float(rb.contributions[i]), "unlearned": float(ru.contributions[i])})
    df = pd.DataFrame(rows)
    df["change"] = df["unlearned"] - df["base"]
    return annotate(df, params)
