import json

import pandas as pd

from unpact_mech.cli import main


def test_attribute_cli_marks_keytokens(tiny_llama_dir, capsys, tmp_path):
    out = tmp_path / "t.csv"
    rc = main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?",
               "--answer", "paris", "--format", "plain", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "KeyToken" in text and "'capital'" in text
    df = pd.read_csv(out)
    assert len(df) == 7 and set(df.method) == {"loo"}


def test_compare_cli_writes_table_and_summary(tiny_llama_dir, tmp_path, capsys, tiny_probes):
    probes = tmp_path / "p.jsonl"
    probes.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in tiny_probes))
    out = tmp_path / "cmp.parquet"
    rc = main(["compare", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_dir),
               "--probes", str(probes), "--out", str(out), "--format", "plain"])
    assert rc == 0
    assert len(pd.read_parquet(out)) == len(tiny_probes)
    assert json.loads(out.with_suffix(".summary.json").read_text())["mean_keytoken_jaccard"] == 1.0


def test_cli_errors_are_clean(capsys):
    assert main(["attribute", "--model", "no-such-model", "--prompt", "q", "--answer", "a"]) == 2
    assert "unknown model spec 'no-such-model'" in capsys.readouterr().err


def test_demo_keytoken_table(tiny_llama_dir, capsys, tmp_path):
    args = ["demo", "--model", str(tiny_llama_dir), "--n", "3", "--keytokens-only", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "KeyTokens of" in out and "geography-00" in out
    assert (tmp_path / "keytokens.csv").exists()
    mtime = (tmp_path / "keytokens.csv").stat().st_mtime_ns
    assert main(args) == 0 and (tmp_path / "keytokens.csv").stat().st_mtime_ns == mtime  # cached
    assert "geography-00" in capsys.readouterr().out
    assert main([*args[:-2], "--out", str(tmp_path), "--alpha", "0.3"]) == 0  # other params: recomputed
    assert (tmp_path / "keytokens.csv").stat().st_mtime_ns != mtime


def test_dtype_reaches_the_model_and_scores_agree(tiny_llama_dir, capsys, tmp_path):
    """``--dtype bfloat16`` loads bf16 weights; the attribution agrees with float32 within bf16 precision
    (contributions are differences of mean log-probs of magnitude <= ~6 here: 8u * 6 = 0.19 nats)."""
    tables = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.csv"
        assert main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?",
                     "--answer", "paris", "--format", "plain", "--out", str(out), "--dtype", dtype]) == 0
        assert f"torch.{dtype}" in capsys.readouterr().out
        tables[dtype] = pd.read_csv(out)
    diff = (tables["float32"].score - tables["bfloat16"].score).abs()
    assert diff.max() <= 8 * 2**-8 * 6 and diff.max() > 0  # bf16 really ran


def test_recover_and_atp_patch_cli(tiny_llama_dir, tiny_llama_other_dir, tmp_path, capsys, tiny_probes):
    """`unpact recover` writes the route table; `unpact patch --method atp` writes the exact method's tables."""
    import dataclasses

    from unpact_mech.core.io import read_table
    from unpact_mech.probes import save_probes

    probes = [dataclasses.replace(p, split=s) for p, s in zip(tiny_probes, ["forget", "retain", "general", "general"])]
    pf = tmp_path / "p.jsonl"
    save_probes(probes, pf)
    rc = main(["recover", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_dir), "--probes", str(pf),
               "--format", "plain", "--routes", "quantize,in_context,relearn", "--criteria", "teacher_forced",
               "--shots", "1", "--relearn-steps", "1", "--out", str(tmp_path / "rec")])
    assert rc == 0, capsys.readouterr().err
    t = read_table(tmp_path / "rec" / "recovery_routes.csv")
    # nothing forgotten; relearning has both controls: unknown facts and collateral damage (general facts lost)
    assert list(t.route) == ["quantize"] * 3 + ["in_context", "relearn", "relearn"] and (t.n == 0).all()
    assert list(t.control_kind[-2:]) == ["unknown facts", "collateral damage"] and t.control_n.iloc[-1] == 0
    assert list(t.treatment[:3]) == ["int8 (RTN, group 64)", "int4 (RTN, group 64)", "bitsandbytes NF4, block 64"]
    rc = main(["patch", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_other_dir), "--probes", str(pf),
               "--format", "plain", "--method", "atp", "--out", str(tmp_path / "atp")])
    assert rc == 0, capsys.readouterr().err
    pos = read_table(tmp_path / "atp" / "patch_positions.csv")
    assert set(pos.method) == {"atp"} and len(pos) and pos.lp.notna().all()
    assert main(["patch", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_other_dir), "--probes",
                 str(pf), "--method", "guess", "--out", str(tmp_path / "bad")]) == 2
    assert "invalid choice: 'guess'" in capsys.readouterr().err
    # screen and confirm in one call: the top 5 AtP cells patched exactly, beside the estimate
    rc = main(["patch", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_other_dir), "--probes", str(pf),
               "--format", "plain", "--method", "atp*", "--verify", "5", "--out", str(tmp_path / "ver")])
    assert rc == 0, capsys.readouterr().err
    ver = read_table(tmp_path / "ver" / "patch_positions.csv")
    assert ver.verified.sum() == 5 and ver[ver.verified].exact_restoration.notna().all()
    assert main(["patch", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_other_dir), "--probes",
                 str(pf), "--method", "exact", "--verify", "5", "--out", str(tmp_path / "bad2")]) == 2
    err = capsys.readouterr().err
    assert "already exact" in err and not (tmp_path / "bad2").exists()


def test_probe_specs_name_subsets_of_hub_benchmarks(monkeypatch):
    """facts:SPLIT, fictitious:N:SEED:F, and NAME:SUBSET[:SPLIT] for the hub benchmarks (tofu, wmdp, muse)."""
    from unpact_mech.cli.commands import _load_probes_arg
    from unpact_mech.evals.loaders import BENCHMARKS

    calls = []
    monkeypatch.setitem(BENCHMARKS._items, "tofu", lambda subset=None, split=None, source=None: calls.append((subset, split)) or [])
    _load_probes_arg("tofu:retain_perturbed")
    _load_probes_arg("tofu:forget01:train")
    _load_probes_arg("tofu")
    assert calls == [("retain_perturbed", None), ("forget01", "train"), (None, None)]
    assert {p.split for p in _load_probes_arg("facts:retain")} == {"retain"}
    assert len(_load_probes_arg("fictitious:2:0:3")) == 6
