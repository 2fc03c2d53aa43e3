"""The study's HTML report as registered sections: ``@section(order, title)`` on a function of the
:class:`ReportContext` that returns the section's body (HTML, a DataFrame, or None to leave it out), or a list
of (title, body) pairs for sections that repeat (one per method). A new section is one function.

Everything is rendered from the results on disk (``OUT/METHOD/*.csv``, the result rows) and the study's
settings, so the report can be rebuilt without loading a model.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from unpact_mech.core.display import colour_legend, comparison_block, strip_scale
from unpact_mech.core.io import read_table
from unpact_mech.evals.metrics import GEN_THRESHOLD
from unpact_mech.findings.power import REPS, power_curve, specific_mde
from unpact_mech.report.drill import drill_down, eligibility_counts, settings_rows
from unpact_mech.report.figures import (
    factor_curves,
    frontier,
    grid_limit,
    head_heatmap,
    interval_points,
    logit_lens_curves,
    patch_heatmap,
    power_curves,
    save_figure,
)
from unpact_mech.report.html import image, write_report
from unpact_mech.report.tables import (
    criteria_of,
    criterion_table_html,
    format_rates,
    headline_table,
    route_table,
    word_kind_table,
)
from unpact_mech.report.verdicts import (
    control_caption,
    factor_caption,
    focus_caption,
    frontier_caption,
    heads_caption,
    lens_caption,
    patch_caption,
    power_rate,
    specific_tests,
    verdicts,
    word_kind_caption,
)
from unpact_mech.runtime.results import table_path


@dataclass
class ReportContext:
    """What every section reads: the output directory, one result row per method, the data splits, the base
    model's name and the study's settings (``budget`` and ``route_budget``)."""

    out: Path
    rows: list[dict[str, Any]]
    data: dict[str, list]
    model: str
    settings: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def figs(self) -> Path:
        return self.out / "figures"

    def table(self, method: str, name: str) -> pd.DataFrame:
        """The method's table ``name`` (``runtime.results.METHOD_TABLES``), read once."""
        key = f"{method}/{name}"
        if key not in self.cache:
            self.cache[key] = read_table(table_path(self.out, method, name))
        return self.cache[key]

    def has(self, method: str, name: str) -> bool:
        return table_path(self.out, method, name).exists()

    def figure(self, fig: Figure, name: str, caption: str) -> str:
        """Save ``fig`` as ``figures/NAME.png`` and return it embedded, numbered in report order, with its
        computed ``caption``."""
        self.cache["n_figures"] = self.cache.get("n_figures", 0) + 1
        return image(save_figure(fig, self.figs / f"{name}.png"), caption, self.cache["n_figures"])


Body = Union[str, pd.DataFrame, None]  # noqa: UP007  (a runtime alias: the X | Y form needs Python 3.10 types)
SectionFn = Callable[[ReportContext], Union[Body, list[tuple[str, Body]]]]  # noqa: UP007


@dataclass(frozen=True)
class Section:
    order: float
    title: str
    fn: SectionFn


SECTIONS: list[Section] = []


def section(order: float, title: str = "") -> Callable[[SectionFn], SectionFn]:
    """Register a report section at position ``order`` (sections render in increasing order)."""

    def deco(fn: SectionFn) -> SectionFn:
        SECTIONS.append(Section(order, title, fn))
        return fn

    return deco


def build_report(out: Path, rows: list[dict[str, Any]], data: dict[str, list], model: str,
                 settings: dict[str, Any]) -> Path:
    """The self-contained ``report.html`` (every registered section, in order), figures saved as PNG beside it."""
    ctx = ReportContext(Path(out), rows, data, model, settings)
    parts: list[tuple[str, Any]] = []
    for sec in sorted(SECTIONS, key=lambda s: s.order):
        body = sec.fn(ctx)
        if isinstance(body, list):
            parts += [(t, b) for t, b in body if b is not None]
        elif body is not None:
            parts.append((sec.title, body))
    return write_report(ctx.out / "report.html", "unPact: the unlearning dilemma, mechanistically", parts)


