"""Analysis parameters reach every finding; stamped stages reuse exactly what their inputs determine."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pandas as pd
import pytest
from conftest import demo_probes

from unpact_mech.analysis import Analysis
from unpact_mech.model import loading as models
from unpact_mech.probes.keytokens import KeyTokenParams
from unpact_mech.runtime.pipeline import StaleStageError
from unpact_mech.study import run_demo
from unpact_mech.unlearning import METHODS, UnlearnConfig, resolve_config

SETTINGS = {"ga_gdr": {"lr": 1e-3, "fmt": "plain"}}




def _run(model, out, **kw):
    args = dict(methods=["ga_gdr"], steps=2, target=0.0, probes=demo_probes(), known_only=False, patch=False)
    return run_demo(str(model), out=out, **{**args, **kw})


def _mtimes(out):
    files = ["data.json", "checkpoints/ga_gdr/unpact.json", "ga_gdr/result.json"]
    return {f: (out / f).stat().st_mtime_ns for f in files}


@pytest.mark.slow  # two demo runs
def test_alpha_reaches_focus_recovery_and_function_words(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
    tables = {}
    for alpha in (0.0, 0.9):
        out = tmp_path / f"a{alpha}"
        _run(tiny_llama_dir, out, params=KeyTokenParams(alpha=alpha, beta=1))
        focus = pd.read_csv(out / "ga_gdr" / "keyword_focus.csv")
        sweep = pd.read_csv(out / "ga_gdr" / "emphasis_sweep.csv")
        fw = pd.read_csv(out / "ga_gdr" / "function_words.csv")
        rates = pd.read_csv(out / "ga_gdr" / "recovery_rates.csv")
        for t in (focus, sweep, fw, rates):
            assert set(t.alpha) <= {alpha} and set(t.beta) <= {1}  # the parameters travel with every table
        assert len(focus) and len(fw) and len(rates)
        # recovery on the same analysis, every probe emphasised (on a tiny random model few are eligible)
        from unpact_mech.findings import recovery

        an = Analysis(models.load_model(str(tiny_llama_dir)), demo_probes(), KeyTokenParams(alpha=alpha, beta=1),
                      fmt="plain")
        sweep = recovery(an, an.base, demo_probes()[:2], (1.0, 2.0), modes=("embed",), prompt_styles=(),
                         eligible_only=False, criteria=("teacher_forced",)).sweep
        sweep = sweep[sweep.condition == "keytokens"]
        tables[alpha] = (focus, sweep, fw)
    (f0, s0, w0), (f9, s9, w9) = tables[0.0], tables[0.9]
    # alpha 0 keeps every positive token; 0.9 at most the dominant one: fewer KeyTokens everywhere
    n0 = f0.keytokens_base.fillna("").str.count(r"\|") + f0.keytokens_base.notna()
    n9 = f9.keytokens_base.fillna("").str.count(r"\|") + f9.keytokens_base.notna()
    assert (n9 <= n0).all() and (n9 < n0).any()
    assert not f0.focus_base.equals(f9.focus_base)
    assert s9.n_positions.sum() < s0.n_positions.sum() and set(s9.alpha) == {0.9}
    assert (w9.kind == "KeyToken").sum() < (w0.kind == "KeyToken").sum()


@pytest.mark.slow  # nine demo runs
def test_stamps_invalidate_exactly_what_changed(tiny_llama_dir, tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", SETTINGS)
    out = tmp_path / "demo"
    first = _run(tiny_llama_dir, out)
    t0 = _mtimes(out)

    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded although nothing changed"))
    again = _run(tiny_llama_dir, out)
    assert _mtimes(out) == t0 and again.equals(first)
    monkeypatch.setattr(models, "load_model", real)

    def changed(**kw):
        before = _mtimes(out)
        _run(tiny_llama_dir if "model" not in kw else kw.pop("model"), out, **kw)
        after = _mtimes(out)
        return {f for f in before if before[f] != after[f]}

    assert changed(params=KeyTokenParams(alpha=0.3)) == {"ga_gdr/result.json"}  # the checkpoint is kept
    assert changed(params=KeyTokenParams(alpha=0.3)) == set()
    assert changed(params=KeyTokenParams(alpha=0.3), steps=3) == {"checkpoints/ga_gdr/unpact.json", "ga_gdr/result.json"}
    assert changed(params=KeyTokenParams(alpha=0.3), steps=3, target=0.5) == {"checkpoints/ga_gdr/unpact.json",
                                                                              "ga_gdr/result.json"}
    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS", {"ga_gdr": {"lr": 2e-3, "fmt": "plain"}})
    assert changed(params=KeyTokenParams(alpha=0.3), steps=3, target=0.5) == {"checkpoints/ga_gdr/unpact.json",
                                                                              "ga_gdr/result.json"}
    assert json.loads((out / "checkpoints/ga_gdr/unpact.json").read_text())["hyperparameters"]["lr"] == 2e-3
    with pytest.raises(StaleStageError, match=r"steps.*3 -> 4|settings"):
        _run(tiny_llama_dir, out, params=KeyTokenParams(alpha=0.3), steps=4, target=0.5, on_change="stop")
    assert changed(model=tiny_gpt2_dir, params=KeyTokenParams(alpha=0.3), steps=3, target=0.5) == set(_mtimes(out))
    fewer = demo_probes()[:-1]
    before = _mtimes(out)
    run_demo(str(tiny_gpt2_dir), out=out, methods=["ga_gdr"], steps=3, target=0.5, probes=fewer, known_only=False,
             patch=False, params=KeyTokenParams(alpha=0.3))
    after = _mtimes(out)
    assert {f for f in before if before[f] != after[f]} == {"data.json", "ga_gdr/result.json"}  # general split only


def test_explicit_settings_beat_method_defaults_for_every_method():
    default = UnlearnConfig()
    for name, cls in METHODS.items():
        m, cfg = resolve_config(name, True)
        for k, v in cls.defaults.items():
            assert getattr(cfg, k) == v  # the method's default applies when the user says nothing
        for f in fields(UnlearnConfig):
            val = getattr(default, f.name)
            if f.name in ("fmt", "rmu_param_layers", "rmu_coeff", "target_forget_acc") or isinstance(val, bool):
                continue
            mine = type(val)(val * 3 + 1) if isinstance(val, (int, float)) else val
            _, via_config = resolve_config(name, True, UnlearnConfig(**{f.name: mine}))
            _, via_kw = resolve_config(name, True, **{f.name: mine})
            assert getattr(via_config, f.name) == mine and getattr(via_kw, f.name) == mine, (name, f.name)
    _, rmu = resolve_config("rmu", True, UnlearnConfig(lr=5e-5))
    assert rmu.lr == 5e-5  # the brief's example: RMU used to train at its default 1e-2
    _, sim = resolve_config("simnpo", True, UnlearnConfig(beta=0.7))
    assert sim.beta == 0.7


def test_analysis_computes_the_base_side_once(tiny_llama, tiny_probes, monkeypatch):
    from unpact_mech.analysis.compare import compare
    from unpact_mech.attribution import loo as loo_mod
    from unpact_mech.findings import destruction, recovery

    calls = []
    real = loo_mod.loo_contributions

    def counting(subject, tps, *a, **k):
        if subject is tiny_llama:
            calls.extend(tp.probe.id for tp in tps)
        return real(subject, tps, *a, **k)

    monkeypatch.setattr("unpact_mech.analysis.loo_contributions", counting)
    an = Analysis(tiny_llama, tiny_probes, KeyTokenParams(alpha=0.2), fmt="plain")
    compare(an, tiny_llama, tiny_probes[:2])
    compare(an, tiny_llama)
    recovery(an, tiny_llama, tiny_probes[:2], (1.0, 2.0), eligible_only=False)
    destruction(an, tiny_llama, tiny_probes[2:])
    assert sorted(calls) == sorted(p.id for p in tiny_probes)  # each probe's leave-one-out exactly once
    with pytest.raises(ValueError, match="differ from the analysis"):
        compare(an, tiny_llama, params=KeyTokenParams(alpha=0.5))
    assert asdict(an.params)["alpha"] == 0.2


def test_rates_survive_a_write_read_round_trip_as_numbers(tmp_path):
    from unpact_mech.core.io import atomic_write_json, read_table, write_table
    from unpact_mech.core.stats import rate_columns, wilson
    from unpact_mech.evals.metrics import destructive_rate
    from unpact_mech.report.tables import format_rates, summary_table

    row = {"method": "m", "steps": 2, **rate_columns("recovery_embed", wilson(3, 7)),
           **rate_columns("destructive_retain", destructive_rate([True, True], [True, False])),
           **rate_columns("recovery_attention", wilson(0, 0))}
    atomic_write_json(tmp_path / "r.json", row)
    for t in (summary_table([json.loads((tmp_path / "r.json").read_text())]),
              read_table(write_table(summary_table([row]), tmp_path / "s.csv")),
              read_table(write_table(summary_table([row]), tmp_path / "s.parquet"))):
        assert t.recovery_embed_k.iloc[0] == 3 and t.recovery_embed_n.iloc[0] == 7
        assert t.recovery_embed.iloc[0] == pytest.approx(3 / 7)
        assert t.recovery_embed_low.iloc[0] == pytest.approx(wilson(3, 7).low)
        assert t.destructive_retain.iloc[0] == pytest.approx(0.5) and t.destructive_retain_n.iloc[0] == 2
        for c in ("recovery_embed", "recovery_embed_k", "recovery_embed_low", "destructive_retain", "recovery_attention"):
            assert pd.api.types.is_numeric_dtype(t[c]), c
        assert pd.isna(t.recovery_attention.iloc[0])  # no eligible probe: NaN, not a string
    shown = format_rates(summary_table([row]))
    assert shown.recovery_embed.iloc[0] == f"0.43 (3/7, {wilson(3, 7).low:.2f}-{wilson(3, 7).high:.2f})"
    assert shown.recovery_attention.iloc[0] == "n/a" and "recovery_embed_k" not in shown
