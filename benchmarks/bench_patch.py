"""Exact activation patching, fast and full, against a one-forward-per-cell loop and AtP, on SmolLM2 forget probes.

The map: every layer x position (question onwards) on resid_pre, attn_out and mlp_out, plus every (layer, head) on
hook_z, direction base -> unlearned. In this process, on the same probes:

* ``exact``: from the target's clean run (residual entering layer l, KV cache before the cell's chunk);
* ``exact_full``: every patched sequence from token 0 through every layer, batched per site (the old path);
* ``loop``: TransformerLens-style, one ``run_with_hooks`` per cell (as ``patching.generic_activation_patch``);
  timed on ``--loop-cells`` cells spread over the map and reported per cell, its full-map time extrapolated;
* ``atp`` / ``atp*``: attribution patching, and AtP* (QK fix + GradDrop; top-10 by its GradDrop score).

Each method runs in a forked child (same loaded models), so its peak RSS is its own. Printed: time, ratios,
max |difference| against ``exact_full``, the FLOP floor (layer x position pairs that must be recomputed, against
those each method ran), AtP's agreement with exact (Pearson, top-10 overlap per site kind), peak RSS.

    python benchmarks/bench_patch.py [--unlearned DIR] [--n 2]

Without ``--unlearned`` (and no demo checkpoint) it trains the demo's GA_KLR on the demo's 12 forget facts first.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import tempfile
import time
from pathlib import Path

DEVICE: str | None = None  # --device; off the CPU each method runs in this process (CUDA does not survive fork)


def _forked(fn):
    """(result, seconds, peak RSS GB) of ``fn()`` run in a forked child; on a GPU, in-process with peak GPU memory."""
    if DEVICE not in (None, "cpu"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30
    fd, path = tempfile.mkstemp()
    os.close(fd)
    pid = os.fork()
    if pid == 0:
        try:
            t = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t
            with open(path, "wb") as f:
                pickle.dump((out, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20), f)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    with open(path, "rb") as f:
        res = pickle.load(f)
    os.unlink(path)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unlearned", default="unpact_out/demo/checkpoints/ga_klr")
    ap.add_argument("--n", type=int, default=2, help="forget probes (base right, unlearned wrong)")
    ap.add_argument("--loop-cells", type=int, default=120, help="cells timed one forward each")
    ap.add_argument("--out", default="unpact_out/bench_patch")
    ap.add_argument("--device", default=None, help="e.g. cuda (then 'peak RSS' columns are peak GPU memory)")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    import pandas as pd
    import torch

    from unpact_mech import load_model, tokenize_probes
    from unpact_mech.core.io import write_table
    from unpact_mech.evals.loaders import filter_known, load_benchmark
    from unpact_mech.hooks import act_name, patch_from_cache
    from unpact_mech.patching import _lp_batch, agreement, patch
    from unpact_mech.scoring import fact_top1, score_probes
    from unpact_mech.study import SETTINGS, budget_order
    from unpact_mech.unlearning import unlearn

    base = load_model("smollm2-135m", device=a.device)
    known, _ = filter_known(base, budget_order(load_benchmark("facts")))
    forget = [p for p in known if p.split == "forget"][:12]
    ckpt = Path(a.unlearned)
    if not (ckpt / "unpact.json").exists():
        ckpt = Path(a.out) / "ga_klr"
        if not (ckpt / "unpact.json").exists():
            print(f"no checkpoint at {a.unlearned}: training the demo's GA_KLR into {ckpt}", flush=True)
            retain = [p for p in known if p.split == "retain"][:12]
            unlearn(base, "ga_klr", forget, retain, ckpt, overwrite=True, **SETTINGS["ga_klr"])
    unl = load_model(str(ckpt), device=a.device)
    tps = tokenize_probes(base, forget)
    ok_b = [fact_top1(tp, s) for tp, s in zip(tps, score_probes(base, tps))]
    ok_u = [fact_top1(tp, s) for tp, s in zip(tps, score_probes(unl, tps))]
    tps = [tp for tp, b, u in zip(tps, ok_b, ok_u) if b and not u][: a.n]
    if not tps:
        raise SystemExit("no forget probe that the base answers and the unlearned model does not")
    L, H = base.cfg.n_layers, base.cfg.n_heads
    print(f"{len(tps)} forget probes: {[tp.probe.id for tp in tps]}, {[len(tp.ids) for tp in tps]} tokens; "
          f"threads {torch.get_num_threads()}", flush=True)
    patch(base, unl, tps[0], "atp", layers=[0])  # warm-up
    patch(base, unl, tps[0], "exact", layers=[0])

    runs: dict[str, tuple] = {}
    for method in ("exact", "exact_full", "atp", "atp*"):
        runs[method] = _forked(lambda m=method: [patch(base, unl, tp, m) for tp in tps])
        print(f"{method}: {runs[method][1]:.1f} s, peak RSS {runs[method][2]:.2f} GB", flush=True)

    def loop() -> float:  # one forward per cell through TransformerLens's hooks, cells spread over the map
        tp = tps[0]
        positions = list(range(min(tp.attributable), len(tp.ids) - 1))
        cells = [(k, layer, p) for k in ("resid_pre", "attn_out", "mlp_out") for layer in range(L) for p in positions]
        cells = cells[:: max(1, len(cells) // a.loop_cells)][: a.loop_cells]
        with torch.no_grad():
            _, cache = base.bridge.run_with_cache(torch.tensor([tp.ids], device=base.device), names_filter=lambda n: "hook_" in n)
        t = time.perf_counter()
        for k, layer, p in cells:
            _lp_batch(unl, tp, 1, patch_from_cache(cache, act_name(k, layer), [p]))
        return (time.perf_counter() - t) / len(cells)

    per_cell, _, loop_rss = _forked(loop)
    tables = {m: (pd.concat([p for p, _ in r[0]], ignore_index=True), pd.concat([h for _, h in r[0]], ignore_index=True))
              for m, r in runs.items()}
    (pe, he), (pf, hf), (pa, ha), (ps, hs) = (tables[m] for m in ("exact", "exact_full", "atp", "atp*"))
    n_cells = len(pe) + len(he)
    loop_total = per_cell * n_cells
    out = Path(a.out)
    for method, (pos, heads) in tables.items():
        write_table(pos, out / f"{method}_positions.csv")
        write_table(heads, out / f"{method}_heads.csv")

    # FLOP floor: layer-position pairs that a cell must recompute, against those each method ran
    from unpact_mech.patching import CHUNK

    floor = ran_fast = ran_full = 0
    for tp in tps:
        T = len(tp.ids)
        positions = list(range(min(tp.attributable), T - 1))
        for layer in range(L):
            floor += 3 * sum((L - layer) * (T - p) for p in positions) + H * (L - layer) * T
            ran_fast += 3 * sum(len(positions[i:i + CHUNK]) * (L - layer) * (T - positions[i])
                                for i in range(0, len(positions), CHUNK)) + H * (L - layer) * T
        ran_full += (3 * len(positions) * L + H * L) * T * L
    diff_pos = (pe.lp - pf.lp).abs().max()
    diff_heads = (he.lp - hf.lp).abs().max()
    keys = ["probe_id", "direction", "kind", "layer", "position"]
    rows = []
    for kind in ("resid_pre", "attn_out", "mlp_out"):
        for name, approx, rank in (("atp", pa, "restoration"), ("atp*", ps, "graddrop")):
            rows.append({"site": kind, "method": name,
                         **agreement(pe[pe.kind == kind], approx[approx.kind == kind], keys, rank=rank)})
    hk = ["probe_id", "direction", "layer", "head"]
    rows.append({"site": "head z", "method": "atp", **agreement(he, ha, hk)})
    rows.append({"site": "head z", "method": "atp*", **agreement(he, hs, hk, rank="graddrop")})
    ag = pd.DataFrame(rows)
    write_table(ag, out / "agreement.csv")
    print(ag.round(3).to_string(index=False))
    t_fast, t_full, t_atp = runs["exact"][1], runs["exact_full"][1], runs["atp"][1]
    print(f"\n{n_cells} cells on {len(tps)} probes")
    print(f"exact (fast)    {t_fast:8.1f} s   peak RSS {runs['exact'][2]:.2f} GB   ran {ran_fast / floor:.2f}x the floor")
    print(f"exact_full      {t_full:8.1f} s   peak RSS {runs['exact_full'][2]:.2f} GB   ran {ran_full / floor:.2f}x the floor")
    print(f"loop (1/cell)   {loop_total:8.1f} s   (extrapolated: {per_cell * 1e3:.1f} ms/cell on {a.loop_cells} cells; "
          f"peak RSS {loop_rss:.2f} GB)")
    print(f"atp             {t_atp:8.1f} s   peak RSS {runs['atp'][2]:.2f} GB")
    print(f"atp*            {runs['atp*'][1]:8.1f} s   peak RSS {runs['atp*'][2]:.2f} GB")
    print(f"fast exact: {t_full / t_fast:.1f}x exact_full, {loop_total / t_fast:.1f}x the per-cell loop; "
          f"max |lp difference| vs exact_full {max(diff_pos, diff_heads):.2e}")


if __name__ == "__main__":
    main()