def _route_frame(ctx: ReportContext) -> pd.DataFrame | None:
    frames = [ctx.table(r["method"], "recovery_routes").assign(method=r["method"]) for r in ctx.rows
              if ctx.has(r["method"], "recovery_routes")]
    return pd.concat(frames, ignore_index=True) if frames else None


FINDINGS = {"1": "Finding 1: focus on KeyTokens", "2": "Finding 2: recovery by emphasis, against random tokens",
            "3": "Finding 3: destruction of facts not in the forget set", "routes": "Recovery routes"}


@section(-1, "Key results")
def _key_results(ctx: ReportContext) -> Body:
    """One verdict per finding and method, computed from the numbers by the rules in ``report.verdicts``."""
    vs = verdicts(ctx.rows, _route_frame(ctx), int(ctx.settings.get("budget", {}).get("n_draws", 2)))
    parts = ["<div class='keyres' id='key-results-box'><p>Computed from the numbers below by stated rules: an "
             "effect is claimed only where its 95% interval excludes 0 (see <i>report/verdicts.py</i>).</p>"]
    for key, title in FINDINGS.items():
        items = [v for v in vs if v.finding == key]
        if items:
            parts.append(f"<h3>{html.escape(title)}</h3><ul>" + "".join(
                f"<li class='{'effect' if v.positive else 'null'}'>{'<b>' if v.positive else ''}"
                f"{html.escape(v.text)}{'</b>' if v.positive else ''}</li>" for v in items) + "</ul>")
    return "".join(parts) + "</div>"


@section(0, "Summary")
def _summary(ctx: ReportContext) -> Body:
    d, b = ctx.data, ctx.settings["budget"]
    return (f"<p>Base model <b>{ctx.model}</b>; {len(d['forget'])} forget, {len(d['retain'])} retain and "
            f"{len(d['general'])} general facts the base model answers (fact span top-1), drawn from the built-in "
            "facts. Every method unlearns the forget split until its fact top-1 accuracy is at most the target, or "
            "max steps (Task Vector: its negation scale is bisected to the target); <i>target_reached</i> says "
            "whether it got there.</p><p>Two correctness criteria. <b>Teacher forced</b>: every token of the fact "
            "span is the model's top-1 given the gold prefix. <b>Generation</b>: the greedy answer's ROUGE-L recall "
            f"of the fact span is at least {GEN_THRESHOLD}, or the span appears in it. Rates are k/n with a Wilson "
            "95% interval; recovery counts forget probes the base answers and the unlearned model does not, "
            "restored at any emphasis factor &gt; 1. Controls: the same emphasis on as many random non-KeyTokens "
            f"({b['n_draws']} seeded draws; k is the mean over draws, interval by bootstrap over probes) and on "
            "the prompt's function words. <i>specific</i> = KeyTokens minus random, paired per probe: mean, 95% "
            "paired bootstrap interval and sign-flip p-value.</p>"
            + ("<p>The probes have choices, so a third criterion, <b>multiple choice</b>, judges them as the cloze "
               "formulation does: correct when the gold choice has the largest summed log-likelihood as the "
               "continuation of the probe's own prompt (chance: 1 / number of choices); its columns end in "
               "<i>_mc</i>.</p>" if _has_mc(ctx) else ""))


def _has_mc(ctx: ReportContext) -> bool:
    return "multiple_choice" in {c.name for c in criteria_of(ctx.rows)}


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


@section(0.5, "Headline table")
def _headline(ctx: ReportContext) -> Body:
    return headline_table(ctx.rows)


@section(1, "Summary table: teacher forced")
def _summary_tf(ctx: ReportContext) -> Body:
    return criterion_table_html(ctx.rows, "teacher_forced")


@section(2, "Summary table: generation")
def _summary_gen(ctx: ReportContext) -> Body:
    return criterion_table_html(ctx.rows, "generation")


@section(2.5, "Summary table: multiple choice")
def _summary_mc(ctx: ReportContext) -> Body:  # a study of probes with choices (WMDP): judged by the cloze argmax
    return criterion_table_html(ctx.rows, "multiple_choice") if _has_mc(ctx) else None


