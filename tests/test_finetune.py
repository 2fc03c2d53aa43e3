"""TOFU's finetune-then-forget on SmolLM2 (``unpact study --finetune``): invented people are taught, the retain
model knows only the retain people, forget quality is the KS test against it, and every stage resumes."""

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import ks_2samp

from unpact_mech.evals.loaders.fictitious import N_PERTURBED, generate


def test_fictitious_people_carry_tofus_perturbed_fields():
    ps = generate(6, seed=2, facts_per_person=5)
    assert len(ps) == 30 and {p.meta["person"] for p in ps} == {p.meta["person"] for p in ps[::5]}
    for p in ps:
        wrong = p.meta["perturbed_answer"]
        assert len(wrong) == N_PERTURBED == len(set(wrong)) and p.meta["paraphrased_answer"] not in wrong
        assert p.fact in p.answer and p.fact in p.meta["paraphrased_answer"]
        assert all(p.fact not in w.replace(p.meta["person"], "") for w in wrong)  # another value, same template
    # the first three facts of a person are those the 3-fact generator has always drawn
    assert [(p.id, p.answer) for p in generate(6, 2)] == [(p.id, p.answer) for p in ps if int(p.id[-1]) < 3]


def test_finetune_needs_people_and_excludes_given_checkpoints(tmp_path, capsys):
    from unpact_mech.cli import main

    assert main(["study", "--probes", "facts:general", "--finetune", "--out", str(tmp_path / "o")]) == 2
    assert "fictitious" in capsys.readouterr().err
    assert main(["study", "--finetune-steps", "3", "--out", str(tmp_path / "o")]) == 2
    assert "add --finetune" in capsys.readouterr().err
    assert main(["study", "--probes", "fictitious:2", "--finetune", "--unlearned", "x=some-org/released-npo",
                 "--out", str(tmp_path / "o")]) == 2
    assert "one or the other" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_finetune_then_forget_on_smollm2(tmp_path, capsys):
    from unpact_mech import load_model
    from unpact_mech.cli import main
    from unpact_mech.evals.loaders import filter_known, load_benchmark
    from unpact_mech.evals.ou_metrics import truth_ratio_of
    from unpact_mech.model.loading import read_provenance

    out = tmp_path / "study"
    # test size: 2 people x 3 facts taught in 10 steps (the loss is ~3e-3 there), 2 unlearning steps, 3 facts
    # per split, emphasis at x8 with one random draw, and of the recovery routes only emphasis (the factor sweep,
    # quantisation, relearning and in-context prompts are tested in a study by test_demo.py); the full size is
    # analyses/tofu_study.py
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "model": "smollm2-135m", "probes": ["fictitious:2:0:3"], "finetune": True, "finetune_steps": 10,
        "methods": ["ga_klr"], "steps": 2, "per_split": 3, "task": "tofu", "patch": False, "out": str(out),
        "route_budget": {"routes": ["emphasis"]}, "factors": [8.0],
        "budget": {"n_draws": 1, "frontier": {"factors": [8.0]}}}))
    argv = ["study", "--config", str(config)]
    assert main(argv) == 0
    people = load_benchmark("fictitious", "2:0:3")
    forget, retain = [p for p in people if p.split == "forget"], [p for p in people if p.split == "retain"]
    full, ref = (load_model(str(out / "finetuned" / r)) for r in ("full", "retain"))
    base = load_model("smollm2-135m")
    assert filter_known(base, people)[0] == []  # nobody knew them before
    assert len(filter_known(full, people)[0]) == len(people)  # the full model learned every taught fact
    assert filter_known(ref, forget)[0] == [] and len(filter_known(ref, retain)[0]) == len(retain)
    assert read_provenance(out / "finetuned" / "full")["method"] == "finetune"
    assert read_provenance(out / "checkpoints" / "ga_klr")["base_source"].endswith("finetuned/full")

    tm = pd.read_csv(out / "task_metrics.csv")
    assert set(tm.split) == {"forget", "retain"} and set(tm.role) == {"base", "ga_klr"}
    fq = tm[(tm.metric == "forget_quality") & tm.treatment.isna()]
    assert set(fq.split) == {"forget"} and len(fq) == 2  # base (the full model) and ga_klr, against the retain model
    # and ga_klr's under each recovery treatment (emphasis on KeyTokens / random tokens, two routes)
    assert len(tm[(tm.metric == "forget_quality") & tm.treatment.notna() & (tm.role == "ga_klr")]) == 4
    # forget quality = the two-sample KS test's p-value between forget-set truth ratios (scipy, not ou_metrics)
    tr_full, _ = truth_ratio_of(full, forget, "closer_to_1_better")
    tr_ref, _ = truth_ratio_of(ref, forget, "closer_to_1_better")
    assert np.isclose(float(fq[fq.role == "base"].value.iloc[0]), ks_2samp(tr_full, tr_ref).pvalue, atol=1e-9)
    assert "forget_quality" in (out / "report.html").read_text()

    capsys.readouterr()
    assert main(argv) == 0  # a rerun reuses every stage
    log = capsys.readouterr().out
    assert "stage finetune full: cached" in log and "stage finetune retain: cached" in log
    assert "computing" not in log
