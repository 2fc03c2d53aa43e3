"""Planted effects with known answers (``unpact_mech/findings/planted.py``): a forgetting recoverable by construction (the
base model with its attention to each probe's KeyTokens suppressed) and one that is not (facts the base never
knew), both run through the full recovery analysis, for several suppression strengths.

The recovery analysis passes when emphasis recovers the suppression (KeyTokens-minus-random interval above 0)
and not the erasure. Writes ``planted_per_probe.csv`` and ``planted_summary.csv``.

    python analyses/planted.py --model smollm2-135m --n 12 --strengths 0.5,0.25,0.125 --out unpact_out/planted
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from unpact_mech.analysis import Analysis
from unpact_mech.core.io import write_table
from unpact_mech.core.options import choice_list, positive_int
from unpact_mech.evals.loaders import filter_known, load_benchmark
from unpact_mech.findings.planted import planted_recovery, planted_summary
from unpact_mech.model.loading import load_model
from unpact_mech.report.tables import format_rates
from unpact_mech.study.settings import budget_order


def strengths(text: str) -> list[float]:
    vals = [float(x) for x in text.split(",")]
    if not vals or any(not 0 < v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"strengths must be numbers in (0, 1), got {text!r}")
    return vals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=positive_int(1000), default=12, help="known facts to suppress, and unknown to score")
    ap.add_argument("--strengths", type=strengths, default=[0.5, 0.25, 0.125],
                    help="attention factors on the KeyTokens, each in (0, 1)")
    ap.add_argument("--criteria", type=choice_list(["teacher_forced", "generation"]), default=["teacher_forced"])
    ap.add_argument("--out", default="unpact_out/planted")
    a = ap.parse_args()
    base = load_model(a.model, verbose=True)
    planted = load_model(a.model)  # a second Subject over the same weights: hooks on it leave the base alone
    pool = budget_order(load_benchmark("facts"))[:200]
    known = {p.id for p in filter_known(base, pool)[0]}
    rec = [p for p in pool if p.id in known][: a.n]
    erased = [p for p in pool if p.id not in known][: a.n]
    an = Analysis(base, rec + erased)
    frames = [planted_recovery(an, planted, rec, erased, strength=s, criteria=a.criteria) for s in a.strengths]
    per = pd.concat(frames, ignore_index=True)
    write_table(per, Path(a.out) / "planted_per_probe.csv")
    summ = pd.concat([planted_summary(g).assign(strength=s) for s, g in per.groupby("strength", sort=False)],
                     ignore_index=True)
    write_table(summ, Path(a.out) / "planted_summary.csv")
    show = summ.assign(keytokens_n=summ.n, random_n=summ.n, random_k=summ.random * summ.n)
    print(format_rates(show).drop(columns=["random_k"], errors="ignore").to_string(index=False))


if __name__ == "__main__":
    main()
