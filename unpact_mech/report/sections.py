"""The study's HTML report as registered sections: ``@section(order, title)`` on a function of the
:class:`ReportContext` that returns the section's body (HTML, a DataFrame, or None to leave it out), or a list
of (title, body) pairs for sections that repeat (one per method). A new section is one function.

Everything is rendered from the results on disk (``OUT/METHOD/*.csv``, the result rows) and the study's
settings, so the report can be rebuilt without loading a model.
"""

from __future__ import annotations

import html
import importlib.metadata as md
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from unpact_mech.display import comparison_block
from unpact_mech.io import read_table
from unpact_mech.metrics import GEN_THRESHOLD
from unpact_mech.report.figures import (
    bar,
    frontier,
    head_heatmap,
    interval_points,
    line_sweep,
    logit_lens_curves,
    patch_heatmap,
    save_figure,
)
from unpact_mech.report.html import image, write_report
from unpact_mech.report.tables import GLOSSARY, format_rates, headline_table, route_table, summary_table
from unpact_mech.report.verdicts import verdicts


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
        """``OUT/METHOD/NAME.csv``, read once."""
        key = f"{method}/{name}"
        if key not in self.cache:
            self.cache[key] = read_table(self.out / method / f"{name}.csv")
        return self.cache[key]

    def has(self, method: str, name: str) -> bool:
        return (self.out / method / f"{name}.csv").exists()


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
    vs = verdicts(ctx.rows, _route_frame(ctx))
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
            "paired bootstrap interval and sign-flip p-value.</p>")


@section(0.5, "Headline table")
def _headline(ctx: ReportContext) -> Body:
    return headline_table(ctx.rows)


def _full_table(ctx: ReportContext, criterion: str) -> str:
    t = format_rates(summary_table(ctx.rows, criterion)).round(3).rename(columns=lambda c: str(c).replace("_", " "))
    gloss = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in GLOSSARY.items())
    return (f"<details><summary>all {len(t.columns)} columns, one row per method (click to open)</summary>"
            "<div class='scroll pinned'>" + t.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")
            + f"</div><dl class='glossary'>{gloss}</dl></details>")


@section(1, "Summary table: teacher forced")
def _summary_tf(ctx: ReportContext) -> Body:
    return _full_table(ctx, "teacher_forced")


@section(2, "Summary table: generation")
def _summary_gen(ctx: ReportContext) -> Body:
    return _full_table(ctx, "generation")


@section(3, "Finding 1: focus on KeyTokens before and after")
def _focus(ctx: ReportContext) -> Body:
    focus = pd.DataFrame([{"method": r["method"], "when": w, "focus": r[k], "low": r[f"{k}_low"],
                           "high": r[f"{k}_high"]} for r in ctx.rows
                          for w, k in (("before", "focus_before"), ("after", "focus_after"))])
    return image(save_figure(interval_points(focus, "method", "focus", "low", "high", "when",
                                             "Finding 1: focus on the base KeyTokens (share of positive contribution)",
                                             "mean focus (95% bootstrap CI)"), ctx.figs / "focus.png"))


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
    ctrl_figs = "".join(image(save_figure(interval_points(
        ctrl[ctrl.route == rt], "method", "rate", "low", "high", "series",
        f"Finding 2, route {rt}: recovery on KeyTokens vs controls (best over factors)", "recovery rate (95% CI)"),
        ctx.figs / f"control_{rt.replace(':', '_')}.png")) for rt in ("embed", "attention", "prompt:instruct"))
    rec = pd.concat(rec_frames, ignore_index=True)
    rec = rec[(rec.condition == "keytokens") & (rec.criterion == "teacher_forced")]
    p = save_figure(line_sweep(rec, "factor", "rate", "method", "Recovery rate over emphasis factor (KeyTokens, "
                               "teacher forced)", style="route"), ctx.figs / "recovery_curves.png")
    return ctrl_figs + image(p)


@section(5, "Finding 3: what unlearning penalised on retain probes")
def _destruction(ctx: ReportContext) -> Body:
    fw = pd.concat([ctx.table(r["method"], "function_words").assign(method=r["method"]) for r in ctx.rows],
                   ignore_index=True)
    return image(save_figure(bar(fw, "method", "change", "kind", "Contribution change on retain probes, by word kind"),
                             ctx.figs / "function_words.png"))


@section(6, "The dilemma frontier")
def _frontier(ctx: ReportContext) -> Body:
    frames = [ctx.table(r["method"], "frontier") for r in ctx.rows if ctx.has(r["method"], "frontier")]
    if not frames:
        return "<p>No frontier points.</p>"
    fdf = pd.concat(frames, ignore_index=True)
    fr = ctx.settings["budget"]["frontier"]
    parts = []
    for route in fr["routes"]:
        g = fdf[(fdf.route == route) & (fdf.criterion == "teacher_forced")]
        parts.append(image(save_figure(frontier(g, title=f"Dilemma frontier ({route} x{fr['factors'][-1]:g}, "
                                                "teacher forced)"), ctx.figs / f"frontier_{route}.png")))
    return ("<p>Each point is one unlearning strength: the snapshots every "
            f"{fr['every']} steps along a method's training and its last step, or "
            "fractions of Task Vector's calibrated scale. Recovery is among the probes eligible at that "
            "strength (n varies); the dashed line is the random-token control.</p>"
            + "".join(parts) + "<div class='scroll'>"
            + format_rates(fdf.drop(columns=["criterion"])).round(3).to_html(index=False) + "</div>")


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


@section(99, "Settings")
def _settings(ctx: ReportContext) -> Body:
    """What the run was: model, data sizes, each method's steps as trained, the budgets, the versions."""
    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    rows = [("model", ctx.model), *((f"{k} facts", str(len(v))) for k, v in ctx.data.items())]
    rows += [(f"method {r['method']}", f"steps {r.get('steps')}, target reached {r.get('target_reached')}")
             for r in ctx.rows]
    rows += [(f"{group} {k}", str(v)) for group in ("budget", "route_budget") for k, v in ctx.settings.get(group, {}).items()]
    rows += [(f"version {p}", ver(p)) for p in ("unpact_mech", "torch", "transformers", "transformer-lens")]
    return ("<div class='scroll'><table class='settings'><tr><th>setting</th><th>value</th></tr>"
            + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
            + "</table></div>")


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


@section(100)
def _per_method(ctx: ReportContext) -> list[tuple[str, Body]]:
    out: list[tuple[str, Body]] = []
    for r in ctx.rows:
        m = r["method"]
        body = "".join(comparison_block(f"{e['id']}: {e['prompt']} -> {e['answer']}", e["tokens"], e["base"],
                                        e["unlearned"], set(e["keys"])) for e in r["examples"])
        p1 = save_figure(head_heatmap(ctx.table(m, "heads"), "change", "forget", f"{m}: head DLA change on forget probes"),
                         ctx.figs / f"{m}_heads_forget.png")
        p2 = save_figure(logit_lens_curves(ctx.table(m, "logit_lens"), title=f"{m}: logit lens"),
                         ctx.figs / f"{m}_logit_lens.png")
        patch = ""
        if ctx.has(m, "patch_positions"):
            patch = image(save_figure(patch_heatmap(ctx.table(m, "patch_positions")), ctx.figs / f"{m}_patch.png"),
                          f"{m}: restoration when patching base activations into the unlearned model")
        out.append((f"{m}: contributions before and after (red = supports the answer; outlined = base KeyToken)",
                    body + _pre(r["route_summary"]) + image(p1) + image(p2) + patch))
    return out


__all__ = ["SECTIONS", "ReportContext", "Section", "build_report", "section"]