@section(3, "Finding 1: focus on KeyTokens before and after")
def _focus(ctx: ReportContext) -> Body:
    focus = pd.DataFrame([{"method": r["method"], "when": w, "focus": r[k], "low": r[f"{k}_low"],
                           "high": r[f"{k}_high"]} for r in ctx.rows
                          for w, k in (("before", "focus_before"), ("after", "focus_after"))])
    return ctx.figure(interval_points(focus, "method", "focus", "low", "high", "when",
                                      "Finding 1: focus on the base KeyTokens (share of positive contribution)",
                                      "mean focus (95% bootstrap CI)", ylim=(0.0, 1.0)), "focus", focus_caption(ctx.rows))


CONTROL_ROUTES = ("embed", "attention", "prompt:instruct")


@section(4, "Finding 2: recovery by emphasis, with controls")
def _recovery(ctx: ReportContext) -> Body:
    rec_frames, ctrl_frames = [], []
    for r in ctx.rows:
        m = r["method"]
        rates = ctx.table(m, "recovery_rates")
        num = rates[(rates.scope == "factor") & ~rates.route.str.startswith("prompt")].copy()
        num["factor"] = num.factor.astype(float)
        rec_frames.append(num.assign(method=m))
        ctrl_frames.append(rates[rates.scope == "best"].assign(method=m))
    ctrl = pd.concat(ctrl_frames, ignore_index=True)
    ctrl["series"] = ctrl.criterion + " / " + ctrl.condition
    factors = ", ".join(f"x{f:g}" for f in ctx.settings.get("factors", ()) if f != 1)
    ctrl_figs = "".join(ctx.figure(interval_points(
        ctrl[ctrl.route == rt], "method", "rate", "low", "high", "series",
        f"Finding 2, route {rt}: recovery on KeyTokens vs controls (best over factors {factors})",
        "recovery rate (95% CI)", ylim=(-0.03, 1.03)), f"control_{rt.replace(':', '_')}", control_caption(ctx.rows, rt))
        for rt in CONTROL_ROUTES if (ctrl.route == rt).any())
    rec = pd.concat(rec_frames, ignore_index=True)
    rec = rec[rec.criterion == "teacher_forced"]
    curves = ctx.figure(factor_curves(rec, title="Recovery over the emphasis factor (teacher forced)"),
                        "recovery_curves", factor_caption(rec))
    return ctrl_figs + curves


POWER_NS = (24, 48, 100)  # beside the study's own n: what more probes would buy (every known built-in fact: ~60-80)


@section(4.5, "What a null could have detected: power")
def _power(ctx: ReportContext) -> Body:
    """The KeyToken-specific test's simulated power at the study's smallest and largest n of eligible probes and
    at larger n, at the observed random-control rate (``unpact_mech.findings.power``)."""
    ns, p_random = specific_tests(ctx.rows)
    if not ns:
        return None
    p = power_rate(p_random)
    draws = int(ctx.settings.get("budget", {}).get("n_draws", 2))
    sizes = sorted({min(ns), max(ns), *POWER_NS})
    effects = [round(e, 2) for e in np.arange(0.1, 1 - p + 1e-9, 0.1)]
    curve = power_curve(sizes, effects, p, draws)
    mde = {n: specific_mde(n, p, draws) for n in sizes}
    cap = (f"Share of {REPS} simulated studies in which the study's rule (the paired KeyTokens-minus-random 95% "
           f"interval lies above 0) finds a planted effect, at the observed random-control rate {p:.2f} with {draws} "
           "draws. Effect found with 80% power: " + "; ".join(f"n = {n}: {mde[n]:.2f}" if mde[n] == mde[n]
                                                               else f"n = {n}: none" for n in sizes) + ".")
    return ("<p>This study has " + (f"{min(ns)} to {max(ns)}" if min(ns) != max(ns) else f"{min(ns)}")
            + " eligible probes per test. A null here excludes only effects at least as large as the 80%-power "
            "effect at that n (unpact_mech/findings/power.py; analyses/power.py runs the full curve).</p>"
            + ctx.figure(power_curves(curve), "power", cap))


