"""The plan's predictions (``unpact_mech.runtime.plan``) against measured peak memory and time, per kind of work.

Each case runs in a fresh subprocess: load the model, one short forward (so every weight page is resident), then
the work. Measured: the peak resident set size during the work (``core.meter.measure``, import baseline and
weights included) and its wall seconds, and apart the peak while loading (``ru_maxrss`` before the work), which
the plan's load step predicts. The plan is computed from config.json and the tokenized probes alone. A
randomly initialised model (``--model random-1b``, made by ``scripts/make_random_model.py random-1b``: Llama-3.2-1B's
shape, SmolLM2's tokenizer) knows no facts; only
its memory and time mean anything.

    python benchmarks/bench_plan.py [--model smollm2-135m] [--dtype float32] [--cases score:2048,loo:300,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
spec, dtype, kind, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
from unpact_mech import load_model, Probe, tokenize_probes
from unpact_mech.scoring import score_probes, generate_answers
from unpact_mech.attribution import attribute
s = load_model(spec, dtype=dtype)
words = "the quick brown fox jumps over lazy dogs and cats in a field near river".split()
def probe(k):
    return Probe(id=f"p{k}", prompt=" ".join(words[i % len(words)] for i in range(k)), answer=" Paris is the capital")
score_probes(s, tokenize_probes(s, [probe(8)], "plain"))  # every weight resident before the work
if kind == "facts":
    from unpact_mech.evals.loaders import load_benchmark
    tps = tokenize_probes(s, load_benchmark("facts")[:n])
else:
    tps = tokenize_probes(s, [probe(n)], "plain")
from unpact_mech.core.meter import measure
load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with measure() as cost:
    if kind == "score": score_probes(s, tps)
    elif kind in ("loo", "facts"): attribute(s, tps, method="loo")
    elif kind == "generate": generate_answers(s, tps)
    elif kind == "grad": attribute(s, tps, method="grad_x_input")
print(json.dumps({"peak": cost["peak_rss_gb"] * 1e9, "load_peak": load_peak, "seconds": cost["seconds"],
                  "lengths": [[tp.prompt_len, tp.n_answer, len(tp.attributable), min(tp.attributable), str(tp.probe.id)] for tp in tps]}))
"""


def file_dtype(spec: str) -> str:
    from unpact_mech.model.shape import read_config

    return str(read_config(spec).get("dtype") or read_config(spec).get("torch_dtype") or "float32")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cases", default="score:1024,score:2048,score:4096,generate:2048,loo:300,facts:24,grad:1024")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args()
    import torch

    from unpact_mech.model.shape import read_shape
    from unpact_mech.runtime import plan as pl
    from unpact_mech.runtime.speed import measure_rates

    torch.set_num_threads(2)
    shape = read_shape(a.model)
    rates = measure_rates(shape, a.dtype)
    rows = []
    for case in a.cases.split(","):
        kind, n = case.split(":")
        res = subprocess.run([sys.executable, "-c", CHILD, a.model, a.dtype, kind, n], capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"case {case} failed")
        got = json.loads(res.stdout.strip().splitlines()[-1])
        lengths = [pl.Length(*x) for x in got["lengths"]]
        step = {"score": pl.score_step, "loo": pl.loo_step, "facts": pl.loo_step, "generate": pl.generate_step,
                "grad": pl.backward_step}[kind](shape, a.dtype, lengths)
        plan = pl.Plan(kind, shape, a.dtype, [step])
        load = pl.Plan("load", shape, a.dtype, [pl.load_step(shape, a.dtype, file_dtype(a.model))])
        row = {"model": a.model, "dtype": a.dtype, "case": case, "tokens": max(x.total for x in lengths),
               "measured_peak_gb": round(got["peak"] / 1e9, 3), "planned_peak_gb": round(plan.peak / 1e9, 3),
               "peak_ratio": round(plan.peak / got["peak"], 2),
               "measured_load_gb": round(got["load_peak"] / 1e9, 3), "planned_load_gb": round(load.peak / 1e9, 3), "measured_s": round(got["seconds"], 2),
               "planned_s": round(plan.seconds(rates), 2), "time_ratio": round(plan.seconds(rates) / got["seconds"], 2),
               "parts_s": [round(step.flops / rates.matmul, 2), round(step.scores * rates.score_seconds, 2),
                           round(step.forwards * rates.call_seconds, 2)]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"rates: {rates}; weights {shape.weight_bytes(a.dtype) / 1e9:.3f} GB")
    if a.out:
        Path(a.out).write_text(json.dumps({"rates": vars(rates), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
