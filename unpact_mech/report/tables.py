"""Result tables for the report and the CLI: the per-criterion summary, and rates formatted for reading.

Numbers stay numbers until here: ``format_rates`` and ``route_table`` are the only places a rate becomes text.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd

from unpact_mech.analysis.emphasis import EMPHASIS_NAMES
from unpact_mech.core.stats import bootstrap_mean
from unpact_mech.evals.criteria import CRITERIA


def ci_text(est: float, lo: float, hi: float, extra: str = "") -> str:
    """An estimate with its interval, as every table and verdict shows it: '+0.30 (+0.10 to +0.50)'."""
    return f"{est:+.2f} ({lo:+.2f} to {hi:+.2f}{extra})"


def finite(x: Any) -> bool:
    """A real, finite number (not None, NaN, inf or a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def format_rates(table: pd.DataFrame) -> pd.DataFrame:
    """For display only: each rate column as 'rate (k/n, low-high)' and each estimate with an interval (and
    p-value) as 'est (low to high, p=..)', their count/interval columns dropped."""
    out = table.copy()
    for name in [c for c in table.columns if f"{c}_n" in table.columns]:
        def fmt(r: Any, name: str = name) -> str:
            n = r[f"{name}_n"]
            if not n or n != n:
                return "n/a"
            k = r[f"{name}_k"]
            ks = f"{int(k)}" if float(k).is_integer() else f"{k:.1f}"
            return f"{r[name]:.2f} ({ks}/{int(n)}, {r[f'{name}_low']:.2f}-{r[f'{name}_high']:.2f})"

        out[name] = table.apply(fmt, axis=1)
        out = out.drop(columns=[f"{name}_{k}" for k in ("k", "n", "low", "high")])
    for name in [c for c in table.columns if f"{c}_low" in table.columns and f"{c}_n" not in table.columns]:
        def fmt_ci(r: Any, name: str = name) -> str:
            if r[name] != r[name]:
                return "n/a"
            p = f", p={r[f'{name}_p']:.2f}" if f"{name}_p" in table.columns else ""
            return ci_text(r[name], r[f"{name}_low"], r[f"{name}_high"], p)

        out[name] = table.apply(fmt_ci, axis=1)
        out = out.drop(columns=[c for c in (f"{name}_low", f"{name}_high", f"{name}_p") if c in out.columns])
    return out


def route_table(t: pd.DataFrame) -> pd.DataFrame:
    """Readable route table: rates as 'rate (k/n, low-high)', excess as 'est (low to high)'."""

    def rate(r: Any, name: str) -> str:
        if not r[f"{name}_n"] == r[f"{name}_n"] or not r[f"{name}_n"]:
            return "-"
        return f"{r[name]:.2f} ({r[f'{name}_k']:g}/{int(r[f'{name}_n'])}, {r[f'{name}_low']:.2f}-{r[f'{name}_high']:.2f})"

    out = pd.DataFrame({
        "method": t["method"], "route": t["route"], "treatment": t["treatment"], "criterion": t["criterion"],
        "recovered": [rate(r, "recovered") for _, r in t.iterrows()],
        "control": [f"{c}: {rate(r, 'control')}" for c, (_, r) in zip(t.control_kind, t.iterrows())],
        "excess": [ci_text(r.excess, r.excess_low, r.excess_high) if r.excess == r.excess else "-"
                   for _, r in t.iterrows()],
        "base kept": [rate(r, "base_kept") if "base_kept_n" in t and r.base_kept == r.base_kept else "-"
                      for _, r in t.iterrows()],
    })
    return out




def criteria_of(rows: list[dict[str, Any]]) -> list[Any]:
    """The registered criteria a study's rows were judged under: the universal ones always, a multiple-choice
    one only where its columns are (a study on probes with choices)."""
    return [c for c in CRITERIA.values() if not c.needs_choices or any(f"forget_acc{c.suffix}" in r for r in rows)]


def summary_columns(criterion: str) -> list[str]:
    """The summary table's columns under one criterion (``teacher_forced`` or ``generation``)."""
    sfx = CRITERIA[criterion].suffix
    rec = [c for r in EMPHASIS_NAMES for c in (f"recovery_{r}{sfx}", f"recovery_{r}_random{sfx}", f"recovery_{r}_fw{sfx}",
                                          f"specific_{r}{sfx}")]
    mc = [f"forget_acc{sfx}"] if CRITERIA[criterion].needs_choices else []
    return ["method", "steps", "target_reached", "tv_scale", "forget_acc", "forget_acc_gen", *mc, "forget_lp_before",
            "forget_lp_after", "focus_before", "focus_after", "keytoken_jaccard", *rec, f"destructive_retain{sfx}",
            f"destructive_general{sfx}", "fw_change", "keytoken_change", "content_change"]


def summary_table(rows: list[dict[str, Any]], criterion: str | None = None) -> pd.DataFrame:
    """One row per method: every number of the summary with its counts and interval columns (``criterion``:
    only that criterion's columns; None: both)."""
    # results read back from JSON hold null where a fresh run holds NaN (JSON has no NaN)
    df = pd.DataFrame(rows).replace({None: float("nan")}).infer_objects()
    names = list(dict.fromkeys(c for name in CRITERIA for c in summary_columns(name))) \
        if criterion is None else summary_columns(criterion)
    cols = [x for c in names for x in (c, *(f"{c}_{k}" for k in ("k", "n", "low", "high", "p")))]
    return df[[c for c in cols if c in df.columns]]


GLOSSARY = {
    "method": "unlearning method",
    "steps": "unlearning steps taken (stops at the forget target or at max steps)",
    "target reached": "whether forget fact top-1 accuracy reached the target",
    "tv scale": "Task Vector's calibrated negation scale (other methods: empty)",
    "forget acc": "forget facts still answered after unlearning: rate (k/n, Wilson 95% CI)",
    "forget lp before / after": "mean teacher-forced log-prob of the forget answers, base / unlearned",
    "focus before / after": "share of positive leave-one-out contribution on the base KeyTokens (95% bootstrap CI)",
    "keytoken jaccard": "overlap of base and unlearned KeyTokens",
    "recovery ROUTE": "eligible forget probes (base right, unlearned wrong) recovered by emphasising the KeyTokens",
    "recovery ROUTE random / fw": "the same emphasis on random non-KeyTokens / on function words (controls)",
    "specific ROUTE": "KeyTokens minus random, paired per probe: mean (95% bootstrap CI, sign-flip p)",
    "destructive retain / general": "retain / general facts the base answers that the unlearned model fails",
    "fw / keytoken / content change": "mean contribution change on retain probes, unlearned minus base, by word kind",
    "... gen": "the same under the generation criterion (greedy answer, ROUGE-L recall of the fact span)",
    "best specific recovery": "headline: the largest KeyTokens-minus-random estimate over routes and criteria "
                              "(95% CI); its interval must exclude 0 to count",
}


def criterion_table_html(rows: list[dict[str, Any]], criterion: str) -> str:
    """One criterion's summary table: the columns that criterion changes (after the first table, the shared ones
    are not repeated), empty columns left out."""
    t = format_rates(summary_table(rows, criterion)).round(3)
    sfx = CRITERIA[criterion].suffix
    if sfx:  # the second table keeps the method and its own criterion's columns
        t = t[["method", *[c for c in t.columns if str(c).endswith(sfx)]]]
    else:  # the first, every criterion-free column and none of another criterion's
        other = [c.suffix for c in CRITERIA.values() if c.suffix]
        t = t[[c for c in t.columns if not any(str(c).endswith(o) for o in other)]]
    t = t.dropna(axis=1, how="all").rename(columns=lambda c: str(c).replace("_", " "))
    gloss = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in GLOSSARY.items())
    return (f"<details><summary>all {len(t.columns)} columns, one row per method (click to open)</summary>"
            "<div class='scroll pinned'>" + t.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="")
            + f"</div><dl class='glossary'>{gloss}</dl></details>")


