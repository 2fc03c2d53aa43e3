"""TOFU's finetune-then-forget at a size where its metrics mean something, on SmolLM2, offline: 12 invented people
x 5 facts (3 forget people = 15 facts, 9 retain = 45), taught to the model ("full") and, the retain people only, to
a second copy ("retain", forget quality's reference); then two of the paper's methods forget the forget people, and
the findings (the demo's budget, 12 probes per split) and TOFU's metrics run on the result.

    python analyses/tofu_study.py [--people 12] [--facts 5] [--steps 120] [--methods ga_klr,npo_klr]
                                  [--out unpact_out/tofu_study]

``--steps`` keeps the pilot's ~16 passes over the taught facts (the pilot: 20 facts, 40 steps of batch 8; here 60
facts, 120 steps), fixed before the run. Writes ``analyses/results/tofu_study_smollm2_summary.csv`` (the
findings' summary, one row per method) and ``tofu_study_smollm2.csv`` (TOFU's metrics per model and split, and
the study's wall time); the study resumes. ``--no-task`` skips TOFU's metrics (their greedy answers, 200 new
tokens as open-unlearning's setting, took about 8 min for three models on 2 cores with the KV cache).

Measured (2 cores): 2,971 s for the whole study, fresh; docs/benchmarks.md has the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from unpact_mech.cli import main as unpact
from unpact_mech.core.io import read_table, write_table

RESULT = Path(__file__).parent / "results" / "tofu_study_smollm2.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=12)
    ap.add_argument("--facts", type=int, default=5)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--methods", default="ga_klr,npo_klr", help="comma-separated")
    ap.add_argument("--out", default="unpact_out/tofu_study")
    ap.add_argument("--no-task", action="store_true",
                    help="skip TOFU's metrics (their 200-token greedy answers: about 8 min on 2 cores)")
    ap.add_argument("--result", default=str(RESULT))
    a = ap.parse_args()
    t0 = time.perf_counter()
    rc = unpact(["study", "--probes", f"fictitious:{a.people}:0:{a.facts}", "--finetune", "--finetune-steps",
                 str(a.steps), "--methods", a.methods, *([] if a.no_task else ["--task", "tofu"]), "--no-patch",
                 "--out", a.out])
    if rc != 0:
        raise SystemExit(rc)
    wall = time.perf_counter() - t0
    summary = read_table(Path(a.out) / "summary.csv")
    write_table(summary, Path(a.result).with_name(Path(a.result).stem + "_summary.csv"))
    print(summary.round(3).to_string(index=False))
    print(f"study wall time {wall:.0f} s (cached stages count as their load time)")
    if a.no_task:
        return
    tm = read_table(Path(a.out) / "task_metrics.csv")
    cols = [c for c in ("role", "split", "treatment", "positions", "metric", "value", "n", "against") if c in tm]
    table = tm[cols].assign(people=a.people, facts_per_person=a.facts, finetune_steps=a.steps,
                            study_wall_s=round(wall, 1))
    write_table(table, Path(a.result))
    plain = tm[tm["treatment"].isna()] if "treatment" in tm else tm
    print(pd.pivot_table(plain, index=["split", "metric"], columns="role", values="value").round(4).to_string())
    if "treatment" in tm:  # TOFU's forget metrics under emphasis on KeyTokens vs on as many random tokens
        print(pd.pivot_table(tm[tm["treatment"].notna()], index=["role", "metric"],
                             columns=["treatment", "positions"], values="value").round(4).to_string())


if __name__ == "__main__":
    main()
