"""Which built-in facts does a model know, per domain, split and probe format, under both correctness criteria.

Teacher forced: every fact-span token is top-1 given the gold prefix. Generation: the greedy answer's ROUGE-L
recall of the fact span is at least ``metrics.GEN_THRESHOLD`` or the span appears in it.

    python analyses/fact_coverage.py --model smollm2-135m --out unpact_out/coverage
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from unpact_mech.core.io import write_table
from unpact_mech.evals.criteria import generation_table
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.model.loading import load_model
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import probe_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--formats", default="chat,plain")
    ap.add_argument("--out", default="unpact_out/coverage")
    a = ap.parse_args()
    m = load_model(a.model, verbose=True)
    facts = load_benchmark("facts")
    frames = []
    for fmt in a.formats.split(","):
        tps = tokenize_probes(m, facts, fmt)
        t = probe_table(m, tps)[["probe_id", "split", "fact_top1"]]
        g = generation_table(m, tps)[["probe_id", "generated", "gen_correct"]]
        frames.append(t.merge(g, on="probe_id").assign(format=fmt, domain=[p.domain for p in facts]))
    df = pd.concat(frames, ignore_index=True)
    write_table(df, Path(a.out) / "answers.csv")
    table = df.groupby(["format", "domain"]).agg(facts=("probe_id", "count"), teacher_forced=("fact_top1", "sum"),
                                                 generation=("gen_correct", "sum"),
                                                 both=("fact_top1", lambda s: int((s & df.loc[s.index, "gen_correct"]).sum())))
    total = df.groupby("format").agg(facts=("probe_id", "count"), teacher_forced=("fact_top1", "sum"),
                                     generation=("gen_correct", "sum"))
    write_table(table.reset_index(), Path(a.out) / "coverage.csv")
    print(table.to_string())
    print(total.to_string())
    print(df.groupby(["format", "split"])[["fact_top1", "gen_correct"]].sum().to_string())


if __name__ == "__main__":
    main()
