"""How well do gradient attributions rank tokens like leave-one-out? Spearman rank correlation per probe between
LOO and gradient x input / integrated gradients, and the overlap of the KeyTokens they select, on the built-in
facts SmolLM2 knows.

    python analyses/gradient_vs_loo.py [--n 40] [--steps 64] [--out unpact_out/gradient_vs_loo]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    import pandas as pd

    from unpact_mech.attribution import attribute
    from unpact_mech.data import load_benchmark
    from unpact_mech.demo import budget_order
    from unpact_mech.io import write_table
    from unpact_mech.keytokens import KeyTokenParams, select_keytokens
    from unpact_mech.models import load_model
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.scoring import fact_top1, score_probes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="known facts (domain-stratified order)")
    ap.add_argument("--steps", type=int, default=64, help="integrated-gradients steps")
    ap.add_argument("--out", default="unpact_out/gradient_vs_loo")
    a = ap.parse_args()
    import torch

    s = load_model("smollm2-135m")
    tps = tokenize_probes(s, budget_order(load_benchmark("facts"))[: 3 * a.n])
    tps = [tp for tp, sc in zip(tps, score_probes(s, tps)) if fact_top1(tp, sc)][: a.n]
    tables = {m: attribute(s, tps, m, **({"steps": a.steps} if m == "integrated_gradients" else {}))
              for m in ("loo", "grad_x_input", "integrated_gradients")}
    params = KeyTokenParams()
    rows = []
    for tp in tps:
        loo = tables["loo"][tables["loo"].probe_id == tp.probe.id].set_index("position").score
        keys_loo = set(select_keytokens(torch.tensor(loo.values), params))
        for m in ("grad_x_input", "integrated_gradients"):
            g = tables[m][tables[m].probe_id == tp.probe.id].set_index("position").score.loc[loo.index]
            keys_g = set(select_keytokens(torch.tensor(g.values), params))
            union = keys_loo | keys_g
            rows.append({"probe_id": tp.probe.id, "method": m, "n_tokens": len(loo),
                         "spearman": float(loo.corr(g, method="spearman")),
                         "top1_same": bool(loo.idxmax() == g.idxmax()),
                         "keytoken_jaccard": len(keys_loo & keys_g) / len(union) if union else 1.0})
    df = pd.DataFrame(rows)
    write_table(df, Path(a.out) / "per_probe.csv")
    ig = tables["integrated_gradients"].groupby("probe_id").completeness_error.first().abs()
    print(f"{len(tps)} known facts; integrated gradients ({a.steps} steps): completeness |error| median "
          f"{ig.median():.2e}, max {ig.max():.2e}")
    print(df.groupby("method")[["spearman", "top1_same", "keytoken_jaccard"]].agg(["mean", "median"]).round(3))


if __name__ == "__main__":
    main()
