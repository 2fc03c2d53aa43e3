"""Regression tests for the defects the layering work fixed; each fails on the code before it."""

from __future__ import annotations

import math

import pytest
import torch

from unpact_mech.analysis import Analysis
from unpact_mech.findings import recovery
from unpact_mech.probes import tokenize_probes
from unpact_mech.runtime import pipeline


def test_stamps_carry_a_fingerprint_of_the_code_the_stage_runs(tmp_path, monkeypatch):
    """Editing a source file a stage depends on (here scoring, imported by the data stage's module through
    unpact_mech.evals.loaders) changes its stamp, so the next run recomputes it or, with ``on_change="stop"``, names the
    change; a module that does not depend on it keeps its fingerprint."""
    pipeline.code_fingerprint.cache_clear()
    stage_mod = "unpact_mech.study.prepare"
    before, unrelated = pipeline.code_fingerprint(stage_mod), pipeline.code_fingerprint("unpact_mech.core.stats")
    stamp = pipeline.make_stamp((stage_mod,), model="m")
    assert stamp["code"] == before
    out = tmp_path / "out.txt"
    pipeline.stage("data", tmp_path / "s.json", stamp, out.exists, out.read_text, lambda: out.write_text("1") and "1")

    real = pipeline._source

    def edited(module: str):
        src = real(module)
        return (src[0], src[1] + "\n# an edit\n") if src and module == "unpact_mech.scoring" else src

    monkeypatch.setattr(pipeline, "_source", edited)
    pipeline.code_fingerprint.cache_clear()
    try:
        assert pipeline.code_fingerprint(stage_mod) != before
        assert pipeline.code_fingerprint("unpact_mech.core.stats") == unrelated
        with pytest.raises(pipeline.StaleStageError, match="code"):
            pipeline.stage("data", tmp_path / "s.json", pipeline.make_stamp((stage_mod,), model="m"), out.exists,
                           out.read_text, lambda: "recomputed", on_change="stop")
        assert pipeline.stage("data", tmp_path / "s.json", pipeline.make_stamp((stage_mod,), model="m"), out.exists,
                              out.read_text, lambda: "recomputed") == "recomputed"
    finally:
        pipeline.code_fingerprint.cache_clear()


def test_relearning_runs_through_the_one_trainer(tiny_llama, tiny_probes, monkeypatch):
    """The relearn route trains with the trainer's loop, so a non-finite loss stops it with the trainer's error
    (its own AdamW loop had no NaN guard and no clipping)."""
    from unpact_mech.routes import recover
    from unpact_mech.unlearning import L, UnlearningError

    real = L.nll
    monkeypatch.setattr(L, "nll", lambda model, batch, *a: real(model, batch, *a) * float("nan"))
    an = Analysis(tiny_llama, tiny_probes)
    with pytest.raises(UnlearningError, match="loss became nan"):
        recover(an, tiny_llama, tiny_probes[:1], retain=tiny_probes[1:3], routes=["relearn"],
                criteria=["teacher_forced"], options={"relearn": {"steps": (1, 2), "lr": 1e-2}})


def test_emphasis_route_reuses_the_recovery_control(tiny_llama, tiny_probes):
    """The emphasis route reports the KeyToken-minus-random difference that ``recovery`` computed, not a
    recomputation over probes in another order."""
    from unpact_mech.routes import recover

    an = Analysis(tiny_llama, tiny_probes)
    res = recovery(an, tiny_llama, tiny_probes[:2], (1.0, 2.0), ("embed",), prompt_styles=(), eligible_only=False,
                   criteria=("teacher_forced",), n_draws=1)
    best = res.control.scope == "best"
    res.control.loc[best, ["vs_random_diff", "vs_random_diff_low", "vs_random_diff_high"]] = [0.125, -0.25, 0.5]
    table = recover(an, tiny_llama, tiny_probes[:2], routes=["emphasis"], criteria=["teacher_forced"],
                    options={"emphasis": {"result": res}})
    row = table[table.route == "emphasis"].iloc[0]
    assert (row.excess, row.excess_low, row.excess_high) == (0.125, -0.25, 0.5)


def test_attribute_marks_keytokens_only_for_token_level_methods(tiny_llama_dir, capsys):
    from unpact_mech.cli import main

    args = ["attribute", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?",
            "--answer", "the capital of france is paris", "--format", "plain"]
    assert main([*args, "--method", "loo"]) == 0
    assert "<- KeyToken" in capsys.readouterr().out
    assert main([*args, "--method", "dla"]) == 0
    out = capsys.readouterr().out
    assert "<- KeyToken" not in out and "KeyTokens are selected only by token-level methods" in out


def test_restoration_is_nan_for_a_zero_gap(tiny_llama, tiny_probes):
    """Patching a model into itself has nothing to restore: NaN, as every other restoration in patching, not a
    ZeroDivisionError."""
    from unpact_mech.hooks import patch_from_cache
    from unpact_mech.patching import restoration

    tp = tokenize_probes(tiny_llama, tiny_probes[:1])[0]
    with torch.no_grad():
        _, cache = tiny_llama.bridge.run_with_cache(torch.tensor([tp.ids]))
    value = restoration(tiny_llama, tiny_llama, tp, patch_from_cache(cache, "blocks.0.hook_resid_pre"))
    assert math.isnan(value)
