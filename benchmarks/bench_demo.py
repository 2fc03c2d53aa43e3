"""Demo hot spots, each against its naive baseline in the same process (SmolLM2, the built-in forget facts).

    python benchmarks/bench_demo.py [--unlearned CKPT_DIR]   (default: the base model stands in for it)

* emphasis sweep: one padded batch per (route, factor) with per-row KeyTokens vs one forward per probe x factor;
* logit lens: one F.linear over all layers vs a per-layer ``x @ W_U`` on the bridge's transposed view;
* memo: the base side of a second comparison (leave-one-out) with ``Subject.memoize()`` vs recomputed.
"""

from __future__ import annotations

import argparse
import time

import torch

from unpact_mech.analysis.emphasis import emphasize, keytoken_positions, sweep
from unpact_mech.attribution.loo import loo_contributions
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.model.loading import load_model
from unpact_mech.probes import tokenize_probes


def timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unlearned", default=None)
    ap.add_argument("--n", type=int, default=12)
    a = ap.parse_args()
    base = load_model("smollm2-135m")
    unl = load_model(a.unlearned) if a.unlearned else base
    tps = tokenize_probes(base, load_benchmark("facts", split="forget")[: a.n])
    pos = keytoken_positions(base, tps)
    factors = (2.0, 4.0, 8.0)
    df, t_batched = timed(lambda: sweep(unl, tps, pos, (1.0, *factors)))
    naive, t_naive = timed(lambda: [emphasize(unl, tp, f, positions=p, route=r).lp for r in ("embed", "attention")
                                    for tp, p in zip(tps, pos) for f in factors if p])
    got = [df[(df.probe_id == tp.probe.id) & (df.route == r) & (df.factor == f)].lp.iloc[0]
           for r in ("embed", "attention") for tp, p in zip(tps, pos) for f in factors if p]
    print(f"sweep: batched {t_batched:.1f} s | per probe x factor {t_naive:.1f} s | ratio {t_naive / t_batched:.1f}x "
          f"| max |dLP| {max(abs(x - y) for x, y in zip(got, naive)):.1e}")

    b = base.bridge
    x = torch.randn(31, 3, base.cfg.d_model)
    _, t_old = timed(lambda: [x[i] @ b.W_U for i in range(31)])
    _, t_new = timed(lambda: torch.nn.functional.linear(x, b.W_U.T))
    print(f"logit lens unembedding (31 stages x 3 tokens): per-layer x @ W_U {t_old * 1e3:.0f} ms | one F.linear "
          f"{t_new * 1e3:.0f} ms | ratio {t_old / t_new:.1f}x")

    _, t_cold = timed(lambda: loo_contributions(base, tps))
    base.memoize()
    loo_contributions(base, tps)
    _, t_memo = timed(lambda: loo_contributions(base, tps))
    print(f"base-side leave-one-out, second use: recomputed {t_cold:.1f} s | memoized {t_memo * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
