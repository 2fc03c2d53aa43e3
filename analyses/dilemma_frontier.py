"""The dilemma frontier in full: every method traced along its unlearning trajectory on all known facts.

For each method, training runs ``--steps`` steps *without* stopping at the forget target, and every
``--check-every`` steps the snapshot is measured (:func:`unpact_mech.routes.frontier.frontier_point`): forget accuracy,
recovery on KeyTokens, on random non-KeyTokens and on function words (best over ``--factors``) and the
destructive rate on retain + general facts, under each ``--criteria``. Task Vector's strengths are fractions
of its calibrated negation scale. Results: ``OUT/frontier.csv`` (resumable per method) and one figure per
route and criterion. The demo runs a budget version of the same measurement.

    python analyses/dilemma_frontier.py --out unpact_out/frontier                 # every method, all facts
    python analyses/dilemma_frontier.py --methods ga_gdr,npo_gdr --per-split 30   # a quicker look
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from unpact_mech.analysis import Analysis
from unpact_mech.core.io import atomic_write_json, check_output, write_table
from unpact_mech.evals.loaders import filter_known, load_benchmark
from unpact_mech.model.loading import load_model, read_provenance
from unpact_mech.report.figures import frontier, save_figure
from unpact_mech.routes.frontier import frontier_point, interpolated, snapshot_subject
from unpact_mech.study import PAPER_METHODS, SETTINGS, budget_order
from unpact_mech.unlearning import unlearn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(PAPER_METHODS))
    ap.add_argument("--out", default="unpact_out/frontier")
    ap.add_argument("--steps", type=int, default=12, help="training steps per method (no early stop)")
    ap.add_argument("--check-every", type=int, default=2, help="a frontier point every this many steps")
    ap.add_argument("--per-split", type=int, default=None, help="at most this many known facts per split")
    ap.add_argument("--factors", default="1,2,4,8")
    ap.add_argument("--modes", "--routes", dest="modes", default="embed,attention")  # emphasis modes (--routes: old name)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--criteria", default="teacher_forced,generation")
    ap.add_argument("--tv-fractions", default="0.25,0.5,0.75,1,1.5")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    factors = [float(x) for x in a.factors.split(",")]
    routes, criteria = a.modes.split(","), a.criteria.split(",")
    base = load_model(a.model, verbose=True).memoize()
    known, report = filter_known(base, budget_order(load_benchmark("facts")))
    write_table(report, out / "known.csv")
    data = {s: [p for p in known if p.split == s][: a.per_split] for s in ("forget", "retain", "general")}
    print("[frontier] known facts per split:", {s: len(v) for s, v in data.items()}, flush=True)
    an = Analysis(base, data["forget"] + data["retain"] + data["general"])
    others = data["retain"] + data["general"]

    def point(subject, strength):
        return frontier_point(an, subject, data["forget"], others, strength, factors, routes, a.draws, criteria)

    frames = []
    for method in a.methods.split(","):
        done = out / f"{method}.json"
        if done.exists():  # resume: a finished method is not recomputed
            frames.append(pd.DataFrame(json.loads(done.read_text())))
            continue
        ckpt = out / "checkpoints" / method
        check_output(ckpt, kind="dir", overwrite=True)
        points: list[dict] = []

        def snap(step, model, method=method, points=points):
            if method != "task_vector":
                name = f"{method}@{step}"
                points.extend(point(snapshot_subject(model, base.tokenizer, name, base.source), float(step)))
                print(f"[frontier] {name}: {points[-1]}", flush=True)

        settings = {**SETTINGS.get(method, {}), "steps": a.steps, "check_every": a.check_every,
                    "checkpoint_every": 0}
        if method == "task_vector":
            settings.update(steps=6, target_forget_acc=0.25)
        path = unlearn(base, method, data["forget"], data["retain"], ckpt, on_snapshot=snap, overwrite=True,
                       **settings)
        if method == "task_vector":
            scale = read_provenance(path)["resolved"].get("tv_scale", 1.0)
            for frac in (float(x) for x in a.tv_fractions.split(",")):
                points.extend(point(interpolated(base, path, frac, f"{method}@{frac:g}a"), frac * scale))
        atomic_write_json(done, [{**p, "method": method} for p in points])
        frames.append(pd.DataFrame(points).assign(method=method))
    df = pd.concat(frames, ignore_index=True)
    write_table(df, out / "frontier.csv")
    for crit in criteria:
        for route in routes:
            g = df[(df.criterion == crit) & (df.route == route)]
            save_figure(frontier(g, title=f"Dilemma frontier ({route}, {crit})"), out / f"frontier_{route}_{crit}.png")
    print(df.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
