"""The public API at the package root (loaded lazily), the README's Python block run as written, and the study as
one config object that round-trips through a file."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import unpact_mech as um
from unpact_mech.core.errors import UnpactError
from unpact_mech.probes.keytokens import KeyTokenParams
from unpact_mech.study.config import CONFIG_FILE, Study, StudyConfig
from unpact_mech.study.settings import Budget, FrontierBudget, RouteBudget

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_its_home():
    from unpact_mech.analysis.compare import compare as compare_fn
    from unpact_mech.analysis.localise import localise as localise_fn
    from unpact_mech.findings import recovery

    assert sorted(um.__all__) == sorted([*um._API, *um._LISTERS])
    for name in um.__all__:
        assert getattr(um, name) is not None, name
    # a function named like its module stays the function after the module is imported
    assert um.compare is compare_fn and um.localise is localise_fn and um.recovery is recovery
    from unpact_mech import compare, localise

    assert compare is compare_fn and localise is localise_fn
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        um.nope  # noqa: B018
    assert {"Analysis", "Study", "list_methods"} <= set(dir(um))


def test_importing_the_package_loads_no_model_library():
    code = "import sys, unpact_mech; print(sorted(m for m in ('torch', 'transformers', 'transformer_lens') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


OLD_PATHS = """
import importlib, sys, warnings
from unpact_mech._compat import MOVED
for old, new in MOVED.items():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        exec(f'import {old}')
        m = sys.modules[old]
    assert m is importlib.import_module(new), old  # the very module: state and monkeypatching shared
    assert m.__spec__.name == new, (old, m.__spec__.name)
    assert [x.category for x in w if new in str(x.message)] == [DeprecationWarning], (old, [str(x.message) for x in w])
    assert w[0].filename == "<string>", (old, w[0].filename)  # the warning points at the old import
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    from unpact_mech import models
    from unpact_mech.experiments import run_demo
assert models.load_model is importlib.import_module("unpact_mech.model.loading").load_model
assert run_demo.__module__ == "unpact_mech.study.dilemma"
print(len(MOVED))
"""


def test_old_import_paths_warn_and_give_the_module_at_its_new_home():
    """Every module that moved when the layers became folders imports under its old path for one release: the same
    module object, one DeprecationWarning naming the new path (in a fresh interpreter: imports are cached)."""
    res = subprocess.run([sys.executable, "-c", OLD_PATHS], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(res.stdout) >= 40
    for old in __import__("unpact_mech._compat", fromlist=["MOVED"]).MOVED:  # and no stale file shadows the alias
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists() and not (ROOT / old.replace(".", "/")).is_dir()


def test_recovery_defaults_to_the_analysis_probes():
    import inspect

    assert inspect.signature(um.recovery).parameters["probes"].default is None


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_first_block_is_at_most_ten_lines_from_one_import():
    code = _python_blocks(ROOT / "README.md")[0]
    lines = [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) <= 10 and lines[0] == "import unpact_mech as um"
    assert not any(ln.startswith(("from ", "import ")) for ln in lines[1:])


@pytest.mark.slow  # SmolLM2: a 4-step unlearning run and the three findings on six facts
def test_readme_python_block_runs_as_written(tmp_path):
    code = _python_blocks(ROOT / "README.md")[0]
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mean_keytoken_jaccard" in run.stdout and "keytokens" in run.stdout and "Rate(k=" in run.stdout
    assert (tmp_path / "unpact_out" / "npo" / "unpact.json").exists()


DOCS_WITH_CODE = [p for p in sorted((ROOT / "docs").glob("*.md")) if _python_blocks(p)]


def test_the_docs_hold_code_to_run():
    assert {p.name for p in DOCS_WITH_CODE} >= {"guide.md", "extending.md"}


@pytest.mark.slow  # SmolLM2 (the guide also runs a 2-step unlearning)
@pytest.mark.parametrize("doc", DOCS_WITH_CODE, ids=lambda p: p.name)
def test_docs_python_blocks_run(doc, tmp_path):
    """Every Python block of a docs/ page runs, the page's blocks in order as one script, in a fresh interpreter
    (what a page registers stays out of the test process) and a scratch directory."""
    code = "\n".join(_python_blocks(doc))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]


def test_docs_yaml_blocks_are_valid_study_configs():
    """Every YAML block of docs/ is a study config as a file would hold it (checked field by field, budgets
    included), so the guide's example cannot drift from StudyConfig."""
    import yaml

    blocks = [b for doc in sorted((ROOT / "docs").glob("*.md"))
              for b in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)]
    assert blocks
    for b in blocks:
        cfg = StudyConfig.from_dict(yaml.safe_load(b))
        assert cfg.to_dict() == StudyConfig.from_dict(cfg.to_dict()).to_dict()
    first = StudyConfig.from_dict(yaml.safe_load(blocks[0]))
    assert first.route_budget.routes == ("emphasis", "quantize") and first.budget.n_draws == 3


