"""Greedy generation speed on SmolLM2: the KV-cache path that unhooked generation now takes (TOFU's and MUSE's
200/128-token answers) against the exact recompute loop it replaced (every step re-runs each row in full), in the
same process, on the same prompts, with the answers checked equal.

    python benchmarks/bench_generate.py [--prompts 8] [--tokens 64] [--device cpu]

No stop tokens, so every row generates ``--tokens`` tokens and both paths do the same work. The FLOP floor is
2 x parameters (less the embedding matrix) x (prompt + generated tokens): each token through the model once.
The exact loop's own count is the sum over steps of the rows' current lengths.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from unpact_mech import load_model
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import greedy_batch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    model = load_model("smollm2-135m", device=a.device)
    probes = load_benchmark("fictitious", f"{max(1, (a.prompts + 2) // 3)}:0:3")[:a.prompts]
    prompts = [tp.prompt_ids for tp in tokenize_probes(model, probes)]
    times, outs = {}, {}
    for name, exact in (("kv_cache", False), ("exact_loop", True)):
        _sync()
        t = time.perf_counter()
        outs[name] = greedy_batch(model, prompts, a.tokens, (), [], exact=exact)
        _sync()
        times[name] = time.perf_counter() - t
    same = outs["kv_cache"] == outs["exact_loop"]
    n_prompt = sum(len(p) for p in prompts)
    n_new = a.tokens * len(prompts)
    params = sum(p.numel() for p in model.load_hf_model().parameters())
    embed = model.cfg.d_vocab * model.cfg.d_model
    floor = 2 * (params - embed) * (n_prompt + n_new)
    exact_tokens = sum(len(p) + t for p in prompts for t in range(a.tokens))
    print(f"{len(prompts)} prompts ({n_prompt} tokens), {a.tokens} new tokens each, {a.device}; answers equal: {same}")
    for name, s in times.items():
        print(f"  {name:<11} {s:7.2f} s  {n_new / s:7.1f} tok/s")
    print(f"  exact loop / KV cache: {times['exact_loop'] / times['kv_cache']:.1f}x; the exact loop pushes "
          f"{exact_tokens / (n_prompt + n_new):.1f}x the floor's tokens through the model")
    print(f"  FLOP floor {floor / 1e9:.1f} GFLOP: KV cache at {floor / times['kv_cache'] / 1e9:.1f} GFLOP/s")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB (both paths, one process)")
    if not same:
        raise SystemExit("the two paths' answers differ")


if __name__ == "__main__":
    main()