@section(5, "Finding 3: what unlearning penalised on retain probes")
def _destruction(ctx: ReportContext) -> Body:
    fw = pd.concat([ctx.table(r["method"], "function_words").assign(method=r["method"]) for r in ctx.rows],
                   ignore_index=True)
    t = word_kind_table(fw)
    return ctx.figure(interval_points(t, "method", "change", "low", "high", "kind",
                                      "Contribution change on retain probes, by word kind",
                                      "change, unlearned - base (< 0: penalised)", zero_line=True), "function_words",
                      word_kind_caption(t))


@section(6, "The dilemma frontier")
def _frontier(ctx: ReportContext) -> Body:
    frames = [ctx.table(r["method"], "frontier") for r in ctx.rows if ctx.has(r["method"], "frontier")]
    if not frames:
        return "<p>No frontier points.</p>"
    fdf = pd.concat(frames, ignore_index=True)
    fr = ctx.settings["budget"]["frontier"]
    best = ", ".join(f"x{f:g}" for f in fr["factors"] if f != 1)
    parts = []
    for route in fr.get("modes", fr.get("routes", ())):  # "routes" in reports written before the rename
        g = fdf[(fdf.route == route) & (fdf.criterion == "teacher_forced")]
        parts.append(ctx.figure(frontier(g, title=f"Dilemma frontier, emphasis mode {route} (teacher forced)",
                                         ylabel=f"recovery rate (best over {best})",
                                         strength_label="unlearning steps (Task Vector: its negation scale)"),
                                f"frontier_{route}", frontier_caption(g)))
    cols = [c for c in fdf.columns if c not in ("criterion", "model")]  # model repeats method@strength
    return ("<p>Each point is one unlearning strength: the snapshots every "
            f"{fr['every']} steps along a method's training and its last step, or "
            "fractions of Task Vector's calibrated scale. Recovery is among the probes eligible at that "
            "strength (n varies); the dashed line is the random-token control.</p>"
            + "".join(parts) + "<details><summary>frontier points (table)</summary><div class='scroll pinned'>"
            + format_rates(fdf[cols][["method", *[c for c in cols if c != "method"]]]).round(3).to_html(index=False)
            + "</div></details>")


@section(7, "How superficial is the forgetting: recovery routes")
def _routes(ctx: ReportContext) -> Body:
    routes = _route_frame(ctx)
    if routes is None:
        return "<p>No recovery routes were run.</p>"
    t = route_table(routes)
    intro = ("<p>Forget probes the base model answers and the unlearned one does not (n), brought back without the "
             "forget set: emphasis (best factor), weights rounded to 8/4-bit integers (RTN, group 64), k fine-tuning "
             f"steps on the retain facts, a {ctx.settings['route_budget']['shots']}-shot prompt of other facts. "
             "<i>control</i>: random non-KeyTokens for emphasis; for the other routes, facts neither model knew under "
             "the same treatment of the unlearned model. <i>excess</i> = recovered - control (95% interval). "
             "<i>base kept</i>: the same treatment of the base model still answers.</p>")
    return intro + "<div class='scroll'>" + t.to_html(index=False) + "</div>"


@section(7.5, "The benchmark's own metrics")
def _task_metrics(ctx: ReportContext) -> Body:
    """The task's metrics (``task_metrics.csv``, when the study ran a task): one row per metric, one column per model."""
    f = ctx.out / "task_metrics.csv"
    if not f.exists():
        return None
    t = read_table(f)
    t["cell"] = [f"{v:.3f}" + (f" ({int(k)}/{int(n)}, {lo:.2f}-{hi:.2f})" if "k" in t and pd.notna(k) else f" (n={int(n)})")
                 for v, k, n, lo, hi in zip(t.value, t.get("k", t.n), t.n, t.get("low", t.value), t.get("high", t.value))]
    wide = t.pivot_table(index=[c for c in ("task", "split", "metric", "reference") if c in t], columns="role", values="cell", aggfunc="first", sort=False)
    return ("<p>Scored as the benchmark scores them (<i>unpact_mech.evals.tasks</i>; each row's reference is the file its "
            "formula follows). Rates: k/n with a Wilson 95% interval.</p>" + wide.reset_index().to_html(index=False))


