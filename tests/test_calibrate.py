"""The demo's learning-rate rule (experiments.unlearn.calibrate_lr): lr0 * 2^(-k/2), smallest k needing >= 3 steps."""

import math

import pytest

from unpact_mech.model.loading import read_provenance
from unpact_mech.study import unlearn as stage
from unpact_mech.unlearning import UnlearningError, unlearn


def fake_trainer(steps_at, calls):
    """An unlearn stand-in whose steps to the target depend on lr only (``steps_at(lr)``, None = not reached)."""

    def fake(base, method, forget, retain, out, progress=False, overwrite=False, **cfg):
        calls.append(cfg["lr"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "lr").write_text(str(cfg["lr"]))
        return out

    def prov(path):
        lr = float((path / "lr").read_text())
        return {"stopped_at": steps_at(lr), "forget_fact_acc_after": 0.2, "final_losses": {}}

    return fake, prov


@pytest.mark.parametrize("needs, k", [
    (lambda lr: 1 if lr > 2e-5 else 4, 5),  # k = 4 gives 2.5e-5 (still fast), k = 5 gives 1.77e-5 -> 4 steps
    (lambda lr: 5, 0),  # already slow enough at lr0
    (lambda lr: None if lr < 6e-5 else 2, 2),  # not reaching the target within the budget counts as needing more
])
def test_rule_picks_the_smallest_k_needing_three_steps(monkeypatch, tiny_llama, needs, k):
    calls: list[float] = []
    fake, prov = fake_trainer(needs, calls)
    monkeypatch.setattr(stage, "unlearn", fake)
    monkeypatch.setattr(stage, "read_provenance", prov)
    out = stage.calibrate_lr(tiny_llama, "ga_gdr", [], [], 1e-4)
    want = [float(f"{1e-4 * 2 ** (-j / 2):.3g}") for j in range(k + 1)]
    assert out["k"] == k and calls == want and math.isclose(out["lr"], want[-1])
    assert [t["lr"] for t in out["tries"]] == want and out["steps"] == needs(want[-1])


def test_rule_gives_up_with_one_error(monkeypatch, tiny_llama):
    fake, prov = fake_trainer(lambda lr: 1, [])
    monkeypatch.setattr(stage, "unlearn", fake)
    monkeypatch.setattr(stage, "read_provenance", prov)
    with pytest.raises(UnlearningError, match="fewer than 3 steps"):
        stage.calibrate_lr(tiny_llama, "ga_gdr", [], [], 1e-4, max_k=2)


def test_rule_on_a_real_model_matches_a_direct_run(tiny_llama, tiny_probes, tmp_path):
    """On a tiny model taught the facts first (Task Vector with a = -1 is plain fine-tuning): the chosen rate,
    trained again directly with the demo's settings, stops where the rule says; every smaller k stopped sooner
    than 3 steps."""
    from unpact_mech.model.loading import load_model

    taught = load_model(str(unlearn(tiny_llama, "task_vector", tiny_probes, [], tmp_path / "taught", steps=40,
                                    lr=3e-3, tv_scale=-1.0, fmt="plain", progress=False)))
    forget, retain = tiny_probes[:2], tiny_probes[2:]
    out = stage.calibrate_lr(taught, "ga_gdr", forget, retain, 3e-2, target=0.0, keep=tmp_path / "kept",
                             fmt="plain")
    assert out["k"] >= 1 and all(t["steps_to_target"] is not None and t["steps_to_target"] < 3
                                 for t in out["tries"][:-1])
    again = unlearn(taught, "ga_gdr", forget, retain, tmp_path / "again", progress=False,
                    **{**stage.method_settings("ga_gdr", None, 0.0), "fmt": "plain", "lr": out["lr"]})
    assert read_provenance(again)["stopped_at"] == out["steps"] == read_provenance(tmp_path / "kept")["stopped_at"]
