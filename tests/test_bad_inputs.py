"""Every input a user can get wrong: one clear line at the CLI (exit 2), a message that names the problem, checks
that need no model done before any model loads, and no partial or stale file left behind."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import fake_hub_cache
from conftest import write_jsonl as _jsonl

from unpact_mech.cli import main
from unpact_mech.core.errors import UnpactError
from unpact_mech.model import loading as models

GOOD = [
    {"id": "p0", "prompt": "what is the capital of france ?", "answer": "the capital of france is paris .",
     "fact": "paris"},
    {"id": "p1", "prompt": "who wrote hamlet ?", "answer": "shakespeare", "split": "retain"},
    {"id": "p2", "prompt": "what is the red planet ?", "answer": "mars", "split": "general"},
]



@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_llama_dir, tiny_gemma2_dir, tiny_llama_other_dir):
    """Read-only inputs shared by the cases: probe files, damaged and NaN checkpoints, a part table."""
    d = tmp_path_factory.mktemp("assets")
    _jsonl(d / "good.jsonl", GOOD)
    _jsonl(d / "dup.jsonl", [GOOD[0], GOOD[1], {**GOOD[2], "id": "p0"}])
    _jsonl(d / "int_prompt.jsonl", [GOOD[0], {"id": "x", "prompt": 42, "answer": "a"}])
    (d / "latin1.jsonl").write_bytes(b'{"id": "l", "prompt": "caf\xe9 ?", "answer": "a"}\n')  # latin-1 bytes
    (d / "empty.jsonl").write_text("\n\n")
    _jsonl(d / "badjson.jsonl", [GOOD[0], "{not json"])
    _jsonl(d / "missing.jsonl", [{"id": "m", "prompt": "q ?"}])
    _jsonl(d / "fact.jsonl", [{"id": "f", "prompt": "q ?", "answer": "paris", "fact": "tokyo"}])
    _jsonl(d / "keywords.jsonl", [{"id": "k", "prompt": "q ?", "answer": "a", "keywords": "paris"}])
    _jsonl(d / "boolid.jsonl", [{"id": True, "prompt": "q ?", "answer": "a"}])
    _jsonl(d / "list.jsonl", ["[1, 2]"])
    _jsonl(d / "long.jsonl", [{"id": "long", "prompt": " ".join(["paris"] * 200), "answer": "a"}])
    _jsonl(d / "nullanswer.jsonl", [{"id": "n", "prompt": "q ?", "answer": None}])
    (d / "a_file").write_text("not a directory\n")
    trunc = d / "trunc_ckpt"
    shutil.copytree(tiny_llama_dir, trunc)
    st = next(trunc.glob("*.safetensors"))
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 3])
    othertok = d / "othertok_ckpt"  # the same weights, a tokenizer with one more token: another vocabulary
    shutil.copytree(tiny_llama_dir, othertok)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(othertok)
    tok.add_tokens(["zzzextra"])
    tok.save_pretrained(othertok)
    badcfg = d / "badcfg_ckpt"
    shutil.copytree(tiny_llama_dir, badcfg)
    (badcfg / "config.json").write_text("{broken")
    nocfg = d / "nocfg"
    nocfg.mkdir()
    nan = d / "nan_ckpt"
    hf = models.load_hf(str(tiny_llama_dir))
    with torch.no_grad():
        for p in hf.parameters():
            p.fill_(math.nan)
    models.save_checkpoint(hf, models._load_tokenizer(str(tiny_llama_dir)), nan, {"method": "broken"})
    remote = d / "remote_code"
    shutil.copytree(tiny_llama_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "m.M"}}))
    # two shards of one run, and a part of another run
    assert main(["attribute", "--model", str(tiny_llama_dir), "--probes", str(d / "good.jsonl"), "--format", "plain",
                 "--out", str(d / "part0.csv"), "--shard", "0/2"]) == 0
    assert main(["attribute", "--model", str(tiny_llama_dir), "--probes", str(d / "good.jsonl"), "--format", "plain",
                 "--out", str(d / "part1.csv"), "--shard", "1/2"]) == 0
    _jsonl(d / "other_run.jsonl", [GOOD[0]])
    assert main(["attribute", "--model", str(tiny_llama_dir), "--probes", str(d / "other_run.jsonl"), "--format",
                 "plain", "--out", str(d / "other.csv"), "--shard", "1/2"]) == 0
    (d / "nosidecar.csv").write_text((d / "part0.csv").read_text())
    shutil.copy(d / "part0.csv", d / "damaged.csv")
    (d / "damaged.csv.shard.json").write_text("{")
    arraycfg = d / "arraycfg_ckpt"
    shutil.copytree(tiny_llama_dir, arraycfg)
    (arraycfg / "config.json").write_text("[1, 2]")
    notok = d / "notok_ckpt"
    shutil.copytree(tiny_llama_dir, notok)
    for f in notok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    (d / "probe_dir").mkdir()
    _jsonl(d / "forgett.jsonl", [{**GOOD[0], "split": "forgett"}, GOOD[1]])
    _jsonl(d / "no_general.jsonl", [GOOD[0], GOOD[1]])
    _jsonl(d / "no_retain.jsonl", [GOOD[0], GOOD[2], {**GOOD[2], "id": "p3"}])
    shutil.copy(d / "part0.csv", d / "trunc.csv")
    shutil.copy(d / "part0.csv.shard.json", d / "trunc.csv.shard.json")
    (d / "trunc.csv").write_bytes((d / "part0.csv").read_bytes()[:20])
    (d / "empty_source.jsonl").write_text("")
    (d / "bad_source.jsonl").write_text("{nope\n")
    (d / "source.txt").write_text("x\n")
    return {"d": d, "tiny": str(tiny_llama_dir), "gemma2": str(tiny_gemma2_dir), "other": str(tiny_llama_other_dir)}


@dataclass
class Case:
    id: str
    argv: list[str]
    fragment: str
    before_load: bool = True  # the model must not be loaded before the error
    absent: list[str] = field(default_factory=list)  # outputs that must not exist afterwards
    setup: str | None = None  # "out_exists" | "out_is_file" | "legacy_resume" | "corrupt_resume"


T, A = "{tiny}", "{d}"
P = f"{A}/good.jsonl"
ATTR = ["attribute", "--model", T, "--format", "plain"]
CMP = ["compare", "--base", T, "--unlearned", T, "--format", "plain"]
UNL = ["unlearn", "--model", T, "--format", "plain", "--forget", P, "--retain", P]
EMPH = ["emphasize", "--base", T, "--unlearned", T, "--probes", P]
PATCH = ["patch", "--base", T, "--unlearned", "{other}", "--probes", P, "--format", "plain"]
REC_BASE = ["recover", "--base", T, "--unlearned", "{other}", "--format", "plain", "--out", "{w}/r"]
REC = [*REC_BASE, "--probes", P]

CASES = [
    # models
    Case("unknown-model", ["attribute", "--model", "no-such-model", "--prompt", "q", "--answer", "a"], "unknown model spec", before_load=False),
    Case("model-dir-without-config", ["attribute", "--model", f"{A}/nocfg", "--prompt", "q", "--answer", "a"], "no config.json", before_load=False),
    Case("model-is-a-file", ["attribute", "--model", f"{A}/a_file", "--prompt", "q", "--answer", "a"], "is a file", before_load=False),
    Case("truncated-weights", ["attribute", "--model", f"{A}/trunc_ckpt", "--prompt", "what is the capital of france ?",
                                    "--answer", "paris"],
         "truncated or corrupt", before_load=False),
    Case("damaged-config", ["attribute", "--model", f"{A}/badcfg_ckpt", "--prompt", "q", "--answer", "a"],
         "config.json' is not valid JSON", before_load=False),
    Case("remote-code-refused", ["attribute", "--model", f"{A}/remote_code", "--prompt", "what is the capital of france ?",
                                    "--answer", "paris"],
         "--trust-remote-code", before_load=False),
    Case("hub-id-offline", ["attribute", "--model", "nobody/nothing", "--prompt", "q", "--answer", "a"],
         "could not load model", before_load=False),
    # probe files
    Case("probes-missing", [*ATTR, "--probes", f"{A}/nope.jsonl"], "does not exist"),
    Case("probes-duplicate-ids", [*ATTR, "--probes", f"{A}/dup.jsonl"], "duplicate probe id(s) ['p0']"),
    Case("probes-int-prompt", [*ATTR, "--probes", f"{A}/int_prompt.jsonl"], "int_prompt.jsonl:2"),
    Case("probes-int-prompt-field", [*ATTR, "--probes", f"{A}/int_prompt.jsonl"], "field 'prompt' must be a string"),
    Case("probes-not-utf8", [*ATTR, "--probes", f"{A}/latin1.jsonl"], "latin1.jsonl' is not UTF-8"),
    Case("probes-empty", [*ATTR, "--probes", f"{A}/empty.jsonl"], "holds no probes"),
    Case("probes-bad-json", [*ATTR, "--probes", f"{A}/badjson.jsonl"], "badjson.jsonl:2"),
    Case("probes-missing-field", [*ATTR, "--probes", f"{A}/missing.jsonl"], "lacks field(s) ['answer']"),
    Case("probes-fact-outside-answer", [*ATTR, "--probes", f"{A}/fact.jsonl"], "is not inside answer"),
    Case("probes-keywords-not-list", [*ATTR, "--probes", f"{A}/keywords.jsonl"], "'keywords' must be a list"),
    Case("probes-bool-id", [*ATTR, "--probes", f"{A}/boolid.jsonl"], "id must be a string or an integer"),
    Case("probes-not-object", [*ATTR, "--probes", f"{A}/list.jsonl"], "must be a JSON object"),
    Case("probes-null-answer", [*ATTR, "--probes", f"{A}/nullanswer.jsonl"], "field 'answer' must be a string"),
    # past the context: refused from the tokenizer and config.json on disk, before any weights load (issue 47)
    Case("probe-longer-than-context", [*ATTR, "--probes", f"{A}/long.jsonl"], "longer than the model context"),
    Case("pair-probe-longer-than-context", [*CMP, "--probes", f"{A}/long.jsonl"], "longer than the model context"),
    Case("patch-probe-longer-than-context", ["patch", "--base", T, "--unlearned", "{other}", "--format", "plain",
                                             "--probes", f"{A}/long.jsonl"], "longer than the model context"),
    Case("no-prompt-no-probes", ATTR, "give --prompt and --answer"),
    Case("chat-format-without-template", ["attribute", "--model", T, "--format", "chat", "--probes", P],
         "no chat template"),
    # keytoken parameters
    Case("alpha-out-of-range", [*ATTR, "--probes", P, "--alpha", "1.5"], "argument --alpha: must be a finite number in [0, 1)"),
    Case("beta-zero", [*ATTR, "--probes", P, "--beta", "0"], "argument --beta: must be a whole number >= 1"),
    Case("max-keytokens-zero", [*CMP, "--probes", P, "--max-keytokens", "0", "--out", f"{A}/x.csv"],
         "argument --max-keytokens: must be a whole number >= 1"),
    # outputs and shards
    Case("out-bad-suffix", [*ATTR, "--probes", P, "--out", "{w}/t.txt"], "must end in .csv or .parquet", absent=["t.txt"]),
    Case("out-exists", [*ATTR, "--probes", P, "--out", "{w}/out"], "exists; pass --overwrite", setup="out_exists_csv"),
    Case("out-under-a-file", [*ATTR, "--probes", P, "--out", f"{A}/a_file/t.csv"], "is not writable"),
    Case("out-is-a-directory", [*ATTR, "--probes", P, "--out", "{w}"], "must end in .csv"),
    Case("shard-garbage", [*ATTR, "--probes", P, "--shard", "x", "--out", "{w}/t.csv"], "--shard takes 'i/n'",
         absent=["t.csv"]),
    Case("shard-out-of-range", [*ATTR, "--probes", P, "--shard", "3/2", "--out", "{w}/t.csv"], "need 0 <= i < n",
         absent=["t.csv"]),
    Case("compare-out-exists", [*CMP, "--probes", P, "--out", "{w}/out"], "exists; pass --overwrite",
         setup="out_exists_csv"),
    Case("compare-nan-model", ["compare", "--base", T, "--unlearned", f"{A}/nan_ckpt", "--probes", P, "--format",
                               "plain", "--out", "{w}/c.csv"], "model 'nan_ckpt' gives a non-finite",
         before_load=False, absent=["c.csv", "c.summary.json"]),
    Case("compare-missing-base", ["compare", "--base", f"{A}/nope", "--unlearned", T, "--probes", P, "--out",
                                  "{w}/c.csv"], "unknown model spec", before_load=False, absent=["c.csv"]),
    Case("compare-unknown-benchmark", [*CMP, "--probes", "nosuch:forget", "--out", "{w}/c.csv"], "does not exist"),
    Case("dla-refuses-softcapping", ["dla", "--model", "{gemma2}", "--probes", P, "--format", "plain", "--out",
                                     "{w}/d.csv"], "soft-capped (tanh)", before_load=False, absent=["d.csv"]),
    Case("dla-bad-suffix", ["dla", "--model", T, "--probes", P, "--out", "{w}/d.json"], "must end in .csv",
         absent=["d.json"]),
    Case("paths-shard-garbage", ["paths", "--model", T, "--probes", P, "--shard", "1", "--out", "{w}/p.csv"],
         "--shard takes 'i/n'"),
    Case("localise-out-is-file", ["localise", "--base", T, "--unlearned", T, "--probes", P, "--out", f"{A}/a_file"],
         "is a file, not a directory"),
    # unlearning
    Case("unlearn-lr-zero", [*UNL, "--method", "ga_gdr", "--lr", "0", "--out", "{w}/ck"], "argument --lr: must be a finite number > 0",
         absent=["ck"]),
    Case("unlearn-lr-inf", [*UNL, "--method", "ga_gdr", "--lr", "inf", "--out", "{w}/ck"], "argument --lr: must be a finite number > 0",
         absent=["ck"]),
    Case("unlearn-lr-nan", [*UNL, "--method", "ga_gdr", "--lr", "nan", "--out", "{w}/ck"], "argument --lr: must be a finite number > 0",
         absent=["ck"]),
    Case("unlearn-lr-negative", [*UNL, "--method", "ga", "--lr=-1e-4", "--out", "{w}/ck"], "argument --lr: must be a finite number > 0",
         absent=["ck"]),
    Case("unlearn-steps-zero", [*UNL, "--method", "ga_gdr", "--steps", "0", "--out", "{w}/ck"], "argument --steps: must be a whole number in 1..100000",
         absent=["ck"]),
    Case("unlearn-batch-zero", [*UNL, "--method", "ga_gdr", "--batch-size", "0", "--out", "{w}/ck"],
         "argument --batch-size: must be a whole number >= 1", absent=["ck"]),
    Case("unlearn-target-above-one", [*UNL, "--method", "ga_gdr", "--target-forget-acc", "2", "--out", "{w}/ck"],
         "argument --target-forget-acc: must be a finite number in [0, 1]", absent=["ck"]),
    Case("unlearn-needs-retain", ["unlearn", "--model", T, "--method", "npo_gdr", "--forget", P, "--out", "{w}/ck"],
         "needs retain data", absent=["ck"]),
    Case("unlearn-rmu-needs-retain", ["unlearn", "--model", T, "--method", "rmu", "--forget", P, "--out", "{w}/ck"],
         "needs retain data", absent=["ck"]),
    Case("unlearn-out-exists", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/out"], "exists; pass --overwrite",
         setup="out_exists_dir"),
    Case("unlearn-out-is-file", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/out"], "is a file",
         setup="out_is_file", absent=["out.old"]),
    Case("unlearn-weights-explode", [*UNL, "--method", "ga", "--lr", "1e30", "--steps", "3", "--out", "{w}/ck"],
         "weights became NaN or infinite at step", before_load=False, absent=["ck", "ck.resume.json"]),
    Case("unlearn-legacy-resume", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/ck"],
         "legacy pickled resume file", before_load=False, setup="legacy_resume", absent=["ck"]),
    Case("unlearn-corrupt-resume", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/ck"],
         "unreadable", before_load=False, setup="corrupt_resume", absent=["ck"]),
    Case("unlearn-forget-missing", ["unlearn", "--model", T, "--method", "ga", "--forget", f"{A}/nope.jsonl", "--out",
                                    "{w}/ck"], "does not exist", absent=["ck"]),
    Case("unlearn-forget-duplicates", ["unlearn", "--model", T, "--method", "ga", "--forget", f"{A}/dup.jsonl",
                                       "--out", "{w}/ck"], "duplicate probe id", absent=["ck"]),
    # emphasis
    Case("emphasis-factor-inf", [*EMPH, "--factors", "inf", "--out", "{w}/e"], "each factor must be a finite number in (0, 1000]", absent=["e"]),
    Case("emphasis-factor-nan", [*EMPH, "--factors", "nan", "--out", "{w}/e"], "each factor must be a finite number in (0, 1000]", absent=["e"]),
    Case("emphasis-factor-zero", [*EMPH, "--factors", "0", "--out", "{w}/e"], "each factor must be a finite number in (0, 1000]", absent=["e"]),
    Case("emphasis-factor-negative", [*EMPH, "--factors", "-2", "--out", "{w}/e"], "each factor must be a finite number in (0, 1000]", absent=["e"]),
    Case("emphasis-factor-sweep-one-bad", [*EMPH, "--sweep", "--factors", "1,2,inf", "--out", "{w}/e"],
         "each factor must be a finite number in (0, 1000]", absent=["e"]),
    Case("emphasis-factor-text", [*EMPH, "--factors", "big", "--out", "{w}/e"], "each factor must be a finite number in (0, 1000]",
         absent=["e"]),
    Case("emphasis-unknown-route", [*EMPH, "--routes", "embed,telepathy", "--out", "{w}/e"], "has unknown value(s) 'telepathy'; choose from embed, attention",
         absent=["e"]),
    Case("emphasis-out-is-file", [*EMPH, "--out", f"{A}/a_file"], "is a file"),
    # patching
    Case("patch-unknown-kind", [*PATCH, "--kinds", "resid_pre,bogus", "--out", "{w}/pt"], "argument --kinds: has unknown value(s) 'bogus'", absent=["pt"]),
    Case("patch-unknown-direction", [*PATCH, "--direction", "sideways", "--out", "{w}/pt"], "argument --direction: has unknown value(s) 'sideways'",
         absent=["pt"]),
    Case("patch-n-zero", [*PATCH, "--n", "0", "--out", "{w}/pt"], "argument --n: must be a whole number >= 1", absent=["pt"]),
    # merge
    Case("merge-out-among-inputs", ["merge", f"{A}/part0.csv", f"{A}/part0.csv", f"{A}/part1.csv"],
         "also one of the inputs"),
    Case("merge-no-sidecar", ["merge", "{w}/m.csv", f"{A}/nosidecar.csv", f"{A}/part1.csv"], "not written with --shard",
         absent=["m.csv"]),
    Case("merge-different-runs", ["merge", "{w}/m.csv", f"{A}/part0.csv", f"{A}/other.csv"], "different runs",
         absent=["m.csv"]),
    Case("merge-missing-shard", ["merge", "{w}/m.csv", f"{A}/part0.csv"], "need shards 0..1 exactly once",
         absent=["m.csv"]),
    Case("merge-part-missing", ["merge", "{w}/m.csv", f"{A}/part0.csv", f"{A}/nope.csv"], "does not exist",
         absent=["m.csv"]),
    Case("merge-part-twice", ["merge", "{w}/m.csv", f"{A}/part0.csv", f"{A}/part0.csv"], "given twice",
         absent=["m.csv"]),
    Case("merge-damaged-sidecar", ["merge", "{w}/m.csv", f"{A}/damaged.csv", f"{A}/part1.csv"], "is damaged",
         absent=["m.csv"]),
    Case("merge-bad-suffix", ["merge", "{w}/m.txt", f"{A}/part0.csv", f"{A}/part1.csv"], "must end in .csv",
         absent=["m.txt"]),
    Case("merge-out-exists", ["merge", "{w}/out", f"{A}/part0.csv", f"{A}/part1.csv"], "exists; pass --overwrite",
         setup="out_exists_csv"),
    # data
    Case("data-show-no-name", ["data", "show"], "give a benchmark NAME"),
    Case("data-show-unknown", ["data", "show", "nosuch"], "unknown benchmark 'nosuch'"),
    Case("data-show-hub-offline", ["data", "show", "muse-news", "--subset", "knowmem", "--split", "forget_qa"],
         "pass the local file with --source"),
    Case("data-source-empty", ["data", "show", "muse-news", "--subset", "knowmem", "--split", "forget_qa",
                               "--source", f"{A}/empty_source.jsonl"], "is empty"),
    Case("data-source-missing", ["data", "show", "tofu", "--source", f"{A}/nope.jsonl"], "does not exist"),
    Case("data-source-bad-type", ["data", "show", "tofu", "--source", f"{A}/source.txt"], "unsupported local file type"),
    Case("data-source-malformed", ["data", "show", "tofu", "--source", f"{A}/bad_source.jsonl"], "cannot read local source"),
    Case("data-facts-unknown-split", ["data", "show", "facts", "--split", "nosplit"], "no split 'nosplit'"),
    Case("data-muse-unknown-subset", ["data", "show", "muse-news", "--subset", "nosub"], "unknown subset 'nosub'"),
    # --- round 3 (issue 26): each case named there, by class; ids say the class -----------------------------
    # raw tracebacks before
    Case("tb-recover-bits-fraction", [*REC, "--bits", "8.5", "--routes", "quantize"],
         "argument --bits: each value must be a whole number in 2..16, got '8.5'"),
    Case("tb-recover-bits-empty", [*REC, "--bits", "", "--routes", "quantize"], "argument --bits: must list at least one"),
    Case("tb-relearn-steps-text", [*REC, "--relearn-steps", "1,two", "--routes", "relearn"],
         "argument --relearn-steps: each value must be a whole number in 1..1000, got 'two'"),
    Case("tb-relearn-lr-nan", [*REC, "--relearn-lr", "nan", "--routes", "relearn"],
         "argument --relearn-lr: must be a finite number > 0, got 'nan'"),
    Case("tb-relearn-lr-negative", [*REC, "--relearn-lr=-1", "--routes", "relearn"],
         "argument --relearn-lr: must be a finite number > 0, got '-1'"),
    Case("tb-emphasize-factors-empty", [*EMPH, "--factors", "", "--out", "{w}/e"], "argument --factors: must list at least one"),
    Case("tb-emphasize-factors-overflow", [*EMPH, "--factors", "1e308", "--out", "{w}/e"],
         "each factor must be a finite number in (0, 1000], got '1e308'"),
    Case("tb-config-json-array", ["attribute", "--model", f"{A}/arraycfg_ckpt", "--prompt", "q", "--answer", "a"],
         "config.json' holds a JSON list, not an object"),
    Case("tb-resume-missing-key", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/ck"],
         "is damaged: 'run_key' is missing", setup="resume_missing_key", absent=["ck"]),
    Case("tb-device-meta", [*ATTR, "--probes", P, "--device", "meta"], "device 'meta' holds tensor shapes but no numbers"),
    Case("tb-data-fictitious-subset", ["data", "show", "fictitious", "--subset", "abc"],
         "subset must be 'N', 'N:seed' or 'N:seed:F'"),
    # wrong results with exit 0 before
    Case("wrong-probes-and-prompt", [*ATTR, "--probes", P, "--prompt", "q ?"], "--prompt is used only by runs without --probes"),
    Case("wrong-probes-and-answer", ["dla", "--model", T, "--probes", P, "--answer", "a", "--out", "{w}/d.csv"], "--answer is used only by"),
    Case("wrong-top-negative", ["dla", "--model", T, "--probes", P, "--top", "-1", "--out", "{w}/d.csv"], "argument --top: must be a whole number >= 1"),
    Case("wrong-n-negative", [*REC, "--n", "-1"], "argument --n: must be a whole number >= 1, got '-1'"),
    Case("wrong-demo-n-negative", ["demo", "--n", "-1"], "argument --n: must be a whole number >= 1"),
    Case("wrong-routes-twice", [*REC, "--routes", "in_context,in_context"], "names in_context more than once"),
    Case("wrong-direction-twice", [*PATCH, "--direction", "base->unlearned,base->unlearned", "--out", "{w}/pt"],
         "names base->unlearned more than once", absent=["pt"]),
    Case("wrong-recover-draws-zero", [*REC, "--draws", "0"], "argument --draws: must be a whole number >= 1"),
    Case("wrong-recover-n-control-negative", [*REC, "--n-control", "-1"], "argument --n-control: must be a whole number"),
    Case("wrong-emphasize-factor-one", [*EMPH, "--factors", "1", "--out", "{w}/e"], "must hold a factor other than 1"),
    Case("wrong-emphasize-factors-without-sweep", [*EMPH, "--factors", "2,4", "--out", "{w}/e"],
         "--factors is used only by --sweep when it lists several factors"),
    Case("wrong-patch-same-model", ["patch", "--base", T, "--unlearned", T, "--probes", P, "--out", "{w}/pt"],
         "--base and --unlearned are the same model", absent=["pt"]),
    Case("wrong-misspelt-split", [*EMPH, "--probes", f"{A}/forgett.jsonl", "--out", "{w}/e"],
         "unknown split 'forgett'; splits are forget, retain, general"),
    Case("wrong-merge-truncated-part", ["merge", "{w}/m.csv", f"{A}/trunc.csv", f"{A}/part1.csv"],
         "has changed since it was written", absent=["m.csv"]),
    Case("wrong-resume-step-beyond-steps", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/ck"],
         "'step' is 99, outside 0..1", setup="resume_step_beyond", absent=["ck"]),
    Case("wrong-unused-route-option", [*REC, "--bits", "4", "--routes", "emphasis"], "--bits is used only by the quantize route"),
    Case("wrong-unused-keytoken-option", [*ATTR, "--probes", P, "--method", "dla", "--alpha", "0.2"],
         "--alpha is used only by token-level methods"),
    Case("wrong-keytokens-only-with-methods", ["demo", "--keytokens-only", "--methods", "ga"],
         "--methods is used only by the full demo"),
    Case("wrong-data-list-with-subset", ["data", "list", "--subset", "x"], "--subset is used only by `unpact data show NAME`"),
    # data loss before
    Case("loss-foreign-resume", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/ck"],
         "is the resume state of another run (hyperparameters.lr: 0.5 there", setup="foreign_resume", absent=["ck"]),
    # late before (after minutes of work, or after the models loaded)
    Case("late-demo-methods", ["demo", "--methods", "ga_gdr,nosuch"], "argument --methods: has unknown value(s) 'nosuch'"),
    Case("late-demo-steps", ["demo", "--steps", "0"], "argument --steps: must be a whole number in 1..100000"),
    Case("late-demo-target", ["demo", "--target", "2"], "argument --target: must be a finite number in [0, 1]"),
    Case("late-recover-no-retain", [*REC_BASE, "--probes", f"{A}/no_retain.jsonl", "--routes", "relearn"],
         "the relearn route needs retain probes"),
    Case("late-recover-no-shots", [*REC_BASE, "--probes", f"{A}/no_general.jsonl", "--routes", "in_context"],
         "the in_context route needs shot probes"),
    Case("late-compare-missing-unlearned", ["compare", "--base", T, "--unlearned", f"{A}/nope", "--probes", P, "--out",
                                            "{w}/c.csv"], "unknown model spec", absent=["c.csv"]),
    Case("late-cold-cache-read-only", ["attribute", "--prompt", "q", "--answer", "a"], "cannot be written",
         setup="cache_unwritable"),
    Case("late-resume-tensors-missing", [*UNL, "--method", "ga_gdr", "--steps", "1", "--out", "{w}/ck"],
         "resume tensors", setup="resume_tensors_missing", absent=["ck"], before_load=True),
    Case("late-patch-other-tokenizer", ["patch", "--base", T, "--unlearned", f"{A}/othertok_ckpt", "--probes", P,
                                        "--format", "plain", "--out", "{w}/pt"], "use different tokenizers",
         absent=["pt"]),
    Case("late-compare-other-tokenizer", ["compare", "--base", T, "--unlearned", f"{A}/othertok_ckpt", "--probes", P,
                                          "--format", "plain", "--out", "{w}/c.csv"], "use different tokenizers",
         absent=["c.csv"]),
    Case("late-compare-cached-hub-ids-other-tokenizer", ["compare", "--base", "org/tiny", "--unlearned", "org/othertok",
                                                         "--probes", P, "--format", "plain", "--out", "{w}/c.csv"],
         "use different tokenizers", setup="hub_cache", absent=["c.csv"]),
    Case("late-demo-out-is-a-file", ["demo", "--keytokens-only", "--model", T, "--out", f"{A}/trunc.csv"],
         "exists and is a file, not a directory"),
    Case("late-relearn-steps-huge", [*REC, "--relearn-steps", "100000", "--routes", "relearn"], "in 1..1000"),
    Case("late-fictitious-huge", ["data", "show", "fictitious", "--subset", "2000000"], "N people in 1..10000"),
    Case("late-unlearn-steps-huge", [*UNL, "--method", "ga", "--steps", "10000000", "--out", "{w}/ck"], "in 1..100000"),
    # misleading before
    Case("misl-probes-directory", [*ATTR, "--probes", f"{A}/probe_dir"], "is a directory; give a JSON-lines file"),
    Case("misl-no-tokenizer-files", ["attribute", "--model", f"{A}/notok_ckpt", "--prompt", "q", "--answer", "a"],
         "has no tokenizer files"),
    Case("misl-device-unknown", [*ATTR, "--probes", P, "--device", "gpu9"], "unknown device 'gpu9'"),
]

RESUME_OK = {"format": "unpact-resume-v1", "run_key": "x", "step": 0, "history": [], "generator_state": [0] * 8,
             "param_groups": [], "aliases": {}, "tensors_sha256": "0" * 64}
RESUME_SETUPS = {
    "resume_missing_key": {k: v for k, v in RESUME_OK.items() if k not in ("run_key", "settings")},
    "resume_step_beyond": {**RESUME_OK, "settings": {"method": "ga_gdr"}, "step": 99,
                           "history": [{"step": i + 1, "loss": 0.0} for i in range(99)]},
    "foreign_resume": {**RESUME_OK, "settings": {"method": "ga_gdr", "hyperparameters": {"lr": 0.5}}},
    "resume_tensors_missing": {**RESUME_OK, "settings": {"method": "ga_gdr"}},  # the state's JSON without its tensors
}


def _fmt(x: str, assets: dict, w: Path) -> str:
    return x.format(tiny=assets["tiny"], d=assets["d"], gemma2=assets["gemma2"], other=assets["other"], w=w)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, assets, tmp_path, capsys, monkeypatch):
    w = tmp_path / "w"
    w.mkdir()
    argv = [_fmt(x, assets, w) for x in case.argv]
    before = None
    if case.setup == "out_exists_csv":
        argv[argv.index(str(w / "out"))] = str(w / "out.csv")
        (w / "out.csv").write_text("old,content\n1,2\n")
        before = (w / "out.csv").read_bytes()
    elif case.setup == "out_exists_dir":
        (w / "out").mkdir()
        (w / "out" / "keep.txt").write_text("old")
    elif case.setup == "out_is_file":
        (w / "out").write_text("a file the user owns\n")
    elif case.setup == "legacy_resume":
        (w / "ck.resume.pt").write_bytes(b"\x80\x04K\x01.")
    elif case.setup == "corrupt_resume":
        (w / "ck.resume.json").write_text("{truncated")
    elif case.setup in RESUME_SETUPS:
        (w / "ck.resume.json").write_text(json.dumps(RESUME_SETUPS[case.setup]))
        before = (w / "ck.resume.json").read_bytes()
    elif case.setup == "hub_cache":  # hub ids whose files the local Hugging Face cache holds: read with no network
        fake_hub_cache(w / "hub", {"org/tiny": Path(assets["tiny"]), "org/othertok": Path(assets["d"]) / "othertok_ckpt"},
                       monkeypatch)
    elif case.setup == "cache_unwritable":
        monkeypatch.setenv("UNPACT_CACHE", str(Path(assets["d"]) / "a_file" / "cache"))
    if case.before_load:
        def refuse(*a, **k):
            raise AssertionError("the model was loaded before the input was checked")

        monkeypatch.setattr(models, "load_model", refuse)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = re.findall(r"unpact [a-z]+: error: [^\r\n]*", err)  # progress bars may share the line
    assert len(lines) == 1 and "Traceback" not in err, err
    assert case.fragment in lines[0], lines[0]
    for rel in case.absent:
        assert not (w / rel).exists(), rel
    assert not [p for p in w.rglob("*") if ".tmp" in p.name], list(w.rglob("*"))
    if before is not None:  # what the user had is there, byte for byte
        assert (w / ("ck.resume.json" if case.setup in RESUME_SETUPS else "out.csv")).read_bytes() == before
    if case.setup == "out_exists_dir":
        assert (w / "out" / "keep.txt").read_text() == "old"
    if case.setup == "out_is_file":
        assert (w / "out").read_text() == "a file the user owns\n"


def test_argparse_choices_exit_2(capsys):
    for argv in (["unlearn", "--method", "nosuch", "--forget", "x", "--out", "y"],
                 ["attribute", "--dtype", "float8", "--prompt", "q", "--answer", "a"],
                 ["dla", "--target", "nope", "--prompt", "q", "--answer", "a"]):
        assert main(argv) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_internal_errors_keep_their_traceback(monkeypatch, tiny_llama_dir):
    from unpact_mech import cli

    def boom(a):
        raise KeyError("an internal bug")

    monkeypatch.setitem(cli.COMMANDS._items, "attribute", boom)
    with pytest.raises(KeyError, match="an internal bug"):
        main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "q", "--answer", "a"])


def test_debug_shows_the_traceback_of_user_errors(capsys):
    assert main(["--debug", "attribute", "--model", "no-such-model", "--prompt", "q", "--answer", "a"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "unknown model spec" in err


# --- the library, called from Python --------------------------------------------------------------------
def test_library_errors_are_unpact_errors(tiny_llama, tiny_probes, tmp_path):
    from unpact_mech.analysis.emphasis import emphasize, sweep
    from unpact_mech.attribution import attribute
    from unpact_mech.hooks import scale_embedding, steer_attention
    from unpact_mech.model.loading import save_checkpoint
    from unpact_mech.probes import Probe, tokenize_probes

    tp = tokenize_probes(tiny_llama, tiny_probes[:1], "plain")[0]
    bad = [
        lambda: emphasize(tiny_llama, tp, 2.0, positions=[999]),
        lambda: emphasize(tiny_llama, tp, 2.0, positions=[-1]),
        lambda: emphasize(tiny_llama, tp, 2.0, positions=[tp.prompt_len]),  # an answer token is no prompt token
        lambda: emphasize(tiny_llama, tp, math.inf, positions=[1], mode="embed"),
        lambda: emphasize(tiny_llama, tp, math.nan, positions=[1], mode="attention"),
        lambda: emphasize(tiny_llama, tp, 0.0, positions=[1], mode="embed"),
        lambda: emphasize(tiny_llama, tp, -3.0, positions=[1], mode="embed"),
        lambda: emphasize(tiny_llama, tp, 2.0, positions=[1], mode="telepathy"),
        lambda: sweep(tiny_llama, [tp], [[1]], factors=(1.0, math.inf)),
        lambda: scale_embedding([1], -1.0),
        lambda: scale_embedding([[1], [2]], math.nan),
        lambda: steer_attention([1], 0.0, 3),
        lambda: models.load_model(str(tmp_path / "nothing-here")),
        lambda: attribute(tiny_llama, [tiny_probes[0], tiny_probes[0]], fmt="plain"),
        lambda: Probe.from_dict({"id": "x", "prompt": 42, "answer": "a"}),
        lambda: save_checkpoint(tiny_llama.load_hf_model(), tiny_llama.tokenizer, tmp_path / "f", {}),
    ]
    (tmp_path / "f").write_text("mine")
    for i, fn in enumerate(bad):
        with pytest.raises(UnpactError):
            fn()
            pytest.fail(f"case {i} did not raise")
    assert (tmp_path / "f").read_text() == "mine" and not (tmp_path / "f.old").exists()


def test_json_outputs_never_hold_bare_nan(tmp_path):
    from unpact_mech.core.io import atomic_write_json

    atomic_write_json(tmp_path / "s.json", {"a": math.nan, "b": [1.0, math.inf], "c": {"d": -math.inf}, "e": 2.5})
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2.5}


def test_outputs_follow_the_umask_and_unsharded_tables_have_no_sidecar(tiny_llama_dir, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "t.csv"
        assert main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?",
                     "--answer", "paris", "--format", "plain", "--out", str(out)]) == 0
        assert (out.stat().st_mode & 0o777) == 0o644
        assert not (tmp_path / "t.csv.shard.json").exists()
    finally:
        os.umask(old)


def test_long_probe_announces_its_passes(tiny_llama, capsys):
    from unpact_mech.attribution import loo as loo_mod
    from unpact_mech.probes import Probe, tokenize_probes

    tp = tokenize_probes(tiny_llama, [Probe("big", " ".join(["paris"] * 60), "mars")], "plain")[0]
    old = loo_mod.LONG_JOB_TOKENS
    loo_mod.LONG_JOB_TOKENS = 1000
    try:
        loo_mod.loo_contributions(tiny_llama, [tp])
        loo_mod.loo_contributions(tiny_llama, [tp], prefix_cache=False)
    finally:
        loo_mod.LONG_JOB_TOKENS = old
    err = capsys.readouterr().err
    assert f"leave-one-out of probe 'big': {len(tp.attributable) + 1} forward passes" in err
    assert f"leave-one-out: {len(tp.attributable) + 1} forward passes" in err


def test_read_only_directory_is_refused_before_work(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the 'parent is a file' case covers the check")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded before the check"))
    assert main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "q", "--answer", "a", "--out",
                 str(ro / "t.csv")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_pair_checks_read_each_tokenizer_once_before_loading(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """compare's pre-load checks (the tokenizer pair, then each probe against the context) read each model's
    tokenizer from disk once, and a probe past the context is still refused before any weights load."""
    other = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, other)
    reads: list[str] = []
    real = models._load_tokenizer
    monkeypatch.setattr(models, "_load_tokenizer", lambda d, *a, **k: (reads.append(str(d)), real(d, *a, **k))[1])
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded before the checks"))
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "x", "prompt": " ".join(["paris"] * 200), "answer": "a"}) + "\n")
    assert main(["compare", "--base", str(tiny_llama_dir), "--unlearned", str(other), "--format", "plain",
                 "--probes", str(long)]) == 2
    assert "longer than the model context" in capsys.readouterr().err
    assert sorted(reads) == sorted([str(tiny_llama_dir), str(other)])
