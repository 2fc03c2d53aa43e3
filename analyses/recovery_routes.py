"""The full "how superficial is the forgetting" table: every recovery route, both correctness criteria, for each
unlearned checkpoint of a demo run (the demo judges the new routes teacher forced only, for time).

    python analyses/recovery_routes.py [--demo-out unpact_out/demo] [--methods ga_gdr,...] [--out unpact_out/routes]
    python analyses/recovery_routes.py --train all --demo-out unpact_out/full --out unpact_out/routes_full

``--train PER_SPLIT`` (a number or ``all``) first writes the study's data split and checkpoints into
``--demo-out`` with the demo's settings, without the findings (the checkpoints the full study trains, minutes
instead of hours); the emphasis route is then measured here rather than read from the study's tables.

Resumable: one table per method (``OUT/METHOD.csv``), skipped when present; the combined table is ``OUT/routes.csv``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace


def main() -> None:
    from unpact_mech.analysis import Analysis
    from unpact_mech.core.errors import check_choices
    from unpact_mech.core.io import read_table, write_table
    from unpact_mech.core.options import positive_int
    from unpact_mech.evals.loaders import load_benchmark
    from unpact_mech.model.loading import load_model
    from unpact_mech.routes import RECOVERY_ROUTES, recover
    from unpact_mech.study import PAPER_METHODS, budget_order
    from unpact_mech.study.base import LazyBase
    from unpact_mech.study.prepare import data_stage
    from unpact_mech.study.unlearn import unlearn_stage
    from unpact_mech.unlearning import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-out", default="unpact_out/demo")
    ap.add_argument("--methods", default=",".join(PAPER_METHODS))
    ap.add_argument("--out", default="unpact_out/routes")
    ap.add_argument("--bits", default="8,4,3")
    ap.add_argument("--quantizers", default="rtn,nf4,fp4,int8", help="rtn (at --bits) and bitsandbytes nf4, fp4, int8")
    ap.add_argument("--relearn-steps", default="1,2,4,8")
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--n-control", type=int, default=48)
    ap.add_argument("--routes", default="emphasis,quantize,relearn,in_context",
                    help="routes to run (emphasis at full size is also the study's finding 2)")
    ap.add_argument("--train", default=None, help="train the checkpoints first: known facts per split, or 'all'")
    a = ap.parse_args()
    demo, out = Path(a.demo_out), Path(a.out)
    methods = check_choices(a.methods.split(","), sorted(METHODS), "methods")
    routes = tuple(check_choices(a.routes.split(","), sorted(RECOVERY_ROUTES), "routes"))
    if a.train is not None:
        per_split = None if a.train == "all" else positive_int()(a.train)
        lazy = LazyBase("smollm2-135m")
        split, _ = data_stage(lazy, demo, load_benchmark("facts"), True, per_split)
        for m in methods:
            unlearn_stage(lazy, m, split["forget"], split["retain"], demo, None, 0.25)
    elif not (demo / "data.json").exists():
        raise SystemExit(f"{demo / 'data.json'} not found: run the demo (or unlearning_dilemma.py) with --out {demo} "
                         "first, or pass --train N|all to train the checkpoints here")
    ids = json.loads((demo / "data.json").read_text())["ids"]
    pool = load_benchmark("facts")
    by_id = {p.id: p for p in pool}
    data = {s: [by_id[i] for i in v] for s, v in ids.items()}
    used = {i for v in ids.values() for i in v}
    control = [p for p in budget_order(pool) if p.id not in used][: a.n_control]
    base = load_model("smollm2-135m").memoize()
    an = Analysis(base, data["forget"] + data["retain"] + data["general"])
    cache: dict = {}
    frames = []
    for m in methods:
        f = out / f"{m}.csv"
        if not f.exists():
            unl = load_model(str(demo / "checkpoints" / m)).memoize()
            emph = None
            if (demo / m / "recovery_rates.csv").exists():
                emph = SimpleNamespace(rates=read_table(demo / m / "recovery_rates.csv"),
                                       sweep=read_table(demo / m / "emphasis_sweep.csv"))
            opts = {"emphasis": {"result": emph} if emph is not None else {},
                    "quantize": {"bits": [int(b) for b in a.bits.split(",")], "quantizers": a.quantizers.split(",")},
                    "relearn": {"steps": [int(k) for k in a.relearn_steps.split(",")]},
                    "in_context": {"shots": a.shots}}
            write_table(recover(an, unl, data["forget"], control, data["retain"], data["general"][: a.shots],
                                routes, options=opts, cache=cache,
                                progress=True, collateral=data["general"][a.shots:]).assign(method=m), f)
        frames.append(read_table(f))
        print(f"[routes] {m} done", flush=True)
    import pandas as pd

    table = pd.concat(frames, ignore_index=True)
    write_table(table, out / "routes.csv")
    cols = ["method", "route", "treatment", "criterion", "n", "recovered_k", "control_kind", "control_k", "control_n", "excess",
            "excess_low", "excess_high", "base_kept_k"]
    print(table[cols].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
