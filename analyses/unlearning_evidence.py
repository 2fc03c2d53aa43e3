"""Per unlearning method on the base model: forget / retain fact top-1 accuracy and LP before and after, wall time.

    python analyses/unlearning_evidence.py --methods ga_gdr,npo_gdr --out unpact_out/demo
(checkpoints already in OUT/checkpoints/METHOD are reused.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from unpact_mech.evals.loaders import filter_known, load_benchmark
from unpact_mech.model.loading import load_model, read_provenance
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import probe_table
from unpact_mech.study import LazyBase, add_run_arguments, unlearn_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    add_run_arguments(ap, "unpact_out/demo")
    a = ap.parse_args()
    base = load_model(a.model)
    known, _ = filter_known(base, load_benchmark("facts"))
    forget = [p for p in known if p.split == "forget"]
    retain = [p for p in known if p.split == "retain"]
    tf, tr = tokenize_probes(base, forget), tokenize_probes(base, retain)
    bf, br = probe_table(base, tf), probe_table(base, tr)
    rows = []
    for m in a.methods:
        t0 = time.perf_counter()
        ckpt = unlearn_stage(LazyBase(base), m, forget, retain, Path(a.out), a.steps, a.target, progress=False)
        prov = read_provenance(ckpt)
        u = load_model(str(ckpt))
        uf, ur = probe_table(u, tf), probe_table(u, tr)
        rows.append({"method": m, "lr": prov["hyperparameters"]["lr"], "steps": prov["steps"],
                     "stopped_at": prov.get("stopped_at"), "train_s": prov.get("train_seconds"),
                     "forget_acc": f"{bf.fact_top1.mean():.2f}->{uf.fact_top1.mean():.2f}",
                     "forget_lp": f"{bf.lp.mean():.2f}->{uf.lp.mean():.2f}",
                     "retain_acc": f"{br.fact_top1.mean():.2f}->{ur.fact_top1.mean():.2f}",
                     "retain_lp": f"{br.lp.mean():.2f}->{ur.lp.mean():.2f}",
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(rows[-1], flush=True)
    with pd.option_context("display.width", 200):
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
