"""Full DLA + attention paths for a probe vs one plain ``run_with_cache`` of it, on SmolLM2, one run.

Memory is the size of the activation tensors each path keeps (the model's weights are the same for both).

    python benchmarks/bench_mech.py [--probes 6]
"""

from __future__ import annotations

import argparse
import resource
import time


def tensor_mb(obj) -> float:
    """Bytes held by the tensors of a cache / decomposition, in MB."""
    import torch

    vals = obj.values() if hasattr(obj, "values") and callable(obj.values) else vars(obj).values()
    return sum(v.numel() * v.element_size() for v in vals if isinstance(v, torch.Tensor)) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=6)
    a = ap.parse_args()
    import torch

    from unpact_mech import load_model, tokenize_probes
    from unpact_mech.attribution.dla import decompose
    from unpact_mech.evals.loaders import load_benchmark

    s = load_model("smollm2-135m")
    tps = tokenize_probes(s, load_benchmark("facts")[: a.probes])
    decompose(s, tps[0])
    with torch.no_grad():
        s.bridge.run_with_cache(torch.tensor([tps[0].ids]))

    def best(fn, repeat=3):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            for tp in tps:
                fn(tp)
            times.append(time.perf_counter() - t)
        return min(times) / len(tps)

    def plain(tp):
        with torch.no_grad():
            s.bridge.run_with_cache(torch.tensor([tp.ids]))

    t_plain = best(plain)
    t_dla = best(lambda tp: decompose(s, tp, "logit", with_paths=False))
    t_full = best(lambda tp: decompose(s, tp, "logit", with_paths=True))
    print(f"{len(tps)} probes, mean {sum(len(tp.ids) for tp in tps) / len(tps):.1f} tokens, threads={torch.get_num_threads()}")
    print(f"per probe: plain run_with_cache {t_plain * 1e3:.0f} ms | DLA {t_dla * 1e3:.0f} ms | DLA + paths {t_full * 1e3:.0f} ms")
    print(f"ratio (DLA + paths) / plain run_with_cache = {t_full / t_plain:.2f}x (goal <= 2x); DLA only {t_dla / t_plain:.2f}x")
    from unpact_mech.attribution.dla import _cached_names, run_cache

    tp = tps[0]
    with torch.no_grad():
        _, full_cache = s.bridge.run_with_cache(torch.tensor([tp.ids]))
    _, filtered = run_cache(s, tp.ids, _cached_names(s.cfg.n_layers))
    d = decompose(s, tp, "logit", with_paths=True)
    print(f"activation memory for a {len(tp.ids)}-token probe: plain run_with_cache holds {tensor_mb(full_cache):.1f} MB; "
          f"DLA + paths holds {tensor_mb(filtered):.1f} MB of cache + {tensor_mb(d):.2f} MB of results "
          f"(process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