def test_study_config_round_trips_through_json_and_yaml(tmp_path):
    cfg = StudyConfig(model="m", methods=("ga_gdr",), unlearned=(("a", "dir/a"),), probes=("facts", "x.jsonl"),
                      task="tofu", steps=3, per_split=None, keytokens=KeyTokenParams(alpha=0.2, beta=3),
                      budget=Budget(n_draws=3, frontier=FrontierBudget(every=3)), factors=(1.0, 4.0),
                      route_budget=RouteBudget(routes=("emphasis", "quantize"), quantizers=("rtn",)))
    for name in ("c.json", "c.yaml"):
        assert StudyConfig.load(cfg.dump(tmp_path / name)) == cfg
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["unlearned"] == {"a": "dir/a"} and d["keytokens"]["alpha"] == 0.2 and d["methods"] == ["ga_gdr"]
    assert d["budget"]["frontier"] == {"factors": [1.0, 8.0], "modes": ["attention"], "n_draws": 1, "every": 3}
    assert d["route_budget"]["routes"] == ["emphasis", "quantize"] and d["factors"] == [1.0, 4.0]
    # a file may state only what it changes: the rest of each budget keeps its default
    part = StudyConfig.from_dict({"budget": {"n_draws": 5}, "route_budget": {"shots": 2}})
    assert part.budget == Budget(n_draws=5) and part.route_budget == RouteBudget(shots=2)
    assert StudyConfig.from_dict({}) == StudyConfig() and hash(cfg) == hash(StudyConfig.from_dict(d))


@pytest.mark.parametrize("bad, msg", [
    ({"modle": "x"}, r"unknown option\(s\) 'modle'; options are model, methods"),
    ({"keytokens": {"alpah": 0.1}}, r"keytokens: unknown option\(s\) 'alpah'"),
    ({"keytokens": {"alpha": 2.0}}, r"alpha must be in \[0, 1\)"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"probes": []}, "needs probes"),
    ({"finetune_steps": 3}, "add --finetune"),
    ({"budget": {"n_drawz": 2}}, r"budget: unknown option\(s\) 'n_drawz'; options are candidates, n_draws"),
    ({"budget": {"frontier": {"every": 0}}}, "budget.frontier.every must be a positive integer, got 0"),
    ({"budget": [1, 2]}, "budget must be a mapping of candidates, n_draws"),
    ({"route_budget": {"routes": ["emphasis", "quantise"]}}, r"unknown route\(s\) \['quantise'\]; routes are"),
    ({"factors": [1, 2000]}, r"factors must be a non-empty list of emphasis factors in \(0, 1000\]"),
])
def test_bad_study_configs_are_refused_with_the_fix(bad, msg):
    with pytest.raises(UnpactError, match=msg):
        StudyConfig.from_dict(bad)


def test_bad_config_files(tmp_path):
    with pytest.raises(UnpactError, match="does not exist"):
        StudyConfig.load(tmp_path / "none.json")
    (tmp_path / "a.json").write_text("{oops")
    with pytest.raises(UnpactError, match="not valid JSON"):
        StudyConfig.load(tmp_path / "a.json")
    (tmp_path / "a.yaml").write_text("- just\n- a list\n")
    with pytest.raises(UnpactError, match="must hold a mapping"):
        StudyConfig.load(tmp_path / "a.yaml")
    assert Study({"model": "x", "methods": ["rmu"]}).config == StudyConfig(model="x", methods=("rmu",))
    with pytest.raises(UnpactError, match="unknown option"):
        Study({"modle": "x"})


