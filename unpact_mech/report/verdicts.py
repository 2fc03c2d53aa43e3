"""Verdicts computed from the numbers, by stated rules (no verdict text is written by hand).

Rules, per method and criterion (95% intervals throughout):

* **Finding 1 (focus):** focus *falls* if the after-unlearning interval lies wholly below the before interval,
  *rises* if wholly above, else *no clear change* (the intervals overlap).
* **Finding 2 (recovery):** an emphasis mode is *KeyToken-specific* if the paired KeyTokens-minus-random
  interval (``specific_*``) lies wholly above 0, *worse than random* if wholly below, else *null*.
* **Finding 3 (destruction):** a method *destroys* retain (general) facts if the Wilson interval of the
  destructive rate excludes 0; "all" when k = n.
* **Recovery routes:** a route treatment *recovers beyond its control* if the excess interval lies above 0.
* **Every null says what it could have detected** (``unpact_mech.findings.power``): Finding 2's summary gives the
  minimum KeyToken-specific effect found with 80% power at the n seen; each null destruction verdict the smallest
  destructive rate found with 80% power at its n.

Figure captions state each figure's takeaway from the same numbers (``*_caption``): the extremes, counts and
intervals it shows, never a fixed sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from unpact_mech.analysis.emphasis import EMPHASIS_NAMES
from unpact_mech.findings.power import destruction_mde, specific_mde
from unpact_mech.report.tables import ci_text, criteria_of, finite


@dataclass(frozen=True)
class Verdict:
    finding: str  # "1", "2", "3" or "routes"
    method: str  # a method, or "" for a verdict over all methods
    positive: bool  # the rule found an effect
    text: str
    tag: str = ""  # the rule's outcome in one word ("falls", "rises", "none", ...)


def _num(row: dict[str, Any], key: str) -> float:
    v = row.get(key, math.nan)
    return float(v) if finite(v) else math.nan


def _ci(row: dict[str, Any], key: str) -> tuple[float, float, float]:
    return _num(row, key), _num(row, f"{key}_low"), _num(row, f"{key}_high")


def focus_verdicts(rows: list[dict[str, Any]]) -> list[Verdict]:
    out = []
    for r in rows:
        b, bl, bh = _ci(r, "focus_before")
        a, al, ah = _ci(r, "focus_after")
        if any(math.isnan(x) for x in (b, bl, bh, a, al, ah)):
            continue
        if ah < bl:
            word, pos, tag = "falls", True, "falls"
        elif al > bh:
            word, pos, tag = "rises", True, "rises"
        else:
            word, pos, tag = "shows no clear change (the intervals overlap)", False, "none"
        out.append(Verdict("1", r["method"], pos, f"{r['method']}: focus on the base KeyTokens {word}: "
                           f"{b:.2f} ({bl:.2f} to {bh:.2f}) before, {a:.2f} ({al:.2f} to {ah:.2f}) after", tag))
    return out


def power_rate(p_random: float) -> float:
    """The random-control rate the power is simulated at: the observed one, to 2 places, at most 0.9."""
    return min(max(round(p_random, 2), 0.0), 0.9)


def power_note(ns: list[int], p_random: float, n_draws: int) -> str:
    """What the KeyToken-specific test could have detected at the n seen: the minimum detectable effect with 80%
    power at the smallest and largest n (``unpact_mech.findings.power``, simulated at the observed random-control rate)."""
    sizes = sorted({int(n) for n in ns if n >= 1})
    if not sizes:
        return ""
    p = power_rate(p_random)
    mde = {n: specific_mde(n, p, n_draws) for n in (sizes[0], sizes[-1])}
    txt = " to ".join(dict.fromkeys(f"{mde[n]:.2f} (n = {n})" if mde[n] == mde[n] else f"none reachable (n = {n})"
                                    for n in (sizes[-1], sizes[0])))
    return (f". What a null could have detected: at these n of eligible probes, the test finds a KeyToken-specific "
            f"effect (KeyTokens recovering that much more often than random tokens) of {txt} with 80% power, "
            f"at the observed random-control rate {p:.2f} with {n_draws} draws (simulated, unpact_mech/findings/power.py)")


def specific_tests(rows: list[dict[str, Any]]) -> tuple[list[int], float]:
    """The KeyToken-specific tests a study ran: each one's n of eligible probes, and the mean random-control rate
    over them (the inputs of its power)."""
    ns, randoms = [], []
    for crit in criteria_of(rows):
        for r in rows:
            for name in EMPHASIS_NAMES:
                if math.isnan(_num(r, f"specific_{name}{crit.suffix}_low")):
                    continue
                n, rr = _num(r, f"recovery_{name}{crit.suffix}_n"), _num(r, f"recovery_{name}_random{crit.suffix}")
                if n >= 1:
                    ns.append(int(n))
                if not math.isnan(rr):
                    randoms.append(rr)
    return ns, (sum(randoms) / len(randoms) if randoms else 0.0)


def recovery_verdicts(rows: list[dict[str, Any]], n_draws: int = 2) -> list[Verdict]:
    out, tested = [], 0
    for crit in criteria_of(rows):
        for r in rows:
            for name in EMPHASIS_NAMES:
                est, lo, hi = _ci(r, f"specific_{name}{crit.suffix}")
                if any(math.isnan(x) for x in (est, lo, hi)):
                    continue
                tested += 1
                if lo > 0 or hi < 0:
                    word = "KeyToken-specific" if lo > 0 else "worse than random tokens"
                    out.append(Verdict("2", r["method"], lo > 0, f"{r['method']}: emphasis by {name} is {word} "
                                       f"under {crit.name}: KeyTokens - random {ci_text(est, lo, hi)}"))
    note = power_note(*specific_tests(rows), n_draws)
    if tested and not any(v.positive for v in out):
        out.insert(0, Verdict("2", "", False, f"No emphasis mode is KeyToken-specific: of {tested} paired "
                              "KeyTokens-minus-random intervals (method x mode x criterion), none lies above 0"
                              + note))
    elif tested:
        k = sum(v.positive for v in out)
        out.insert(0, Verdict("2", "", False, f"{k} of {tested} paired KeyTokens-minus-random intervals lie above 0; "
                              f"with no effect anywhere, about {tested / 40:.1f} would by chance (each 95% interval "
                              "misses 0 upwards 2.5% of the time), so read single positives with care" + note))
    if rows and not tested:
        out.append(Verdict("2", "", False, "Recovery could not be tested: no forget probe was eligible (answered by "
                           "the base and not by the unlearned model) for any method and criterion"))
    return out


def destruction_verdicts(rows: list[dict[str, Any]]) -> list[Verdict]:
    out: list[Verdict] = []
    untestable = []
    for crit in criteria_of(rows):
        for r in rows:
            for split in ("retain", "general"):
                key = f"destructive_{split}{crit.suffix}"
                rate, k, n, lo = _num(r, key), _num(r, f"{key}_k"), _num(r, f"{key}_n"), _num(r, f"{key}_low")
                if math.isnan(rate) or math.isnan(n) or n == 0:
                    untestable.append(f"{r['method']} {split}/{crit.name}")
                    continue
                ks = f"{k:g}/{n:g}"
                if lo > 0:
                    amount = "all" if k == n else ks
                    out.append(Verdict("3", r["method"], True, f"{r['method']} destroys {amount} {split} facts "
                                       f"under {crit.name} (rate {rate:.2f}, {ks}, 95% CI from {lo:.2f})"))
                else:
                    out.append(Verdict("3", r["method"], False, f"{r['method']}: no clear destruction of {split} "
                                       f"facts under {crit.name} ({ks}; the interval includes 0; at n = {n:g} a "
                                       f"destructive rate of {destruction_mde(int(n)):.2f} would be found with 80% "
                                       "power)"))
    if untestable:
        out.append(Verdict("3", "", False, f"Destruction not measurable (the base answers none of the facts, n = 0) "
                           f"for: {', '.join(untestable)}"))
    return out


def route_verdicts(routes: pd.DataFrame | None) -> list[Verdict]:
    """One verdict per route treatment whose excess over control lies above 0, or one null verdict."""
    if routes is None or routes.empty or "excess_low" not in routes:
        return []
    ok = routes[routes.excess_low > 0]
    out = [Verdict("routes", r.method, True, f"{r.method}: {r.route} ({r.treatment}, {r.criterion}) recovers "
                   f"beyond its control{f' ({r.control_kind})' if isinstance(getattr(r, 'control_kind', None), str) else ''}"
                   f": excess {ci_text(r.excess, r.excess_low, r.excess_high)}")
           for r in ok.itertuples()]
    n = int(routes.excess.notna().sum())
    if n and not ok.empty:
        out.insert(0, Verdict("routes", "", False, f"{len(ok)} of {n} route treatments recover beyond their control; "
                              f"about {n / 40:.1f} would by chance alone"))
    if n and ok.empty:
        out.append(Verdict("routes", "", False, f"No recovery route recovers beyond its control: all {n} excess "
                           "intervals include 0 or lie below it"))
    return out


def verdicts(rows: list[dict[str, Any]], routes: pd.DataFrame | None = None, n_draws: int = 2) -> list[Verdict]:
    """Every verdict of a study, in finding order (``n_draws``: the random control's draws, for the power note)."""
    return [*focus_verdicts(rows), *recovery_verdicts(rows, n_draws), *destruction_verdicts(rows),
            *route_verdicts(routes)]


# ------------------------------------------------------------------------------------------------------------
# Figure captions: each figure's takeaway, computed from the numbers it plots.
# ------------------------------------------------------------------------------------------------------------
def _names(ms: list[str]) -> str:
    return ", ".join(ms) if ms else "none"


def focus_caption(rows: list[dict[str, Any]]) -> str:
    """Finding 1's figure: how many methods' focus falls, rises or shows no clear change."""
    vs = focus_verdicts(rows)
    by = {t: [v.method for v in vs if v.tag == t] for t in ("falls", "rises", "none")}
    return (f"Focus on the base KeyTokens before and after unlearning (mean share of positive contribution, 95% "
            f"bootstrap CI; axis 0 to 1). Falls for {_names(by['falls'])}; rises for {_names(by['rises'])}; "
            f"no clear change (intervals overlap) for {len(by['none'])} of {len(vs)} methods.")


def control_caption(rows: list[dict[str, Any]], route: str) -> str:
    """Finding 2's control figure of one route: the highest KeyToken recovery and how often KeyTokens beat
    random tokens (paired interval above 0)."""
    best: tuple[float, str] | None = None
    tested = above = 0
    for crit in criteria_of(rows):
        for r in rows:
            rate, k, n = (_num(r, f"recovery_{route}{crit.suffix}{x}") for x in ("", "_k", "_n"))
            rr = _num(r, f"recovery_{route}_random{crit.suffix}")
            if not math.isnan(rate) and n > 0 and (best is None or rate > best[0]):
                best = (rate, f"{r['method']} under {crit.name}: {rate:.2f} ({k:g}/{n:g}; random control {rr:.2f})")
            est, lo, hi = _ci(r, f"specific_{route}{crit.suffix}")
            if not math.isnan(lo):
                tested += 1
                above += lo > 0
    if best is None:
        return f"Route {route}: no eligible forget probes, nothing to recover."
    return (f"Route {route}, best over factors; points are rates with 95% intervals (Wilson; the random control's "
            f"also covers its bootstrap over probes). Highest KeyToken recovery: {best[1]}. KeyTokens beat random "
            f"tokens (paired interval above 0) in {above} of {tested} method x criterion pairs.")


def factor_caption(rates: pd.DataFrame) -> str:
    """The factor sweep: where KeyToken recovery peaks and what the random control reads there."""
    k = rates[rates.condition == "keytokens"]
    if k.empty or k.rate.isna().all():
        return "Recovery over the emphasis factor: no eligible forget probes."
    top = k.loc[k.rate.idxmax()]
    ctrl = rates[(rates.condition == "random") & (rates.method == top.method) & (rates.route == top.route)
                 & (rates.factor == top.factor)]
    c = f"; the random control there reads {float(ctrl.rate.iloc[0]):.2f}" if len(ctrl) else ""
    return (f"Teacher-forced recovery at each emphasis factor (points: KeyTokens with Wilson 95% CI, n = eligible "
            f"forget probes; dashed: random tokens). It peaks at {top.rate:.2f} ({top.k:g}/{top.n:g}) for "
            f"{top.method}, {top.route} x{top.factor:g}{c}.")


def word_kind_caption(table: pd.DataFrame) -> str:
    """Finding 3's figure: for which methods each word kind's mean change has an interval below 0.

    ``table``: method, kind, change (mean), low, high (95% bootstrap over tokens)."""
    parts = []
    for kind, g in table.groupby("kind", sort=False):
        down = list(g[g.high < 0].method)
        parts.append(f"{kind}: {_names(down)}")
    return ("Contribution change on retain probes, unlearned minus base (negative: the unlearned model credits "
            "the token less; points: mean with 95% bootstrap CI over tokens). Methods whose interval lies wholly "
            "below 0, per word kind: " + "; ".join(parts) + ".")


def frontier_caption(points: pd.DataFrame) -> str:
    """The frontier of one route: the range, over methods, of the strongest point's destruction and recovery."""
    last = points.sort_values("strength").groupby("method", sort=False).tail(1)
    if last.empty:
        return "No frontier points."

    def span(col: str) -> str:
        v = last[last[col].notna()] if col in last else last.iloc[:0]
        if v.empty:
            return "not defined (no eligible probes)"
        lo, hi = v.loc[v[col].idxmin()], v.loc[v[col].idxmax()]
        return f"{lo[col]:.2f} ({lo.method}) to {hi[col]:.2f} ({hi.method})"

    return (f"Each method from weak to strong unlearning (labels: strength). At each method's strongest point the "
            f"destructive rate runs {span('destructive')}, KeyToken recovery {span('keytokens')} and the random "
            f"control {span('random')}. Intervals: Wilson 95%.")


def heads_caption(heads: pd.DataFrame, lim: float, top_k: int = 3) -> str:
    """A head-DLA heatmap: its largest |change| heads (the cells that stand out) and the shared colour scale."""
    g = heads.groupby(["layer", "head"])["change"].mean()
    top = g.reindex(g.abs().sort_values(ascending=False).index).head(top_k)
    cells = ", ".join(f"L{int(la)}.H{int(h)} ({v:+.2f})" for (la, h), v in top.items())
    return (f"Direct logit attribution of each head to the answer logit, unlearned minus base, mean over forget "
            f"probes. Largest |change|: {cells}. Colour scale +/-{lim:.2f}, the same for every method.")


def lens_caption(lens: pd.DataFrame, hue: str = "model") -> str:
    """The logit lens: the layer of the largest mean drop (second model minus first) and the final layer's."""
    names = list(dict.fromkeys(lens[hue]))
    if len(names) < 2:
        return "Logit lens of one model."
    wide = lens.pivot_table(index=["probe_id", "layer"], columns=hue, values="score").reset_index()
    d = (wide[names[1]] - wide[names[0]]).groupby(wide.layer).mean()
    worst, final = int(d.idxmin()), int(d.index.max())
    return (f"Answer log-prob read off the residual stream after each layer (shaded: 95% bootstrap CI over "
            f"probes). (b) {names[1]} minus {names[0]}: the mean difference is lowest at layer {worst} "
            f"({d[worst]:+.2f}) and reads {d[final]:+.2f} after the last layer.")


def patch_caption(patch: pd.DataFrame) -> str:
    """A patching heatmap: the layer and token where patching restores most of the LP gap."""
    g = patch.groupby(["kind", "layer", "position"])["restoration"].mean()
    if g.empty:
        return "No patching results."
    (kind, layer, pos), v = g.idxmax(), float(g.max())
    tok = patch[patch.position == pos].token.iloc[0]
    return (f"Share of the base-minus-unlearned LP gap restored by patching one base activation into the "
            f"unlearned model (1 = fully restored). Largest: {kind} at layer {int(layer)}, token {tok!r} ({v:.2f}).")
