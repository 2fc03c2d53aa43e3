"""bfloat16 error per analysis on a real model, as RMS(toolkit bf16 - transformers f32) / RMS(transformers bf16 -
transformers f32): DLA, exact patching, AtP and the logits that choose each greedy token (the references are
the ones ``tests/test_bf16_analyses.py`` writes out with torch hooks). Patching needs two models: the second is
the first with every matrix perturbed by 0.3 of its std (a stand-in for an unlearned model; it knows nothing).

    python benchmarks/bench_bf16.py [--model smollm2-135m] [--probes 24] [--patch-probes 2] [--layers 0,10,20,29] [--attn eager]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_bf16_analyses import _ratios  # noqa: E402
from test_patch_fast import perturbed_dir  # noqa: E402

from unpact_mech.evals.loaders import load_benchmark  # noqa: E402
from unpact_mech.model.loading import load_model, on_disk  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--probes", type=int, default=24)
    ap.add_argument("--patch-probes", type=int, default=2)
    ap.add_argument("--layers", default="0,10,20,29", help="layers patched (every kind, every position)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers' bf16 attention: its default (sdpa) or eager, which the toolkit runs")
    ap.add_argument("--no-dla", action="store_true", help="models whose DLA the written-out reference cannot read")
    a = ap.parse_args()
    load_model(a.model)  # a built-in model is built into the cache on first use
    base = Path(on_disk(a.model))
    with tempfile.TemporaryDirectory() as tmp:
        unl = perturbed_dir(base, Path(tmp), 0.3)
        r = _ratios(base, unl, load_benchmark("facts")[: a.probes], "auto", a.patch_probes, dla=not a.no_dla,
                    layers=[int(x) for x in a.layers.split(",")], attn=a.attn)
    print(json.dumps({"model": a.model, "attn": a.attn, **{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}}))


if __name__ == "__main__":
    main()
