"""Per unlearning method on the base model: forget / retain fact top-1 accuracy and LP before and after, wall time.

    python analyses/unlearning_evidence.py --methods ga_gdr,npo_gdr --out unpact_out/demo
(checkpoints already in OUT/checkpoints/METHOD are reused.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from unpact_mech.data import filter_known, load_benchmark
from unpact_mech.demo import PAPER_METHODS, SETTINGS
from unpact_mech.models import load_model, read_provenance
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import probe_table
from unpact_mech.unlearning import unlearn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(PAPER_METHODS))
    ap.add_argument("--out", default="unpact_out/demo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--target", type=float, default=0.25)
    a = ap.parse_args()
    base = load_model(a.model)
    known, _ = filter_known(base, load_benchmark("facts"))
    forget = [p for p in known if p.split == "forget"]
    retain = [p for p in known if p.split == "retain"]
    tf, tr = tokenize_probes(base, forget), tokenize_probes(base, retain)
    bf, br = probe_table(base, tf), probe_table(base, tr)
    rows = []
    for m in a.methods.split(","):
        ckpt = Path(a.out) / "checkpoints" / m
        t0 = time.perf_counter()
        if not (ckpt / "unpact.json").exists():
            unlearn(base, m, forget, retain, ckpt, progress=False, **{"steps": a.steps, "target_forget_acc": a.target,
                                                                      "check_every": 2, **SETTINGS.get(m, {})})
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
