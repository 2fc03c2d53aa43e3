"""Attribution patching (AtP) against exact activation patching of the same full map, on SmolLM2 forget probes.

The map: every layer x position (question onwards) on resid_pre, attn_out and mlp_out, plus every (layer, head) on
hook_z, direction base -> unlearned. Both methods run in this process on the same probes; the script prints the
time of each, their ratio, peak memory, and the agreement (Pearson, Spearman, top-10 overlap) per hook type and
per third of the layers, and writes the cell tables.

    python benchmarks/bench_patch.py [--unlearned unpact_out/demo/checkpoints/ga_klr] [--n 2]

Needs a demo checkpoint (``make demo``) or any unlearned SmolLM2 checkpoint.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unlearned", default="unpact_out/demo/checkpoints/ga_klr")
    ap.add_argument("--demo-out", default="unpact_out/demo", help="where data.json names the forget probes")
    ap.add_argument("--n", type=int, default=2, help="forget probes (base right, unlearned wrong)")
    ap.add_argument("--out", default="unpact_out/bench_patch")
    a = ap.parse_args()
    if not (Path(a.unlearned) / "unpact.json").exists():
        raise SystemExit(f"no unlearned checkpoint at {a.unlearned}: run `make demo` first or pass --unlearned")
    import pandas as pd

    from unpact_mech import load_model, tokenize_probes
    from unpact_mech.data import load_benchmark
    from unpact_mech.io import write_table
    from unpact_mech.patching import agreement, patch
    from unpact_mech.scoring import fact_top1, score_probes

    base, unl = load_model("smollm2-135m"), load_model(a.unlearned)
    ids = json.loads((Path(a.demo_out) / "data.json").read_text())["ids"]["forget"]
    by_id = {p.id: p for p in load_benchmark("facts")}
    tps = tokenize_probes(base, [by_id[i] for i in ids])
    ok_b = [fact_top1(tp, s) for tp, s in zip(tps, score_probes(base, tps))]
    ok_u = [fact_top1(tp, s) for tp, s in zip(tps, score_probes(unl, tps))]
    tps = [tp for tp, b, u in zip(tps, ok_b, ok_u) if b and not u][: a.n]
    print(f"{len(tps)} forget probes: {[tp.probe.id for tp in tps]}, {[len(tp.ids) for tp in tps]} tokens", flush=True)
    patch(base, unl, tps[0], "atp", layers=[0])  # warm-up
    timing: dict[str, float] = {}
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for method in ("atp", "exact"):
        t = time.perf_counter()
        parts = [patch(base, unl, tp, method) for tp in tps]
        timing[method] = time.perf_counter() - t
        tables[method] = (pd.concat([p for p, _ in parts], ignore_index=True),
                          pd.concat([h for _, h in parts], ignore_index=True))
        print(f"{method}: {timing[method]:.1f} s for {len(tps)} probes; peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB", flush=True)
    out = Path(a.out)
    for method, (pos, heads) in tables.items():
        write_table(pos, out / f"{method}_positions.csv")
        write_table(heads, out / f"{method}_heads.csv")
    keys = ["probe_id", "direction", "kind", "layer", "position"]
    (pe, he), (pa, ha) = tables["exact"], tables["atp"]
    rows = []
    n_layers = base.cfg.n_layers
    for kind in ("resid_pre", "attn_out", "mlp_out"):
        rows.append({"site": kind, "layers": "all", **agreement(pe[pe.kind == kind], pa[pa.kind == kind], keys)})
        for lo in range(0, n_layers, n_layers // 3):
            hi = min(n_layers, lo + n_layers // 3)
            sel_e = pe[(pe.kind == kind) & pe.layer.between(lo, hi - 1)]
            sel_a = pa[(pa.kind == kind) & pa.layer.between(lo, hi - 1)]
            rows.append({"site": kind, "layers": f"{lo}-{hi - 1}", **agreement(sel_e, sel_a, keys)})
    rows.append({"site": "head z", "layers": "all", **agreement(he, ha, ["probe_id", "direction", "layer", "head"])})
    ag = pd.DataFrame(rows)
    write_table(ag, out / "agreement.csv")
    print(ag.round(3).to_string(index=False))
    print(f"exact / atp time: {timing['exact'] / timing['atp']:.0f}x ({timing['exact']:.1f} s vs {timing['atp']:.2f} s; "
          f"{len(pe) + len(he)} cells)")


if __name__ == "__main__":
    main()