def _best_specific(row: dict[str, Any]) -> tuple[str, str]:
    """The largest KeyToken-specific estimate over emphasis modes and criteria: (estimate with interval, where)."""
    best: tuple[float, str, str] | None = None
    for crit in criteria_of([row]):
        for name in EMPHASIS_NAMES:
            key = f"specific_{name}{crit.suffix}"
            vals = [row.get(k, math.nan) for k in (key, f"{key}_low", f"{key}_high")]
            if not all(finite(v) for v in vals):
                continue
            est, lo, hi = (float(v) for v in vals)
            if best is None or est > best[0]:
                best = (est, ci_text(est, lo, hi), f"{name}, {crit.name}")
    return best[1:] if best else ("n/a", "no eligible probes")


HEADLINE = {"method": "method", "steps": "steps", "forget_acc": "forget acc (teacher forced)",
            "forget_acc_gen": "forget acc (generation)", "destructive_retain": "destroyed retain (tf)",
            "destructive_general": "destroyed general (tf)", "destructive_retain_gen": "destroyed retain (gen)",
            "destructive_general_gen": "destroyed general (gen)"}


def headline_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per method: steps, forget accuracy and destruction under both criteria, and the best
    KeyToken-specific recovery (KeyTokens minus random) with its interval: the numbers a reader wants first."""
    full = format_rates(summary_table(rows))
    t = full[[c for c in HEADLINE if c in full.columns]].rename(columns=HEADLINE)
    best = [_best_specific(r) for r in rows]
    t["best specific recovery"], t["route, criterion"] = [b[0] for b in best], [b[1] for b in best]
    return t


def word_kind_table(fw: pd.DataFrame) -> pd.DataFrame:
    """Mean contribution change per (method, word kind) with its 95% bootstrap interval over tokens."""
    rows = []
    for (m, kind), g in fw.groupby(["method", "kind"], sort=False):
        est, lo, hi = bootstrap_mean(list(g["change"].dropna()))
        rows.append({"method": m, "kind": kind, "change": est, "low": lo, "high": hi, "n": len(g)})
    return pd.DataFrame(rows)
