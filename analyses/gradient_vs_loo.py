"""How well do gradient attributions rank tokens like leave-one-out? Spearman rank correlation per probe between
leave-one-out and gradient x input / integrated gradients, whether they pick the same top token, and the overlap
of the KeyTokens they select, on the built-in facts SmolLM2 knows.

Pairs compared (``PAIRS``): deletion LOO (the paper's) against gradient x input and against integrated gradients
from a zero embedding; and, as the like-for-like control, LOO by *replacing* each token with the baseline token
against integrated gradients from that same token's embedding (both then measure moving one token to the same
baseline; deletion also shifts every later position).

    python analyses/gradient_vs_loo.py [--n 40] [--steps 64] [--out unpact_out/gradient_vs_loo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

# (reference method, its kwargs, gradient method, its kwargs)
PAIRS = (
    ("loo", {}, "grad_x_input", {}),
    ("loo", {}, "integrated_gradients", {"baseline": "zero"}),
    ("loo_replace", {}, "integrated_gradients", {"baseline": "token"}),
)


def main() -> None:
    import pandas as pd
    import torch

    from unpact_mech.attribution import attribute
    from unpact_mech.core.io import write_table
    from unpact_mech.evals.loaders import load_benchmark
    from unpact_mech.model.loading import load_model
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.probes.keytokens import KeyTokenParams, select_keytokens
    from unpact_mech.scoring import fact_top1, score_probes
    from unpact_mech.study import budget_order

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="known facts (domain-stratified order)")
    ap.add_argument("--steps", type=int, default=64, help="integrated-gradients steps")
    ap.add_argument("--out", default="unpact_out/gradient_vs_loo")
    a = ap.parse_args()

    s = load_model("smollm2-135m")
    tps = tokenize_probes(s, budget_order(load_benchmark("facts"))[: 3 * a.n])
    tps = [tp for tp, sc in zip(tps, score_probes(s, tps)) if fact_top1(tp, sc)][: a.n]
    tables: dict[tuple[str, str], pd.DataFrame] = {}
    for ref, ref_kw, grad, grad_kw in PAIRS:
        for m, kw in ((ref, ref_kw), (grad, {**grad_kw, **({"steps": a.steps} if grad == "integrated_gradients" else {})})):
            key = (m, kw.get("baseline", ""))
            if key not in tables:
                tables[key] = attribute(s, tps, m, **kw)
    params = KeyTokenParams()
    rows = []
    for ref, _, grad, grad_kw in PAIRS:
        r_t, g_t = tables[(ref, "")], tables[(grad, grad_kw.get("baseline", ""))]
        label = f"{ref} vs {grad}" + (f" ({grad_kw['baseline']} baseline)" if grad_kw else "")
        for tp in tps:
            r = r_t[r_t.probe_id == tp.probe.id].set_index("position").score
            g = g_t[g_t.probe_id == tp.probe.id].set_index("position").score.loc[r.index]
            keys_r = set(select_keytokens(torch.tensor(r.values), params))
            keys_g = set(select_keytokens(torch.tensor(g.values), params))
            union = keys_r | keys_g
            rows.append({"probe_id": tp.probe.id, "pair": label, "n_tokens": len(r),
                         "spearman": float(r.corr(g, method="spearman")), "top1_same": bool(r.idxmax() == g.idxmax()),
                         "keytoken_jaccard": len(keys_r & keys_g) / len(union) if union else 1.0})
    df = pd.DataFrame(rows)
    write_table(df, Path(a.out) / "per_probe.csv")
    for baseline in ("zero", "token"):
        ig = tables[("integrated_gradients", baseline)].groupby("probe_id").completeness_error.first().abs()
        print(f"{len(tps)} known facts; integrated gradients ({a.steps} steps, {baseline} baseline): completeness "
              f"|error| median {ig.median():.2e}, max {ig.max():.2e}")
    summary = df.groupby("pair", sort=False).agg(
        spearman_mean=("spearman", "mean"), spearman_median=("spearman", "median"),
        spearman_positive=("spearman", lambda x: f"{int((x > 0).sum())}/{len(x)}"),
        top1_same=("top1_same", "mean"), keytoken_jaccard=("keytoken_jaccard", "mean"))
    write_table(summary.reset_index(), Path(a.out) / "summary.csv")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
