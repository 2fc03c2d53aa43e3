"""Verdicts computed from the numbers, by stated rules (no verdict text is written by hand).

Rules, per method and criterion (95% intervals throughout):

* **Finding 1 (focus):** focus *falls* if the after-unlearning interval lies wholly below the before interval,
  *rises* if wholly above, else *no clear change* (the intervals overlap).
* **Finding 2 (recovery):** an emphasis route is *KeyToken-specific* if the paired KeyTokens-minus-random
  interval (``specific_*``) lies wholly above 0, *worse than random* if wholly below, else *null*.
* **Finding 3 (destruction):** a method *destroys* retain (general) facts if the Wilson interval of the
  destructive rate excludes 0; "all" when k = n.
* **Recovery routes:** a route treatment *recovers beyond its control* if the excess interval lies above 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from unpact_mech.criteria import CRITERIA
from unpact_mech.emphasis import EMPHASIS_NAMES
from unpact_mech.report.tables import ci_text, finite


@dataclass(frozen=True)
class Verdict:
    finding: str  # "1", "2", "3" or "routes"
    method: str  # a method, or "" for a verdict over all methods
    positive: bool  # the rule found an effect
    text: str


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
            word, pos = "falls", True
        elif al > bh:
            word, pos = "rises", True
        else:
            word, pos = "shows no clear change (the intervals overlap)", False
        out.append(Verdict("1", r["method"], pos, f"{r['method']}: focus on the base KeyTokens {word}: "
                           f"{b:.2f} ({bl:.2f} to {bh:.2f}) before, {a:.2f} ({al:.2f} to {ah:.2f}) after"))
    return out


def recovery_verdicts(rows: list[dict[str, Any]]) -> list[Verdict]:
    out, tested = [], 0
    for crit in CRITERIA.values():
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
    if tested and not any(v.positive for v in out):
        out.insert(0, Verdict("2", "", False, f"No emphasis route is KeyToken-specific: of {tested} paired "
                              "KeyTokens-minus-random intervals (method x route x criterion), none lies above 0"))
    elif tested:
        k = sum(v.positive for v in out)
        out.insert(0, Verdict("2", "", False, f"{k} of {tested} paired KeyTokens-minus-random intervals lie above 0; "
                              f"with no effect anywhere, about {tested / 40:.1f} would by chance (each 95% interval "
                              "misses 0 upwards 2.5% of the time), so read single positives with care"))
    if rows and not tested:
        out.append(Verdict("2", "", False, "Recovery could not be tested: no forget probe was eligible (answered by "
                           "the base and not by the unlearned model) for any method and criterion"))
    return out


def destruction_verdicts(rows: list[dict[str, Any]]) -> list[Verdict]:
    out: list[Verdict] = []
    untestable = []
    for crit in CRITERIA.values():
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
                                       f"facts under {crit.name} ({ks}; the interval includes 0)"))
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
                   f"beyond its control: excess {ci_text(r.excess, r.excess_low, r.excess_high)}")
           for r in ok.itertuples()]
    n = int(routes.excess.notna().sum())
    if n and not ok.empty:
        out.insert(0, Verdict("routes", "", False, f"{len(ok)} of {n} route treatments recover beyond their control; "
                              f"about {n / 40:.1f} would by chance alone"))
    if n and ok.empty:
        out.append(Verdict("routes", "", False, f"No recovery route recovers beyond its control: all {n} excess "
                           "intervals include 0 or lie below it"))
    return out


def verdicts(rows: list[dict[str, Any]], routes: pd.DataFrame | None = None) -> list[Verdict]:
    """Every verdict of a study, in finding order."""
    return [*focus_verdicts(rows), *recovery_verdicts(rows), *destruction_verdicts(rows), *route_verdicts(routes)]
