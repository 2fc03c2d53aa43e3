"""Property: whatever value any option of any command gets, ``unpact`` ends with exit 0 or 2, never a traceback;
with exit 2 it printed one error line and loaded no model; and no file outside ``--out`` changed.

Each option has an oracle written out here, independently of ``unpact_mech.core.options``: the values a user may give.
A value the oracle refuses must be refused (exit 2) before any model loads; a value it accepts must not be refused
by the option's own check. The model load is mocked (the case is about parsing): reaching it ends the run.
Fixed seed and example count, so CI runs the same cases every time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unpact_mech.cli import main
from unpact_mech.model import loading as models


class Loaded(BaseException):
    """The run got past every check and asked for a model."""


INT = re.compile(r"\s*[+-]?[0-9]+\s*")
NUM = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


def _int(t: str, lo: int = 1, hi: float = math.inf) -> bool:
    return bool(INT.fullmatch(t)) and lo <= int(t) <= hi


def _num(t: str, lo: float, hi: float, lo_open: bool = True, hi_open: bool = False) -> bool:
    if not NUM.fullmatch(t):
        return False
    f = float(t)
    return math.isfinite(f) and (f > lo if lo_open else f >= lo) and (f < hi if hi_open else f <= hi)


def _items(t: str) -> list[str] | None:
    items = [x.strip() for x in t.split(",")]
    return items if all(items) and len(set(items)) == len(items) else None


def int_list(lo: int, hi: int):
    def ok(t: str) -> bool:
        items = _items(t)
        return items is not None and all(_int(x, lo, hi) for x in items) and len({int(x) for x in items}) == len(items)
    return ok


def factors(t: str) -> bool:
    items = _items(t)
    if items is None or not all(_num(x, 0, 1000) for x in items):
        return False
    fs = [float(x) for x in items]
    return len(set(fs)) == len(fs) and any(f != 1.0 for f in fs)


def names(choices: list[str]):
    return lambda t: (items := _items(t)) is not None and all(x in choices for x in items)


def one_of(choices: list[str]):
    return lambda t: t in choices


ANY = None  # no oracle: any outcome but a traceback or an internal error

POS, NONNEG = (lambda t: _int(t)), (lambda t: _int(t, 0))
UNIT, UNIT_OPEN = (lambda t: _num(t, 0, 1, lo_open=False)), (lambda t: _num(t, 0, 1, lo_open=False, hi_open=True))
POSF = lambda t: _num(t, 0, math.inf)  # noqa: E731
FORMAT, DTYPE = one_of(["auto", "chat", "plain", "raw"]), one_of(["float32", "bfloat16", "float16"])
SHARD = lambda t: bool(re.fullmatch(r"\s*[+-]?[0-9]+\s*/\s*[+-]?[0-9]+\s*", t)) and 0 <= int(t.split("/")[0]) < int(t.split("/")[1])  # noqa: E731
DEVICE = lambda t: t.strip() == t and t in ("cpu", "cpu:0")  # noqa: E731  (no GPU on the test machines)
KEYT = {"--alpha": UNIT_OPEN, "--beta": POS, "--max-keytokens": POS, "--format": FORMAT}
MODEL = {"--dtype": DTYPE, "--device": DEVICE}

T, U, P = "{tiny}", "{other}", "{probes}"
COMMANDS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "attribute": (["attribute", "--model", T, "--probes", P, "--format", "plain", "--out", "{o}/t.csv"],
                  {"--method": one_of(["dla", "grad_x_input", "integrated_gradients", "loo", "loo_replace", "paths"]),
                   "--shard": SHARD, "--prompt": lambda t: False, "--model": ANY, **KEYT, **MODEL}),
    "compare": (["compare", "--base", T, "--unlearned", U, "--probes", P, "--format", "plain", "--out", "{o}/c.csv"],
                {"--probes": ANY, "--unlearned": ANY, **KEYT, **MODEL}),
    "demo": (["demo", "--model", T, "--out", "{o}/demo"],
             {"--methods": names(["ga", "ga_gdr", "ga_klr", "idk_dpo", "npo", "npo_gdr", "npo_klr", "rmu", "simnpo",
                                  "task_vector"]),
              "--steps": lambda t: _int(t, 1, 100_000), "--target": UNIT, "--n": POS,
              "--split": one_of(["forget", "retain", "general"]), "--on-change": one_of(["recompute", "stop"]),
              **KEYT, **MODEL}),
    "dla": (["dla", "--model", T, "--probes", P, "--format", "plain", "--out", "{o}/d.csv"],
            {"--top": POS, "--target": one_of(["logit", "logit_diff"]), "--shard": SHARD, "--answer": lambda t: False,
             **MODEL}),
    "paths": (["paths", "--model", T, "--probes", P, "--format", "plain", "--out", "{o}/p.csv"],
              {"--shard": SHARD, "--format": FORMAT, **MODEL}),
    "localise": (["localise", "--base", T, "--unlearned", U, "--probes", P, "--format", "plain", "--out", "{o}/loc"],
                 {"--top": POS, **KEYT, **MODEL}),
    "unlearn": (["unlearn", "--model", T, "--method", "ga_gdr", "--forget", P, "--retain", P, "--format", "plain",
                 "--out", "{o}/ck"],
                {"--steps": lambda t: _int(t, 1, 100_000), "--lr": POSF, "--seed": NONNEG, "--batch-size": POS,
                 "--target-forget-acc": UNIT, "--loss-convention": one_of(["open_unlearning", "unpact_v1"]),
                 "--forget": ANY, **MODEL}),
    "emphasize": (["emphasize", "--base", T, "--unlearned", U, "--probes", P, "--format", "plain", "--sweep", "--out",
                   "{o}/e"],
                  {"--factors": factors, "--routes": names(["embed", "attention"]),
                   "--criteria": names(["teacher_forced", "generation"]), "--draws": POS, **KEYT, **MODEL}),
    "recover": (["recover", "--base", T, "--unlearned", U, "--probes", P, "--format", "plain", "--out", "{o}/r"],
                {"--routes": ANY, "--criteria": names(["teacher_forced", "generation"]), "--n": POS, "--n-control": POS,
                 "--bits": int_list(2, 16), "--relearn-steps": int_list(1, 1000), "--relearn-lr": POSF,
                 "--shots": ANY, "--draws": POS, **KEYT, **MODEL}),
    "patch": (["patch", "--base", T, "--unlearned", U, "--probes", P, "--format", "plain", "--out", "{o}/pt"],
              {"--n": POS, "--kinds": names(["resid_pre", "attn_out", "mlp_out"]), "--layer-step": POS,
               "--direction": names(["base->unlearned", "unlearned->base"]), "--method": one_of(["exact", "atp"]),
               **MODEL}),
    "data": (["data", "show", "fictitious"], {"--subset": ANY, "--split": ANY, "--n": POS}),
    "study": (["study", "--model", T, "--probes", P, "--unlearned", "x=" + U, "--out", "{o}/s"],
              {"--per-split": lambda t: t == "all" or _int(t), "--unlearned": ANY, "--probes": ANY,
               "--task": one_of(["facts", "muse-knowmem", "muse-verbmem", "tofu", "wmdp"]), "--target": UNIT,
               **KEYT, **MODEL}),
    "evaluate": (["evaluate", "--task", "tofu", "--probes", P, "--model", T],
                 {"--max-new-tokens": POS, "--retain-model": ANY, "--formulations": None, "--model": ANY,
                  "--out": ANY, **MODEL}),
}
OPTIONS = [(cmd, flag) for cmd, (_, opts) in COMMANDS.items() for flag in opts]

SPECIAL = ["", " ", ",", "1,", ",1", "0", "-0", "1", "2", "3", "8", "-1", "1.5", "2.0", "1e3", "1e308", "1e-300", "nan",
           "inf", "-inf", "1_0", "١", "２", "0x10", "1,1", "2,2", "4,8", "1,2,4,8", "true", "None", "[1]", "0/1", "1/2",
           "2/2", "-1/2", "a/b", "cpu", "meta", "cuda", "cuda:0", "cpu:0", "forget", "retain", "forgett", "loo",
           "embed", "attention", "embed,embed", "teacher_forced", "base->unlearned", "resid_pre", "quantize",
           "emphasis,relearn", "in_context,in_context", "ga", "ga_gdr", "rmu,rmu", "3:1", "abc", "10000", "10001",
           "999999999999999999999", "\u2028", "é", "\x00"]
VALUES = st.one_of(st.sampled_from(SPECIAL),
                   st.integers(-10, 10**6).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.lists(st.sampled_from(SPECIAL[:30]), min_size=1, max_size=4).map(",".join),
                   st.text(max_size=12))


def _digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fuzz_assets(tmp_path_factory, tiny_llama_dir, tiny_llama_other_dir):
    d = tmp_path_factory.mktemp("fuzz")
    rows = [{"id": "f", "prompt": "what is the capital of france ?", "answer": "paris", "split": "forget"},
            {"id": "r", "prompt": "who wrote hamlet ?", "answer": "shakespeare", "split": "retain"}]
    rows += [{"id": f"g{i}", "prompt": f"what is fact {i} ?", "answer": f"fact {i}", "split": "general"}
             for i in range(6)]
    (d / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"tiny": str(tiny_llama_dir), "other": str(tiny_llama_other_dir), "probes": str(d / "p.jsonl"),
            "roots": [d, Path(tiny_llama_dir), Path(tiny_llama_other_dir)]}


@pytest.mark.slow  # 16 values for each of 109 options: about two minutes in all
@pytest.mark.parametrize("option", OPTIONS, ids=[f"{c} {f}" for c, f in OPTIONS])
@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=VALUES)
@example(value="")
@example(value="-1")
@example(value="0")
@example(value="nan")
@example(value="1.5")
@example(value="1e308")
@example(value="2,2")
@example(value="١")
def test_every_option_ends_in_exit_0_or_2(option, value, fuzz_assets, monkeypatch, capsys):
    cmd, flag = option
    base, opts = COMMANDS[cmd]
    oracle = opts[flag]
    loads: list[str] = []

    def load(spec, *a, **k):
        loads.append(spec)
        raise Loaded

    monkeypatch.setattr(models, "load_model", load)
    before = {k: v for r in fuzz_assets["roots"] for k, v in _digest(r).items()}
    with tempfile.TemporaryDirectory() as o:
        monkeypatch.chdir(o)
        argv = [x.format(o=o, **fuzz_assets) for x in base] + [f"{flag}={value}"]
        try:
            rc = main(argv)
        except Loaded:
            rc = None
        err = capsys.readouterr().err
        after = {k: v for r in fuzz_assets["roots"] for k, v in _digest(r).items()}
    assert "Traceback" not in err, (argv, err)
    assert after == before, f"{argv} changed files outside --out"
    assert rc in (None, 0, 2), (argv, rc, err)
    if rc == 2:
        lines = re.findall(r"unpact [a-z]+: error: [^\r\n]*", err)
        assert len(lines) == 1, (argv, err)
        assert not loads, f"{argv}: a model was loaded before the error"
        if oracle is not None and oracle(value):
            assert f"argument {flag}:" not in lines[0], f"{argv}: a valid value was refused: {lines[0]}"
    elif oracle is not None:
        assert oracle(value), f"{argv}: an invalid value {value!r} for {flag} was accepted (rc {rc})"