@section(99, "Settings")
def _settings(ctx: ReportContext) -> Body:
    """What the run was: model, dtype, data sizes and why n differs per criterion, each method's settings as
    trained, the KeyToken parameters, budgets, seeds, versions and every stage's stamp."""
    rows = settings_rows(ctx.out, ctx.rows, ctx.data, ctx.model, ctx.settings)
    counts = eligibility_counts(ctx.out, [r["method"] for r in ctx.rows])
    why = ("<p>Why n differs: every split holds facts the base model answers under the teacher-forced criterion "
           "(that is how they were drawn). Under generation the base must also generate the answer, so fewer "
           "count; recovery is over forget probes the base answers and the unlearned model does not, per "
           "criterion.</p>")
    table = ("<div class='scroll'><table class='settings'><tr><th>setting</th><th>value</th></tr>"
             + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
             + "</table></div>")
    return why + ("<div class='scroll'>" + counts.to_html(index=False) + "</div>" if not counts.empty else "") + table


DEFINITIONS = (
    "<div class='defs'><p><b>Token strips</b>: the leave-one-out contribution C(x_i, y) = LP(x, y) - LP(x without "
    "x_i, y) of each prompt token to the answer's log-prob, base model above unlearned, one colour scale across "
    "the report. <b>Head DLA</b> (direct logit attribution): each attention head's output, through the final "
    "norm, dotted with the answer token's unembedding: its direct effect on the answer logit, mean over probes; "
    "the heatmap shows unlearned minus base. <b>KeyToken route</b>: the same, restricted to attention paths from the "
    "base KeyTokens. <b>Logit lens</b>: the answer log-prob read off the residual stream after each layer. "
    "<b>Patching</b>: one base activation written into the unlearned model's run; restoration = the share of "
    "the LP gap it closes.</p></div>")


def _strip(e: dict[str, Any], scale: float) -> str:
    title = (f"{e.get('split', 'forget')} probe {e['id']}: {e['prompt']} -> {e['answer']}"
             + (f" ({e['why']}; LP {e['lp_base']:.2f} -> {e['lp_unlearned']:.2f})" if "why" in e else ""))
    return comparison_block(title, e["tokens"], e["base"], e["unlearned"], set(e["keys"]), scale)


@section(100)
def _per_method(ctx: ReportContext) -> list[tuple[str, Body]]:
    out: list[tuple[str, Body]] = []
    scale = strip_scale(*(v for r in ctx.rows for e in r["examples"] for v in (e["base"], e["unlearned"])))
    heads = {r["method"]: ctx.table(r["method"], "heads") for r in ctx.rows}
    lim = grid_limit(list(heads.values()), split="forget")
    for r in ctx.rows:
        m = r["method"]
        strips = (colour_legend(scale, "leave-one-out contribution C(x_i, y)")
                  + "".join(_strip(e, scale) for e in r["examples"]))
        hf = heads[m][heads[m]["split"] == "forget"]
        p1 = ctx.figure(head_heatmap(hf, "change", None, f"{m}: head DLA change on forget probes", vlim=lim),
                        f"{m}_heads_forget", heads_caption(hf, lim))
        lens = ctx.table(m, "logit_lens")
        p2 = ctx.figure(logit_lens_curves(lens, title=f"{m}: logit lens on forget and retain probes"),
                        f"{m}_logit_lens", lens_caption(lens))
        patch = ""
        if ctx.has(m, "patch_positions"):
            pp = ctx.table(m, "patch_positions")
            patch = ctx.figure(patch_heatmap(pp), f"{m}_patch", patch_caption(pp))
        route = (f"<p><b>KeyToken route</b> (heads that lost the most direct effect through paths from the base "
                 f"KeyTokens; a different quantity from the heatmap, which counts every source):</p>"
                 f"{_pre(r['route_summary'])}")
        out.append((f"{m}: mechanism (token contributions, head DLA, logit lens, patching)",
                    (DEFINITIONS if not out else "") + strips + p1 + route + p2 + patch + drill_down(ctx.out, m, ctx.data)))
    return out


__all__ = ["SECTIONS", "ReportContext", "Section", "build_report", "section"]
