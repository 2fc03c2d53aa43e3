"""The study on a WMDP-format benchmark, offline, at a size where its numbers mean something: the 519 built-in facts
as four-way multiple choice in WMDP's schema (``meta['choices']``, ``meta['answer_index']``; distractors: other
answers of the same domain, seed 0, :func:`unpact_mech.evals.multiple_choice.as_multiple_choice`), run through
``unpact study --task wmdp``. WMDP itself is on the hub; this is the same pipeline on the same schema.

    python analyses/wmdp_study.py [--methods rmu,npo_klr] [--per-split 24] [--out unpact_out/wmdp_study]

The study keeps the facts the base model answers by the benchmark's own rule (the gold choice has the largest
cloze log-likelihood), unlearns the forget split with RMU (WMDP's own method) and NPO_KLR, and judges every
finding and every recovery route by ``multiple_choice`` beside the two universal criteria; the task stage scores
base and unlearned models lettered (lm-evaluation-harness's prompt) and cloze against chance. All settings are
the demo's, fixed before the run (``--per-split 24``: twice the demo's 12, for the intervals).

Writes ``analyses/results/wmdp_study_smollm2_summary.csv`` (the findings' summary, one row per method),
``wmdp_study_smollm2.csv`` (the task's accuracies) and ``wmdp_study_smollm2_routes.csv`` (the recovery routes
under ``multiple_choice``); the study resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from unpact_mech.cli import main as unpact
from unpact_mech.core.io import read_table, write_table
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.evals.multiple_choice import as_multiple_choice
from unpact_mech.probes import save_probes

RESULT = Path(__file__).parent / "results" / "wmdp_study_smollm2.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="rmu,npo_klr", help="comma-separated")
    ap.add_argument("--per-split", default="24")
    ap.add_argument("--seed", type=int, default=0, help="the distractors' draw")
    ap.add_argument("--out", default="unpact_out/wmdp_study")
    ap.add_argument("--result", default=str(RESULT))
    a = ap.parse_args()
    out = Path(a.out)
    probes = out / "probes_mc.jsonl"
    if not probes.exists():  # the same facts and seed give the same file; the study's stamps see any change
        save_probes(as_multiple_choice(load_benchmark("facts"), 4, a.seed), probes)
    t0 = time.perf_counter()
    rc = unpact(["study", "--model", a.model, "--probes", str(probes), "--task", "wmdp", "--methods", a.methods,
                 "--per-split", a.per_split, "--no-patch", "--out", str(out)])
    if rc != 0:
        raise SystemExit(rc)
    wall = time.perf_counter() - t0
    res = Path(a.result)
    summary = read_table(out / "summary.csv").assign(study_wall_s=round(wall, 1))
    write_table(summary, res.with_name(res.stem + "_summary.csv"))
    tm = read_table(out / "task_metrics.csv")
    write_table(tm, res)
    routes = pd.concat([read_table(out / m / "recovery_routes.csv").assign(method=m) for m in a.methods.split(",")],
                       ignore_index=True)
    mc = routes[routes.criterion == "multiple_choice"]
    write_table(mc, res.with_name(res.stem + "_routes.csv"))
    cols = [c for c in ("method", "forget_acc_mc", "forget_acc_mc_k", "forget_acc_mc_n", "forget_acc",
                        "recovery_embed_mc", "recovery_embed_random_mc", "destructive_retain_mc") if c in summary]
    print(summary[cols].round(3).to_string(index=False))
    print(pd.pivot_table(tm, index=["split", "metric"], columns="role", values="value").round(3).to_string())
    print(mc[["method", "route", "treatment", "control_kind", "recovered_k", "n", "control_k", "control_n", "excess",
              "excess_low", "excess_high"]].round(3).to_string(index=False))
    print(f"study wall time {wall:.0f} s (cached stages count as their load time)")


if __name__ == "__main__":
    main()
