"""Leave-one-out speed on SmolLM2, all baselines measured in the same run.

Compares, on the same probes:
  * batched LOO (ours: all deletions of all probes as right-padded chunks),
  * the paper's procedure: one forward pass per deletion,
  * captum ``LLMAttribution(FeatureAblation)`` computing the same scores (token replacement variant),
  * one plain batched forward of the same sequences (the floor).
Checks that the scores agree, prints time ratios, and the model load time cold (dequantise) and warm.

    python benchmarks/bench_loo.py [--probes 24] [--skip-cold]
    python benchmarks/bench_loo.py --passage      # the 338-token passage of bench_gradient.py

``--passage``: leave-one-out of a MUSE-length passage by per-deletion prefix reuse (deletion i reuses the
original's KV cache of positions < i) against the shared-template path it replaced (``prefix_reuse=False``), in
the same process; contributions compared; the FLOP floor is the positions each deletion must recompute (those
at and after i).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync()
        t = time.perf_counter()
        out = fn()
        _sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def load_time(cache: str | None) -> float:
    env = dict(os.environ)
    if cache:
        env["UNPACT_CACHE"] = cache
    code = "import time; t=time.perf_counter(); from unpact_mech import load_model; load_model('smollm2-135m'); print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=24)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--passage", action="store_true")
    ap.add_argument("--device", default=None, help="e.g. cuda; captum's CPU comparison is skipped off the CPU")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    if a.passage:
        passage()
        return

    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    from unpact_mech import load_model, tokenize_probes
    from unpact_mech.attribution.loo import baseline_token_id, loo_contributions, loo_variants
    from unpact_mech.evals.loaders import load_benchmark
    from unpact_mech.scoring import chunk_by_tokens, forward_logits, pad_token_id, right_pad, score_sequences

    if not a.skip_cold:
        with tempfile.TemporaryDirectory() as d:
            cold = load_time(d)
    warm = load_time(None)
    subject = load_model("smollm2-135m", device=a.device)
    tps = tokenize_probes(subject, load_benchmark("facts")[: a.probes])
    n_var = sum(len(tp.attributable) + 1 for tp in tps)
    print(f"{len(tps)} probes, {n_var} sequences (prompt + deletions), mean length "
          f"{sum(len(tp.ids) for tp in tps) / len(tps):.1f} tokens, threads={torch.get_num_threads()}")

    loo_contributions(subject, tps[:2])  # warm-up
    t_batched, ours = timed(lambda: loo_contributions(subject, tps), repeat=2)

    def one_pass_per_deletion():
        out = []
        for tp in tps:
            full = score_sequences(subject, [(tp.ids, tp.prompt_len)])[0].lp
            out.append([full - score_sequences(subject, [s])[0].lp for s in loo_variants(tp, "delete")])
        return out

    t_naive, naive = timed(one_pass_per_deletion)

    seqs = [(list(tp.ids), tp.prompt_len) for tp in tps] + [s for tp in tps for s in loo_variants(tp, "delete")]
    pad = pad_token_id(subject.tokenizer)

    def plain_forward():
        for chunk in chunk_by_tokens([len(s[0]) for s in seqs], 4096):
            forward_logits(subject, right_pad([seqs[i][0] for i in chunk], pad, subject.device))

    t_forward, _ = timed(plain_forward, repeat=2)
    if str(subject.device) != "cpu":
        d_naive = max(float((r.contributions - torch.tensor(n, dtype=torch.float64)).abs().max())
                      for r, n in zip(ours, naive))
        print(f"on {subject.device}: batched vs one-pass-per-deletion max |dC| = {d_naive:.2e}; batched LOO "
              f"{t_batched:.3f} s | one pass per deletion {t_naive:.3f} s | plain batched forward {t_forward:.3f} s; "
              f"per-deletion / batched = {t_naive / t_batched:.1f}x, batched / plain = {t_batched / t_forward:.2f}x; "
              f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (captum leg: CPU only)")
        return

    hf = subject.load_hf_model()
    base_id = baseline_token_id(subject.tokenizer)
    special = set(subject.tokenizer.all_special_ids)

    class Tok:
        def __init__(self, ids):
            self.ids = ids

        def encode(self, text, return_tensors=None):
            return torch.tensor([self.ids])

        def __call__(self, text, **kw):
            return subject.tokenizer(text, **kw)

        def convert_ids_to_tokens(self, ids):
            return subject.tokenizer.convert_ids_to_tokens(ids)

        def decode(self, ids, **kw):
            return subject.tokenizer.decode(ids, **kw)

    def captum_run():
        out = []
        for tp in tps:
            # captum perturbs interpretable tokens only; mark the non-attributable ones by a skip id list
            ids = list(tp.prompt_ids)
            skip = sorted({ids[i] for i in range(len(ids)) if i not in tp.attributable} | special)
            inp = TextTokenInput("", Tok(ids), baselines=base_id, skip_tokens=skip)
            attributable = torch.nonzero(inp.itp_mask[0]).flatten().tolist()
            res = LLMAttribution(FeatureAblation(hf), Tok(ids)).attribute(
                inp, target=torch.tensor(tp.answer_ids), forward_in_tokens=False
            )
            out.append((attributable, (res.seq_attr / tp.n_answer).double()))
        return out

    t_captum, cap = timed(captum_run)
    ours_rep = loo_contributions(subject, tps, variant="replace")

    d_naive = max(float((r.contributions - torch.tensor(n, dtype=torch.float64)).abs().max()) for r, n in zip(ours, naive))
    d_cap, compared = 0.0, 0
    for r, (pos, c) in zip(ours_rep, cap):
        # skip-by-id can also hide a question token equal to a scaffolding token; compare shared positions
        common = [p for p in pos if p in r.positions]
        for p in common:
            d_cap = max(d_cap, abs(float(r.contributions[r.positions.index(p)]) - float(c[pos.index(p)])))
            compared += 1

    print(f"\nagreement: batched vs one-pass-per-deletion max |dC| = {d_naive:.2e}; "
          f"replace variant vs captum max |dC| = {d_cap:.2e} over {compared} tokens")
    print(f"time: batched LOO {t_batched:.2f} s | one pass per deletion {t_naive:.2f} s | captum {t_captum:.2f} s "
          f"| plain batched forward {t_forward:.2f} s")
    print(f"ratios: captum / batched = {t_captum / t_batched:.1f}x (goal >= 10x); "
          f"per-deletion / batched = {t_naive / t_batched:.1f}x (goal >= 3x); "
          f"batched / plain forward = {t_batched / t_forward:.2f}x (goal <= 1.5x)")
    print(f"load: cold {cold:.1f} s (dequantise + cache), warm {warm:.1f} s" if not a.skip_cold else f"load: warm {warm:.1f} s")


def passage() -> None:
    import resource
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_gradient import PASSAGE

    from unpact_mech import load_model, tokenize_probes
    from unpact_mech.attribution.loo import REUSE_CHUNK, loo_contributions
    from unpact_mech.probes import Probe

    subject = load_model("smollm2-135m")
    probe = Probe("velmora", PASSAGE + "\n\nWho designed the flat-bottomed boat?",  # bench_gradient.py's probe
                  "The flat-bottomed boat was designed by Ilse Marren.", fact="Ilse Marren")
    tp = tokenize_probes(subject, [probe], "plain")[0]
    T, span = len(tp.ids), sorted(tp.attributable)
    print(f"passage: {len(span)} attributable tokens, {T} in all; threads {torch.get_num_threads()}", flush=True)
    loo_contributions(subject, [tp], prefix_reuse=True)  # warm-up
    t_new, new = timed(lambda: loo_contributions(subject, [tp], prefix_reuse=True)[0])
    rss_new = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t_old, old = timed(lambda: loo_contributions(subject, [tp], prefix_reuse=False)[0])
    rss_old = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    floor = sum(T - 1 - i for i in span) + T
    ran_new = T + sum(len(span[j:j + REUSE_CHUNK]) * (T - 1 - span[j]) for j in range(0, len(span), REUSE_CHUNK))
    ran_old = (len(span) + 1) * (T - span[0])
    d = float((new.contributions - old.contributions).abs().max())
    print(f"prefix reuse {t_new:.1f} s (ran {ran_new / floor:.2f}x the floor of {floor} positions x layers)")
    print(f"shared template only {t_old:.1f} s (ran {ran_old / floor:.2f}x the floor)")
    print(f"speed-up {t_old / t_new:.2f}x (goal >= 1.8x); max |dC| {d:.2e}; peak RSS after each "
          f"{rss_new:.2f} / {rss_old:.2f} GB")


if __name__ == "__main__":
    main()
