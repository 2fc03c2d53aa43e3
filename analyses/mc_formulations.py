"""Which multiple-choice formulation a model can be analysed in (OLMES: lettered vs cloze), and what unlearning
does to it: the built-in facts as four-way multiple choice (distractors: other answers of the same domain),
scored lettered (lm-evaluation-harness's WMDP prompt) and cloze, for the base and for unlearned checkpoints.

    python analyses/mc_formulations.py [--checkpoints unpact_out/full/checkpoints] [--split forget] [--out unpact_out/mc]

Accuracy is k/n with a Wilson 95% interval against chance 0.25; a formulation is usable for the findings only
where the base model's interval lies above chance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from unpact_mech.core.io import write_table
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.evals.multiple_choice import FORMULATIONS, as_multiple_choice, mc_accuracy, mc_table
from unpact_mech.model.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--checkpoints", default=None, help="a study's checkpoints folder (each subfolder: one method)")
    ap.add_argument("--split", default="forget", help="built-in facts of this split (or 'all')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="unpact_out/mc")
    a = ap.parse_args()
    facts = load_benchmark("facts")
    probes = as_multiple_choice([p for p in facts if a.split == "all" or p.split == a.split], 4, a.seed)
    models = [("base", a.model)]
    if a.checkpoints:
        models += [(d.name, str(d)) for d in sorted(Path(a.checkpoints).iterdir()) if (d / "unpact.json").exists()]
    rows, tables = [], []
    for name, spec in models:
        subject = load_model(spec)
        for f in FORMULATIONS:
            t = mc_table(subject, probes, f).assign(model=name)
            tables.append(t)
            for norm in (False, True):
                acc, chance = mc_accuracy(t, norm)
                rows.append({"model": name, "formulation": f, "score": "acc_norm" if norm else "acc", "k": acc.k,
                             "n": acc.n, "accuracy": acc.rate, "low": acc.low, "high": acc.high, "chance": chance,
                             "above_chance": acc.low > chance})
        print(pd.DataFrame(rows[-4:]).round(3).to_string(index=False), flush=True)
    out = Path(a.out)
    write_table(pd.DataFrame(rows), out / "accuracy.csv")
    write_table(pd.concat(tables, ignore_index=True).drop(columns=["lls"]), out / "per_probe.csv")
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
