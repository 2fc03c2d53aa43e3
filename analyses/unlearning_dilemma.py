"""The unlearning dilemma on one base model (what `unpact demo` runs): unlearn known facts with each method,
then measure forgetting, keyword focus (finding 1), recovery by emphasis (finding 2), destruction (finding 3),
localisation and patching; writes tables, figures and report.html.

    python analyses/unlearning_dilemma.py --methods ga_gdr,npo_gdr --out unpact_out/dilemma
    python analyses/unlearning_dilemma.py --per-split all --out unpact_out/full     # every known fact (hours)
"""

from __future__ import annotations

import argparse

import pandas as pd

from unpact_mech.core.options import per_split
from unpact_mech.study import PER_SPLIT, add_run_arguments, run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_run_arguments(ap, "unpact_out/dilemma")
    ap.add_argument("--no-patch", action="store_true")
    ap.add_argument("--per-split", type=per_split, default=PER_SPLIT,
                    help=f"known facts per split (default {PER_SPLIT}, the demo's), or 'all'")
    a = ap.parse_args()
    t = run_demo(a.model, a.methods, a.out, a.steps, a.target, patch=not a.no_patch, on_change=a.on_change,
                 per_split=a.per_split)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(t.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