@pytest.mark.slow  # two study runs on the tiny model
def test_a_study_writes_the_config_that_reruns_it(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """``Study(config).run()`` writes OUT/study.json; ``unpact study --config`` on it reruns the same study: every
    stage's stamp matches, so nothing is recomputed and the model is not even loaded."""
    from unpact_mech.cli import main
    from unpact_mech.probes import save_probes
    from unpact_mech.study.tutorial import TINY_FACTS

    monkeypatch.setattr("unpact_mech.study.settings.SETTINGS",
                        {"ga_gdr": {"lr": 1e-3, "fmt": "plain"}})
    f = save_probes(TINY_FACTS, tmp_path / "p.jsonl")
    out = tmp_path / "study"
    cfg = StudyConfig(model=str(tiny_llama_dir), methods=("ga_gdr",), probes=(str(f),), out=str(out), steps=2,
                      target=0.0, patch=False, known_only=False, factors=(1.0, 4.0),
                      budget=Budget(n_draws=1, gen_factors=(4.0,)),
                      route_budget=RouteBudget(routes=("emphasis", "in_context"), shots=1, n_control=4))
    res = Study(cfg).run()
    table = res.summary
    assert StudyConfig.load(out / CONFIG_FILE) == cfg
    # the typed result reads the same files the stages wrote, and loads back from OUT alone
    assert list(res.methods) == ["ga_gdr"] and res.report == out / "report.html"
    assert res["ga_gdr"].row == json.loads((out / "ga_gdr" / "result.json").read_text())
    pd.testing.assert_frame_equal(res["ga_gdr"].table("recovery_routes"),
                                  pd.read_csv(out / "ga_gdr" / "recovery_routes.csv"), check_dtype=False)
    with pytest.raises(UnpactError, match="unknown result table 'recovery_route'; tables are keyword_focus"):
        res["ga_gdr"].table("recovery_route")
    with pytest.raises(UnpactError, match="has no patch_positions table"):  # patch=False: not written
        res["ga_gdr"].table("patch_positions")
    again = um.StudyResult.load(out)
    assert list(again.methods) == ["ga_gdr"] and again["ga_gdr"].row == res["ga_gdr"].row
    # the config's budgets are what ran: its routes, its emphasis factors, its draws
    assert set(pd.read_csv(out / "ga_gdr" / "recovery_routes.csv").route) == {"emphasis", "in_context"}
    rates = pd.read_csv(out / "ga_gdr" / "recovery_rates.csv")
    assert set(rates.factor.dropna()) == {4.0}  # factor 1 is the unemphasised baseline, not a rate row
    assert "config per_split" in (out / "report.html").read_text()
    stamps = {p: p.read_text() for p in out.rglob("*.stamp.json")}
    capsys.readouterr()
    assert main(["study", "--config", str(out / CONFIG_FILE)]) == 0
    assert "all stages cached, model not loaded" in capsys.readouterr().out
    assert {p: p.read_text() for p in out.rglob("*.stamp.json")} == stamps
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), table.reset_index(drop=True), check_dtype=False)
    assert main(["study", "--config", str(out / CONFIG_FILE), "--steps", "3"]) == 2
    assert "--steps would change it" in capsys.readouterr().err


def test_progress_goes_through_logging_to_the_current_streams(capsys):
    import logging

    from unpact_mech.cli import main
    from unpact_mech.core.log import say, warn

    say("a progress line")
    say("an announcement", stderr=True)
    warn("a degenerate result")
    out, err = capsys.readouterr()
    assert out == "a progress line\n" and err == "an announcement\na degenerate result\n"
    logger = logging.getLogger("unpact_mech")
    try:
        assert main(["--quiet", "data", "list"]) == 0
        assert logger.level == logging.WARNING
        say("hidden")
        warn("shown")
        out, err = capsys.readouterr()
        assert "hidden" not in out and err.endswith("shown\n")
    finally:
        logger.setLevel(logging.INFO)


def test_the_demo_is_a_preset_study(monkeypatch, tmp_path):
    """`unpact demo` runs Study on a config (the built-in facts, the paper's methods, the settings' budget), the same
    config `unpact study` builds from the same options, so its OUT/study.json reruns it."""
    from unpact_mech.cli import main
    from unpact_mech.study.settings import PAPER_METHODS, PER_SPLIT

    class Ran(Exception):
        pass

    seen = []

    def run(self, model=None, on_keytokens=None, keytoken_probes=None):
        seen.append((self.config, model, keytoken_probes))
        raise Ran

    monkeypatch.setattr(Study, "run", run)
    out = str(tmp_path / "d")
    with pytest.raises(Ran):
        main(["demo", "--out", out, "--steps", "3", "--alpha", "0.2"])
    with pytest.raises(Ran):
        main(["study", "--out", out, "--steps", "3", "--alpha", "0.2"])
    (demo, model, kp), (study, _, _) = seen
    assert demo == study == StudyConfig(out=out, steps=3, keytokens=KeyTokenParams(alpha=0.2))
    assert demo.methods == PAPER_METHODS and demo.probes == ("facts",) and demo.per_split == PER_SPLIT
    assert model is None and len(kp) == 12  # the KeyToken table's probes: the demo's --n


def test_emphasis_modes_are_modes_and_the_old_name_warns(tiny_llama, tiny_probes):
    """"mode" names an emphasis mode everywhere in the API; ``routes=`` works for one release with a
    DeprecationWarning and gives the same tables; both at once are refused."""
    new = um.recovery(tiny_llama, tiny_llama, tiny_probes[:1], (1.0, 2.0), modes=("embed",), prompt_styles=(),
                      criteria=("teacher_forced",), eligible_only=False, n_draws=1)
    with pytest.warns(DeprecationWarning, match="routes= is now modes="):
        old = um.recovery(tiny_llama, tiny_llama, tiny_probes[:1], (1.0, 2.0), routes=("embed",), prompt_styles=(),
                          criteria=("teacher_forced",), eligible_only=False, n_draws=1)
    pd.testing.assert_frame_equal(new.sweep, old.sweep)
    assert set(new.sweep.route) == {"embed"}  # the tables keep their column name (the demo's CSVs are unchanged)
    with pytest.raises(UnpactError, match="give modes= .* not both"):
        um.recovery(tiny_llama, tiny_llama, tiny_probes[:1], (1.0, 2.0), modes=("embed",), routes=("embed",))
