"""A second built-in model (default Gemma-3-270M, ``make gemma``): load time, peak memory, KeyTokens, and one
unlearning method with the three findings' numbers and the localisation of the change (exact DLA with the
post-sublayer norms frozen), through the same library calls as the SmolLM2 demo.

The learning rate follows the demo's rule (``experiments.unlearn.calibrate_lr``: from the method's starting rate,
lr * 2^(-k/2) with the smallest k that needs at least 3 steps to reach the forget target), so the findings
describe a model that was unlearned, not one that was broken in a step or two. The retain loss (open-unlearning's
per-token mean NLL on the retain answers) is reported before and after.

    python analyses/second_model.py --model gemma3-270m --method npo_gdr --out unpact_out/gemma
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

from unpact_mech.analysis.compare import compare
from unpact_mech.analysis.localise import localise
from unpact_mech.attribution.dla import decompose
from unpact_mech.attribution.loo import loo_contributions
from unpact_mech.core.io import atomic_write_json, write_table
from unpact_mech.evals.loaders import filter_known, load_benchmark
from unpact_mech.findings import destruction, function_word_penalisation, recovery
from unpact_mech.model.loading import load_model, read_provenance
from unpact_mech.model.subject import Subject
from unpact_mech.probes import tokenize_probes
from unpact_mech.probes.keytokens import keytoken_table
from unpact_mech.scoring import pad_token_id
from unpact_mech.study.settings import START_LR
from unpact_mech.study.unlearn import calibrate_lr
from unpact_mech.unlearning import collate, losses, to_examples


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def retain_nll(subject: Subject, probes: list, fmt: str) -> float:
    """Per-token mean NLL over the retain examples' labelled tokens (open-unlearning's ``outputs.loss``)."""
    tok = subject.tokenizer
    batch = collate(to_examples(tok, probes, fmt), pad_token_id(tok), subject.device)
    model = subject.load_hf_model().eval()
    with torch.no_grad():
        return round(float(losses.nll(model, batch)), 4)


def run(model: str = "gemma3-270m", method: str = "npo_gdr", out: str = "unpact_out/gemma", target: float = 0.25,
        fmt: str = "plain", lr0: float | None = None, max_forget: int = 12) -> dict[str, Any]:
    """Load, attribute, unlearn with one method, and measure findings 1-3; writes ``OUT/second_model.json``."""
    o = Path(out)
    t0 = time.perf_counter()
    base = load_model(model, verbose=True).memoize()
    res: dict[str, Any] = {"model": base.name, "load_s": round(time.perf_counter() - t0, 1),
                           "peak_rss_gb_after_load": round(peak_rss_gb(), 2), "format": fmt}
    pool = load_benchmark("facts")
    known, per_domain = filter_known(base, pool, fmt)
    write_table(per_domain, o / "known.csv")
    data = {s: [p for p in known if p.split == s] for s in ("forget", "retain", "general")}
    data["forget"] = data["forget"][:max_forget]
    res["known"] = {s: f"{len(v)}/{sum(p.split == s for p in pool)}" for s, v in data.items()}
    print("[second-model] known facts:", res["known"], flush=True)
    t = time.perf_counter()
    kt = keytoken_table(loo_contributions(base, tokenize_probes(base, pool[:12], fmt)))
    res["keytokens_s"] = round(time.perf_counter() - t, 1)
    write_table(kt, o / "keytokens.csv")
    print(kt.to_string(index=False), flush=True)
    ckpt = o / "checkpoints" / method
    cal_file = o / "calibration.json"
    if not (ckpt / "unpact.json").exists() or not cal_file.exists():
        cal = calibrate_lr(base, method, data["forget"], data["retain"], lr0 or START_LR[method], target, keep=ckpt,
                           fmt=fmt)
        atomic_write_json(cal_file, cal)
    cal = json.loads(cal_file.read_text())
    prov = read_provenance(ckpt)
    unl = load_model(str(ckpt)).memoize()
    res.update({"method": method, "lr": cal["lr"], "calibration_k": cal["k"],
                "calibration": [f"lr {t['lr']:g}: {t['steps_to_target']} steps" for t in cal["tries"]],
                "steps": prov["steps"], "stopped_at": prov.get("stopped_at"), "train_s": prov.get("train_seconds"),
                "forget_acc": f"{prov['forget_fact_acc_before']:.2f}->{prov['forget_fact_acc_after']:.2f}",
                "retain_nll": f"{retain_nll(base, data['retain'], fmt)}->{retain_nll(unl, data['retain'], fmt)}"})
    cmp_f = compare(base, unl, data["forget"], fmt=fmt)
    res["finding1"] = {k: round(v, 3) for k, v in cmp_f.summary.items()}
    rates = recovery(base, unl, data["forget"], fmt=fmt).rates
    best = rates[rates.scope == "best"]
    res["finding2_recovery"] = {f"{r.criterion}/{r.condition}/{r.route}": f"{r.k:g}/{r.n}" for r in best.itertuples()}
    for crit in ("teacher_forced", "generation"):
        _, drates = destruction(base, unl, data["retain"] + data["general"], fmt=fmt, criterion=crit)
        res[f"finding3_destructive_{crit}"] = {k: str(v) for k, v in drates.items()}
    fw = function_word_penalisation(compare(base, unl, data["retain"] + data["general"], fmt=fmt))
    res["finding3_change_by_kind"] = {k: round(v, 3) for k, v in fw.groupby("kind")["change"].mean().items()}
    # localisation needs exact DLA: Gemma 3's post-attention norms are frozen from the cache (attribution/dla.py)
    t = time.perf_counter()
    loc = localise(base, unl, data["forget"], fmt=fmt)
    res["localise_s"] = round(time.perf_counter() - t, 1)
    write_table(loc.heads, o / "localise_heads.csv")
    write_table(loc.keytoken_route, o / "keytoken_route.csv")
    res["localisation"] = loc.summary
    tps = tokenize_probes(base, data["forget"], fmt)
    res["dla_completeness_max_abs_error"] = max(
        float((d.component_sum() - d.total).abs().max()) for m in (base, unl) for d in (decompose(m, tp) for tp in tps))
    print(loc.summary, flush=True)
    res["peak_rss_gb"] = round(peak_rss_gb(), 2)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(o / "second_model.json", res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--method", default="npo_gdr")
    ap.add_argument("--out", default="unpact_out/gemma")
    ap.add_argument("--lr0", type=float, default=None, help="the rule's starting rate (default: the demo's for the "
                    "method, experiments.settings.START_LR)")
    ap.add_argument("--target", type=float, default=0.25)
    ap.add_argument("--format", default="plain", help="probe format: plain (base models) or chat")
    a = ap.parse_args()
    print(json.dumps(run(a.model, a.method, a.out, a.target, a.format, a.lr0), indent=1))


if __name__ == "__main__":
    main()
