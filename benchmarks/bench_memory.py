"""Peak memory of analysis and of unlearning, as multiples of one copy of the weights (SmolLM2).

Each figure runs in a fresh subprocess and reads its peak resident set size (``ru_maxrss``):
  * ``baseline``: Python + torch + transformers + unpact_mech imported, no model;
  * ``analysis``: load + leave-one-out (default path) on N probes;
  * ``unlearn``: load + ``unlearn`` with a method that needs a reference model (npo_gdr), a few steps.
Ratio = peak RSS / bytes of one copy of the weights (unique parameter storage), the Python/torch baseline
included, as the issue asks; the baseline alone is printed too.

    python benchmarks/bench_memory.py [--probes 24] [--dtype float32] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, torch
torch.set_num_threads(2)
mode, n, dtype, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
import transformers, transformer_lens  # noqa: F401,E401  (the baseline holds every library a run imports)
import unpact_mech.model.backends.bridge  # noqa: F401
from unpact_mech import load_model, tokenize_probes
from unpact_mech.evals.loaders import load_benchmark
out = {}
if mode != "baseline":
    kw = {} if dtype == "float32" else {"dtype": dtype}
    s = load_model("smollm2-135m", **kw)
    seen = {}
    for p in s.bridge.parameters():
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    out["weight_bytes"] = sum(seen.values())
    probes = load_benchmark("facts")
    if mode == "analysis":
        from unpact_mech.attribution.loo import loo_contributions
        loo_contributions(s, tokenize_probes(s, probes[:n]))
    else:
        from unpact_mech.unlearning import unlearn
        forget = [p for p in probes if p.split == "forget"][:8]
        retain = [p for p in probes if p.split == "retain"][:8]
        with tempfile.TemporaryDirectory() as d:
            unlearn(s, "npo_gdr", forget, retain, d + "/ckpt", progress=False, steps=steps, lr=1e-5, checkpoint_every=0)
out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
"""


def run(mode: str, n: int, dtype: str, steps: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), dtype, str(steps)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=24)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    base = run("baseline", 0, a.dtype, 0)["peak_rss"]
    print(f"baseline (python+torch+transformers): {base / 2**20:.0f} MiB")
    for mode in ("analysis", "unlearn"):
        r = run(mode, a.probes, a.dtype, a.steps)
        w = r["weight_bytes"]
        print(f"{mode:9s} peak {r['peak_rss'] / 2**20:7.0f} MiB  weights {w / 2**20:5.0f} MiB  "
              f"ratio {r['peak_rss'] / w:4.2f}x  (without the baseline {(r['peak_rss'] - base) / w:4.2f}x)")


if __name__ == "__main__":
    main()
