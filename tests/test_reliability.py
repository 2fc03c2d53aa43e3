"""Reliability, round 3: nothing a user made is deleted, interrupts exit 130 with one line, resume states are
checked before any model loads, text is split on \\n only, outputs follow the umask, devices are named as they
are, and the library refuses what the CLI refuses (it is not the only guard)."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import torch

from unpact_mech.cli import main
from unpact_mech.core.errors import UnpactError
from unpact_mech.model import loading as models


def _probe_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"id": "p0", "prompt": "what is the capital of france ?", "answer": "paris"},
        {"id": "p1", "prompt": "who wrote hamlet ?", "answer": "shakespeare", "split": "retain"}]


def _tree(path):
    """Every file under ``path`` with its bytes (what 'byte for byte' compares)."""
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_overwrite_never_touches_a_users_old_directory(tiny_llama_dir, tmp_path, capsys):
    pf = _probe_file(tmp_path / "p.jsonl", ROWS)
    argv = ["unlearn", "--model", str(tiny_llama_dir), "--format", "plain", "--method", "ga_gdr", "--forget", str(pf),
            "--retain", str(pf), "--steps", "1", "--out", str(tmp_path / "ck")]
    assert main(argv) == 0, capsys.readouterr().err
    mine = tmp_path / "ck.old"  # the user's own directory, named as the old code named its scratch copy
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "model.safetensors").write_bytes(b"not yours")
    before = _tree(mine)
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert _tree(mine) == before
    assert (tmp_path / "ck" / "model.safetensors").exists()
    assert not list(tmp_path.glob("ck.unpact-old-*"))  # the one it made itself is gone


def test_a_marked_leftover_of_a_killed_replace_is_cleaned_and_an_unmarked_one_kept(tiny_llama_dir, tmp_path):
    from unpact_mech.model.checkpoints import OLD_MARK, save_checkpoint

    hf, tok = models.load_hf(str(tiny_llama_dir)), models._load_tokenizer(str(tiny_llama_dir))
    ours, theirs = tmp_path / "ck.unpact-old-abc", tmp_path / "ck.unpact-old-def"
    for d in (ours, theirs):
        d.mkdir()
        (d / "x").write_text("x")
    (ours / OLD_MARK).write_text("moved aside by unpact")
    save_checkpoint(hf, tok, tmp_path / "ck", {"method": None})
    assert not ours.exists() and (theirs / "x").read_text() == "x"


def test_checkpoint_files_follow_the_umask(tiny_llama_dir, tmp_path):
    from unpact_mech.model.checkpoints import save_checkpoint

    old = os.umask(0o022)
    try:
        out = save_checkpoint(models.load_hf(str(tiny_llama_dir)), models._load_tokenizer(str(tiny_llama_dir)),
                              tmp_path / "ck", {"method": None})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def _one_line(err: str, word: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len([ln for ln in lines if word in ln]) == 1, err
    return next(ln for ln in lines if word in ln)


def test_ctrl_c_during_attribute_is_one_line_and_exit_130(tiny_llama_dir, monkeypatch, capsys):
    import unpact_mech.attribution as attribution

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(attribution, "attribute", interrupted)
    rc = main(["attribute", "--model", str(tiny_llama_dir), "--format", "plain", "--prompt", "q ?", "--answer", "a"])
    assert rc == 130
    line = _one_line(capsys.readouterr().err, "interrupted")
    assert line.startswith("unpact attribute: interrupted: nothing was written")


def test_ctrl_c_during_unlearn_keeps_the_resume_state_and_the_rerun_resumes(tiny_llama_dir, tmp_path, monkeypatch,
                                                                              capsys):
    pf = _probe_file(tmp_path / "p.jsonl", ROWS)
    argv = ["unlearn", "--model", str(tiny_llama_dir), "--format", "plain", "--method", "ga_gdr", "--forget", str(pf),
            "--retain", str(pf), "--steps", "7", "--out", str(tmp_path / "ck")]
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def clip(*a, **k):  # Ctrl-C in step 6, after the resume state of step 5 was written
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    assert main(argv) == 130
    line = _one_line(capsys.readouterr().err, "interrupted")
    assert f"the resume state {tmp_path / 'ck.resume.json'} was kept; rerun the same command to resume" in line
    assert json.loads((tmp_path / "ck.resume.json").read_text())["step"] == 5
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming ga_gdr from step 5 of 7" in out
    assert json.loads((tmp_path / "ck" / "unpact.json").read_text())["steps"] == 7
    assert not (tmp_path / "ck.resume.json").exists()


def test_a_foreign_resume_state_is_refused_by_the_library_too(tiny_llama, tmp_path):
    """The library (not only the CLI) refuses a state of other settings, naming them, and leaves it in place."""
    from unpact_mech.probes import Probe
    from unpact_mech.unlearning import unlearn

    probes = [Probe.from_dict(r) for r in ROWS]
    meta = {"format": "unpact-resume-v1", "run_key": "x", "settings": {"method": "ga_gdr", "n_forget": 9}, "step": 0,
            "history": [], "generator_state": [0] * 8, "param_groups": [], "aliases": {}, "tensors_sha256": "0" * 64}
    (tmp_path / "ck.resume.json").write_text(json.dumps(meta))
    before = (tmp_path / "ck.resume.json").read_bytes()
    with pytest.raises(UnpactError, match=r"another run \(n_forget: 9 there, 2 now\).*rm '"):
        unlearn(tiny_llama, "ga_gdr", probes, probes, tmp_path / "ck", fmt="plain", steps=1)
    assert (tmp_path / "ck.resume.json").read_bytes() == before and not (tmp_path / "ck").exists()


def test_a_state_of_more_steps_is_named_another_run_not_damaged(tmp_path, monkeypatch):
    """A state saved at step 5 of a 6-step run, met by a 1-step run: the settings differ (the file is intact), so it
    is the state of another run, named by the setting; a state whose settings match but whose step lies past this
    run's steps is still damaged."""
    import hashlib

    from unpact_mech.unlearning.resume import ResumeError, ResumeFiles, check_resume

    files = ResumeFiles.beside(tmp_path / "ck")
    files.tensors.write_bytes(b"the tensors")  # intact: its SHA-256 is the one the state records
    meta = {"format": "unpact-resume-v1", "run_key": "x", "settings": {"method": "ga_gdr", "hyperparameters": {"steps": 6}},
            "step": 5, "history": [{"step": i + 1} for i in range(5)], "generator_state": [0] * 8, "param_groups": [],
            "aliases": {}, "tensors_sha256": hashlib.sha256(b"the tensors").hexdigest()}
    files.meta.write_text(json.dumps(meta))
    with pytest.raises(ResumeError, match=r"another run \(hyperparameters.steps: 6 there, 1 now\)") as err:
        check_resume(files, {"method": "ga_gdr", "hyperparameters": {"steps": 1}}, steps=1)
    assert "damaged" not in str(err.value)
    assert check_resume(files, {"method": "ga_gdr", "hyperparameters": {"steps": 6}}, steps=6)["step"] == 5
    with pytest.raises(ResumeError, match=r"damaged: 'step' is 5, outside 0..4"):
        check_resume(files, {"method": "ga_gdr"}, steps=4)
    import unpact_mech.unlearning.resume as resume_mod

    hashed = []
    real = resume_mod.sha256_file
    monkeypatch.setattr(resume_mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    resume_mod._sha256_of_version.cache_clear()
    for _ in range(2):  # the CLI checks before loading the model, unlearn again: the tensors are read once
        assert check_resume(files, {"method": "ga_gdr", "hyperparameters": {"steps": 6}}, steps=6)["step"] == 5
    assert len(hashed) == 1
    files.tensors.write_bytes(b"other tensors")  # changed since the state was saved: refused before any model loads
    with pytest.raises(ResumeError, match="are missing or do not match ck.resume.json"):
        check_resume(files, {"method": "ga_gdr", "hyperparameters": {"steps": 6}}, steps=6)


def test_resume_schema_names_each_problem(tmp_path):
    from unpact_mech.unlearning.resume import ResumeError, ResumeFiles, read_meta

    files = ResumeFiles.beside(tmp_path / "ck")
    good = {"format": "unpact-resume-v1", "run_key": "x", "settings": {}, "step": 2,
            "history": [{"step": 1}, {"step": 2}], "generator_state": [1, 2], "param_groups": [], "aliases": {},
            "tensors_sha256": "0" * 64}
    files.meta.write_text(json.dumps(good))
    assert read_meta(files, steps=2)["step"] == 2
    for edit, msg in (({"step": "2"}, "'step' must be the steps done, got str"),
                      ({"step": True}, "'step' must be the steps done, got bool"),
                      ({"history": [{"step": 1}]}, "one record per step"),
                      ({"generator_state": [300]}, "list of bytes"),
                      ({"aliases": {"a": 1}}, "map names to names")):
        files.meta.write_text(json.dumps({**good, **edit}))
        with pytest.raises(ResumeError, match=re.escape(msg)):
            read_meta(files, steps=2)
    files.meta.write_text(json.dumps(good))
    with pytest.raises(ResumeError, match=r"'step' is 2, outside 0..1"):
        read_meta(files, steps=1)


def test_probe_files_split_on_newline_only(tmp_path):
    from unpact_mech.probes import load_probes

    text = json.dumps({"id": "u", "prompt": "line\u2028sep and \u2029 and \x85 ?", "answer": "a"}, ensure_ascii=False)
    (tmp_path / "u.jsonl").write_text(text + "\r\n" + json.dumps(ROWS[0]) + "\n", encoding="utf-8")
    got = load_probes(tmp_path / "u.jsonl")
    assert [p.id for p in got] == ["u", "p0"] and "\u2028" in got[0].prompt


def test_device_errors_say_what_the_machine_has():
    from unpact_mech.core.options import check_device

    assert check_device("cpu") == "cpu"
    with pytest.raises(UnpactError, match="holds tensor shapes but no numbers"):
        check_device("meta")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        with pytest.raises(UnpactError, match=r"CUDA is not available here \(torch.cuda.is_available\(\) is False"):
            check_device("cuda")
    with pytest.raises(UnpactError, match=f"this machine has {n} CUDA device" if n else "CUDA is not available"):
        check_device(f"cuda:{n}")
    with pytest.raises(UnpactError, match="not truncated|unknown device|runs on cpu") as e:
        check_device("xla")
    assert "corrupt" not in str(e.value)


def test_device_is_checked_by_load_model_before_any_file_is_read(tmp_path):
    with pytest.raises(UnpactError, match="device 'meta'"):
        models.load_model(str(tmp_path / "does-not-exist"), device="meta")


def test_help_offers_only_values_the_checks_accept(capsys):
    from unpact_mech.cli.parser import build_parser
    from unpact_mech.hooks import EMPHASIS_MODES
    from unpact_mech.patching import DIRECTIONS

    subs = build_parser()._subparsers._group_actions[0]
    emph, patch = subs.choices["emphasize"], subs.choices["patch"]
    emph_help = next(c.help for c in subs._choices_actions if c.dest == "emphasize")
    assert "prompt" not in emph_help and emph_help.endswith(f"({', '.join(EMPHASIS_MODES)})")
    routes_help = next(a.help for a in emph._actions if "--routes" in a.option_strings)
    assert routes_help.endswith(", ".join(EMPHASIS_MODES))
    dir_help = next(a.help for a in patch._actions if "--direction" in a.option_strings)
    assert "both" not in dir_help and all(d in dir_help for d in DIRECTIONS)
    assert main(["patch", "--base", "a", "--unlearned", "b", "--probes", "x", "--direction", "both"]) == 2
    assert "has unknown value(s) 'both'" in capsys.readouterr().err


def test_library_refuses_what_the_cli_refuses(tiny_llama, tiny_probes):
    """The CLI is not the only guard: empty probe lists, layers and positions out of range, a zero gap, emphasis
    factors that emphasise nothing, and repeated routes are UnpactErrors in the library."""
    from unpact_mech.attribution import attribute
    from unpact_mech.findings import recovery
    from unpact_mech.patching import patch
    from unpact_mech.probes import tokenize_probes
    from unpact_mech.routes import check_route_data
    from unpact_mech.unlearning import unlearn

    tp = tokenize_probes(tiny_llama, tiny_probes[:1], "plain")[0]
    assert attribute(tiny_llama, []).empty  # an empty shard (more shards than probes) is an empty part, not an error
    with pytest.raises(UnpactError, match="no training examples"):
        unlearn(tiny_llama, "ga", [], [], "unused-ck")
    with pytest.raises(UnpactError, match="no probes to compare"):
        recovery(tiny_llama, tiny_llama, [], fmt="plain")
    with pytest.raises(UnpactError, match="hold no emphasis"):
        recovery(tiny_llama, tiny_llama, tiny_probes[:1], factors=(1.0,), fmt="plain")
    with pytest.raises(UnpactError, match="more than once"):
        recovery(tiny_llama, tiny_llama, tiny_probes[:1], factors=(1.0, 2.0, 2.0), fmt="plain")
    with pytest.raises(UnpactError, match="n_draws must be a whole number >= 1"):
        recovery(tiny_llama, tiny_llama, tiny_probes[:1], n_draws=0, fmt="plain")
    with pytest.raises(UnpactError, match=r"layers in 0..2 .* got layers \[7\]"):
        patch(tiny_llama, tiny_llama, tp, layers=[7])
    with pytest.raises(UnpactError, match="positions in 0"):
        patch(tiny_llama, tiny_llama, tp, positions=[len(tp.ids)])
    with pytest.raises(UnpactError, match="nothing to restore"):
        patch(tiny_llama, tiny_llama, tp, layers=[0])
    with pytest.raises(UnpactError, match="names relearn more than once"):
        check_route_data(["relearn", "relearn"], tiny_probes[:1])
    with pytest.raises(UnpactError, match="compare with control facts"):
        check_route_data(["quantize"], tiny_probes[:1])


def test_a_long_answer_announces_its_generation_cost(tiny_llama, capsys):
    from unpact_mech import scoring
    from unpact_mech.probes import Probe, tokenize_probes

    tp = tokenize_probes(tiny_llama, [Probe("long", "q ?", " ".join(["paris"] * 40))], "plain")[0]
    old = scoring.LONG_GENERATION
    scoring.LONG_GENERATION = 16
    try:
        scoring.generate_answers(tiny_llama, [tp])
    finally:
        scoring.LONG_GENERATION = old
    err = capsys.readouterr().err
    assert f"probe 'long' has a {tp.n_answer}-token answer" in err and "greedy tokens" in err


def test_merge_refuses_parts_whose_columns_differ(tmp_path):
    import pandas as pd

    from unpact_mech.runtime.sharding import ShardError, merge_parts, write_part

    write_part(pd.DataFrame({"probe_id": ["a"], "score": [1.0]}), tmp_path / "a.csv", "k", (0, 2))
    write_part(pd.DataFrame({"probe_id": ["b"], "metho": [1.0]}), tmp_path / "b.csv", "k", (1, 2))
    side = json.loads((tmp_path / "b.csv.shard.json").read_text())
    side.pop("sha256"), side.pop("columns")  # a sidecar of an older version: no hash, no columns
    (tmp_path / "b.csv.shard.json").write_text(json.dumps(side))
    with pytest.raises(ShardError, match="has columns"):
        merge_parts([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "m.csv")
