"""The demo's learning-rate rule, applied: for each method, lr0 * 2^(-k/2) with the smallest k at which the method
needs at least 3 steps to reach the forget target on the demo's forget set (``experiments.unlearn.calibrate_lr``).

Run it after a change to the losses or the labelled tokens, then copy the printed rates into
``experiments.settings.SETTINGS``; the rule and its starting rates (``START_LR``) were fixed before any finding
was measured, so the rates follow from it and not from the findings.

    python analyses/calibrate.py [--methods ga_gdr,ga_klr,npo_gdr,npo_klr,rmu] [--out unpact_out/calibrate]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unpact_mech.core.io import atomic_write_json, check_output
from unpact_mech.core.options import choice_list
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.study import PER_SPLIT, LazyBase, data_stage
from unpact_mech.study.settings import START_LR
from unpact_mech.study.unlearn import calibrate_lr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="ga_gdr,ga_klr,npo_gdr,npo_klr,rmu", type=choice_list(sorted(START_LR)))
    ap.add_argument("--out", default="unpact_out/calibrate")
    ap.add_argument("--target", type=float, default=0.25)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    check_output(out / "calibration.json", overwrite=a.overwrite)
    lazy = LazyBase(a.model)
    data, _ = data_stage(lazy, out, load_benchmark("facts"), True, PER_SPLIT)
    rows = [calibrate_lr(lazy.get(), m, data["forget"], data["retain"], START_LR[m], a.target) for m in a.methods]
    atomic_write_json(out / "calibration.json", rows)
    for r in rows:
        print(f"{r['method']:8s} lr {r['lr']:.3g} (k={r['k']}, {r['steps']} steps to the target)")


if __name__ == "__main__":
    main()
