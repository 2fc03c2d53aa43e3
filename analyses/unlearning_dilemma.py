"""The unlearning dilemma on one base model: unlearn known facts with each method, then measure forgetting,
keyword focus (finding 1), recovery by emphasis (finding 2), destruction (finding 3) and patching.

    python analyses/unlearning_dilemma.py --methods ga_gdr,npo_gdr --out unpact_out/dilemma
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from unpact_mech.data import load_benchmark
from unpact_mech.findings import destruction, function_word_penalisation, recovery
from unpact_mech.io import atomic_write_json, write_table
from unpact_mech.metrics import accuracy
from unpact_mech.models import load_model, read_provenance
from unpact_mech.patching import patch_positions
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import probe_table
from unpact_mech.tracking import compare
from unpact_mech.unlearning import unlearn

PAPER_METHODS = "ga_gdr,ga_klr,npo_gdr,npo_klr,task_vector,rmu"
SETTINGS = {  # per method: CPU-sized settings (lr, max steps); all stop at the same forget target
    "ga_gdr": {"lr": 1e-5}, "ga_klr": {"lr": 1e-5}, "npo_gdr": {"lr": 2e-5}, "npo_klr": {"lr": 2e-5},
    "simnpo": {"lr": 2e-5}, "idk_dpo": {"lr": 2e-5}, "task_vector": {"lr": 3e-5, "tv_scale": 1.0},
    "rmu": {"lr": 1e-4}, "ga": {"lr": 1e-5}, "npo": {"lr": 2e-5},
}


def known(subject, probes):
    t = probe_table(subject, tokenize_probes(subject, probes)).set_index("probe_id")
    return [p for p in probes if t.fact_top1[p.id]]


def run(model: str, methods: list[str], out: Path, steps: int, target: float, patch: bool) -> pd.DataFrame:
    base = load_model(model, verbose=True)
    allp = load_benchmark("facts")
    kn = known(base, allp)
    forget = [p for p in kn if p.split == "forget"]
    retain = [p for p in kn if p.split == "retain"]
    general = [p for p in kn if p.split == "general"]
    print(f"base knows {len(forget)} forget, {len(retain)} retain, {len(general)} general facts")
    rows = []
    for m in methods:
        ckpt = out / "checkpoints" / m
        t0 = time.perf_counter()
        if not (ckpt / "unpact.json").exists():
            unlearn(base, m, forget, retain, ckpt, steps=steps, target_forget_acc=target, check_every=2,
                    **SETTINGS.get(m, {}))
        prov = read_provenance(ckpt)
        unl = load_model(str(ckpt))
        f_tab = probe_table(unl, tokenize_probes(unl, forget))
        f_base = probe_table(base, tokenize_probes(base, forget))
        cmp_f = compare(base, unl, forget)
        _, rates = recovery(base, unl, forget, factors=(1.0, 2.0, 4.0, 8.0))
        write_table(rates, out / m / "recovery_rates.csv")
        dtab, drates = destruction(base, unl, retain + general)
        cmp_r = compare(base, unl, retain)
        fw = function_word_penalisation(cmp_r)
        write_table(fw, out / m / "function_words.csv")
        fw_mean = fw.groupby("kind")["change"].mean().to_dict()
        best = rates[rates.factor.astype(str) == "best"].set_index("route")
        row = {
            "method": m, "steps": prov["steps"], "stopped_at": prov.get("stopped_at"),
            "train_s": prov.get("train_seconds"),
            "forget_acc": accuracy(list(f_tab.fact_top1)).rate, "forget_lp_before": f_base.lp.mean(),
            "forget_lp_after": f_tab.lp.mean(),
            "retain_acc": 1 - drates["retain"].rate if "retain" in drates else float("nan"),
            "focus_before": cmp_f.summary["mean_focus_base"], "focus_after": cmp_f.summary["mean_focus_unlearned"],
            "keytoken_jaccard": cmp_f.summary["mean_keytoken_jaccard"],
            "recovery_embed": str(best.loc["embed"].k) + "/" + str(best.loc["embed"].n),
            "recovery_attention": str(best.loc["attention"].k) + "/" + str(best.loc["attention"].n),
            "recovery_prompt": "/".join(str(int(best.loc[r].k)) for r in best.index if r.startswith("prompt"))
            + f" of {int(best.loc['embed'].n)}",
            "destructive_retain": str(drates.get("retain")), "destructive_general": str(drates.get("general")),
            "fw_change": fw_mean.get("function word"), "key_change": fw_mean.get("KeyToken"),
            "other_change": fw_mean.get("other"), "wall_s": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row, default=str, indent=1), flush=True)
        if patch:
            tp = tokenize_probes(base, forget[:1])[0]
            pt = patch_positions(base, unl, tp, ["resid_pre", "attn_out", "mlp_out"], list(range(0, base.cfg.n_layers, 3)))
            write_table(pt, out / m / "patch_positions.csv")
            top = pt.sort_values("restoration", ascending=False).head(5)
            print(top[["kind", "layer", "position", "token", "restoration"]].to_string(index=False))
    table = pd.DataFrame(rows)
    write_table(table, out / "summary.csv")
    atomic_write_json(out / "summary.json", rows)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=PAPER_METHODS)
    ap.add_argument("--out", default="unpact_out/dilemma")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--target", type=float, default=0.2, help="stop when forget fact top-1 accuracy <= target")
    ap.add_argument("--patch", action="store_true")
    a = ap.parse_args()
    t = run(a.model, a.methods.split(","), Path(a.out), a.steps, a.target, a.patch)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(t.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
