
import pandas as pd
import pytest
from conftest import write_jsonl as _jsonl

from unpact_mech.cli import main
from unpact_mech.evals.loaders import filter_known, load_benchmark
from unpact_mech.evals.loaders.fictitious import generate
from unpact_mech.evals.loaders.hub import SchemaError
from unpact_mech.evals.multiple_choice import mc_accuracy, mc_table


def test_muse_knowmem_verbmem_raw_from_local_files(tmp_path):
    qa = _jsonl(tmp_path / "forget_qa.jsonl", [{"question": "Who won the 2019 race?", "answer": "Ann Lee"},
                                               {"question": "Where was the summit?", "answer": "Oslo"}])
    ps = load_benchmark("muse-news", "knowmem", "forget_qa", source=qa)
    assert [p.answer for p in ps] == ["Ann Lee", "Oslo"] and ps[0].split == "forget"
    retain = load_benchmark("muse-books", "knowmem", "retain_qa", source=qa)
    assert retain[0].split == "retain" and retain[0].domain == "muse-books"
    vm = tmp_path / "verbmem.parquet"
    pd.DataFrame({"prompt": ["It was a dark"], "gt": ["and stormy night"]}).to_parquet(vm)
    assert load_benchmark("muse-books", "verbmem", "forget", source=vm)[0].answer == "and stormy night"
    raw = _jsonl(tmp_path / "raw.jsonl", [{"text": "A long news article."}])
    assert load_benchmark("muse-news", "raw", "retain1", source=raw) == ["A long news article."]


def test_schema_errors_name_dataset_split_fields(tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"q": "x", "a": "y"}])
    with pytest.raises(SchemaError, match=r"muse-bench/MUSE-News \(knowmem\), split 'forget_qa': missing field\(s\) \['question', 'answer'\]"):
        load_benchmark("muse-news", "knowmem", "forget_qa", source=bad)
    with pytest.raises(SchemaError, match="no split 'nope'"):
        load_benchmark("muse-news", "knowmem", "nope", source=bad)
    with pytest.raises(SchemaError, match=r"cais/wmdp \(wmdp-bio\), split 'test': missing field\(s\) \['question', 'choices', 'answer'\]"):
        load_benchmark("wmdp", "wmdp-bio", "test", source=bad)
    with pytest.raises(ValueError, match="unknown subset"):
        load_benchmark("tofu", "forget99", source=bad)
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("mmlu")


def test_wmdp_and_tofu(tmp_path, tiny_llama):
    w = _jsonl(tmp_path / "wmdp.jsonl", [{"question": "what is the capital of france ?",
                                          "choices": ["tokyo", "paris", "mars"], "answer": 1}])
    ps = load_benchmark("wmdp", "wmdp-chem", "test", source=w)
    assert ps[0].answer == "paris" and ps[0].meta["choices"][2] == "mars"
    acc, chance = mc_accuracy(mc_table(tiny_llama, ps, "cloze"))
    assert acc.n == 1 and acc.k in (0, 1) and chance == pytest.approx(1 / 3)
    t = _jsonl(tmp_path / "tofu.jsonl", [{"question": "q?", "answer": "a.", "paraphrased_answer": "b.",
                                          "perturbed_answer": ["c.", "d."]}])
    tp = load_benchmark("tofu", "forget05_perturbed", source=t)
    assert tp[0].meta["perturbed_answer"] == ["c.", "d."] and tp[0].split == "forget"
    with pytest.raises(SchemaError, match="paraphrased_answer"):
        load_benchmark("tofu", "retain_perturbed", source=_jsonl(tmp_path / "t2.jsonl", [{"question": "q", "answer": "a"}]))


def test_fictitious_is_deterministic():
    a, b, c = generate(5, seed=3), generate(5, seed=3), generate(5, seed=4)
    assert a == b and a != c and len(a) == 15
    assert {p.split for p in a} == {"forget", "retain"}
    assert all(p.fact in p.answer for p in a)
    assert len(load_benchmark("fictitious", "4:1", "forget")) == 3


def test_builtin_facts_splits_share_domains():
    import subprocess
    import sys
    from collections import Counter
    from pathlib import Path

    facts = load_benchmark("facts")
    doms = {s: {p.domain for p in facts if p.split == s} for s in ("forget", "retain", "general")}
    assert doms["forget"] == doms["retain"] == doms["general"]
    per_domain = Counter(p.domain for p in facts)
    assert len(facts) >= 400 and len(per_domain) >= 8 and min(per_domain.values()) >= 10
    assert all(p.fact and p.fact in p.answer for p in facts)  # every fact has its span inside the answer
    assert len({p.prompt for p in facts}) == len(facts)  # no question twice
    # the file is exactly what its generator writes (hand-written facts kept, tables rendered)
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, str(root / "scripts" / "build_facts.py"), "--check"]).returncode == 0
    with pytest.raises(ValueError, match="no split 'test'"):
        load_benchmark("facts", split="test")


@pytest.fixture(scope="module")
def smol_known(smol, smol_probes):
    """filter_known(SmolLM2, every built-in fact), computed once for the two tests that read it (kept on one
    pytest-xdist worker by their xdist_group)."""
    return filter_known(smol, smol_probes)


@pytest.mark.slow
@pytest.mark.xdist_group("smol_known")
def test_smollm2_knows_enough_builtin_facts(smol_known):
    """The brief's floor: SmolLM2 knows (fact span top-1, chat format) at least 150 built-in facts."""
    kept, report = smol_known
    assert len(kept) >= 150 and report.known.sum() == len(kept)
    assert (report.groupby("split").known.sum() >= 40).all()


@pytest.mark.slow
@pytest.mark.xdist_group("smol_known")
def test_filter_known_on_smollm2(smol_known, smol_probes):
    kept, report = smol_known
    assert 0 < len(kept) < len(smol_probes)
    assert report.known.sum() == len(kept) and report.total.sum() == len(smol_probes)


def test_data_cli(tmp_path, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "muse-news" in out and "wmdp" in out and "fictitious" in out
    qa = _jsonl(tmp_path / "f.jsonl", [{"question": "q?", "answer": "a"}])
    assert main(["data", "show", "muse-news", "--subset", "knowmem", "--split", "forget_qa", "--source", str(qa)]) == 0
    assert "1 items" in capsys.readouterr().out
