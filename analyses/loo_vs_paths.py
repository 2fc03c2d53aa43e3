"""How well does the mechanistic per-token attribution (attention paths summed over layers and heads) agree with
the paper's black-box leave-one-out score? Spearman rank correlation per probe over the attributable tokens.

    python analyses/loo_vs_paths.py [--model smollm2-135m] [--n 75]
"""

from __future__ import annotations

import argparse

import pandas as pd
from scipy.stats import spearmanr

from unpact_mech.attribution.dla import decompose, path_token_attribution
from unpact_mech.attribution.loo import loo_contributions
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.model.loading import load_model
from unpact_mech.probes import tokenize_probes


def correlations(subject, probes) -> pd.DataFrame:
    tps = tokenize_probes(subject, probes)
    rows = []
    for r in loo_contributions(subject, tps, progress=True):
        mech = path_token_attribution(decompose(subject, r.tprobe))[list(r.positions)]
        rho = spearmanr(r.contributions.numpy(), mech.numpy()).statistic
        rows.append({"probe_id": r.tprobe.probe.id, "n_tokens": len(r.positions), "spearman": rho})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=75)
    a = ap.parse_args()
    df = correlations(load_model(a.model), load_benchmark("facts")[: a.n])
    print(df.describe().round(3).to_string())
    print(f"mean Spearman rho = {df.spearman.mean():.3f}, median = {df.spearman.median():.3f}, "
          f"share positive = {(df.spearman > 0).mean():.2f} over {len(df)} probes")


if __name__ == "__main__":
    main()
