"""The demo pipeline on a tiny model: stages, report, resume."""

import json

import pandas as pd
from conftest import demo_probes

from unpact_mech.experiments import run_demo


def test_demo_runs_writes_report_and_resumes(tiny_llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "demo"
    monkeypatch.setattr("unpact_mech.experiments.settings.SETTINGS", {"ga_gdr": {"lr": 1e-3, "fmt": "plain"},
                                                      "rmu": {"lr": 1e-3, "rmu_layer": 1, "fmt": "plain"}})
    t = run_demo(str(tiny_llama_dir), ["ga_gdr", "rmu"], out, steps=2, target=0.0, probes=demo_probes(), known_only=False)
    assert list(t.method) == ["ga_gdr", "rmu"]
    assert {"forget_acc", "forget_acc_gen", "target_reached", "focus_before", "focus_after_low", "recovery_embed",
            "recovery_attention_random", "recovery_attention_fw_gen", "specific_embed_p", "destructive_retain",
            "destructive_general_gen_high"} <= set(t.columns)
    html = (out / "report.html").read_text()
    assert "Summary table: generation" in html and html.count("data:image/png;base64") >= 5 and "class='pair'" in html
    assert "The dilemma frontier" in html and (out / "figures" / "frontier_attention.png").exists()
    front = json.loads((out / "checkpoints" / "ga_gdr.frontier.json").read_text())
    trained = json.loads((out / "checkpoints" / "ga_gdr" / "unpact.json").read_text())["steps"]
    expect = [s for s in range(1, trained + 1) if s % 2 == 0] + ([trained] if trained % 2 else [])
    assert [p["strength"] for p in front if p["route"] == "attention"] == [float(s) for s in expect]  # + the last
    assert (out / "ga_gdr" / "patch_positions.csv").exists() and not (out / "rmu" / "patch_positions.csv").exists()
    assert "How superficial is the forgetting" in html
    routes = pd.read_csv(out / "rmu" / "recovery_routes.csv")
    assert {"emphasis", "quantize", "relearn", "in_context"} == set(routes.route)
    assert {"recovered_k", "control_k", "excess_low", "base_kept"} <= set(routes.columns)
    first = json.loads((out / "rmu" / "result.json").read_text())
    # resume: a rerun reuses checkpoints and per-method results (file untouched)
    mtime = (out / "rmu" / "result.json").stat().st_mtime_ns
    t2 = run_demo(str(tiny_llama_dir), ["ga_gdr", "rmu"], out, steps=2, target=0.0, probes=demo_probes(), known_only=False)
    assert (out / "rmu" / "result.json").stat().st_mtime_ns == mtime
    assert t2.equals(t) and first["method"] == "rmu"
    assert not list(out.rglob("*.tmp"))
