"""Multiple-choice scoring against a naive loop that scores each letter (or choice) on its own, with the
lm-evaluation-harness WMDP prompt written out here."""

import json

import numpy as np
import pytest

from unpact_mech.core.errors import UnpactError
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.evals.multiple_choice import lettered_prompt, mc_accuracy, mc_table
from unpact_mech.probes import Probe, tokenize_probes
from unpact_mech.scoring import score_probes

ROWS = [{"question": "What is the capital of France? ", "choices": ["Berlin", "Paris", "Madrid", "Rome"], "answer": 1},
        {"question": "Which planet is known as the red planet?", "choices": ["Venus", "Jupiter", "Mars", "Saturn"],
         "answer": 2},
        {"question": "Who wrote Hamlet?", "choices": ["William Shakespeare", "Jane Austen", "Homer", "Dante"],
         "answer": 0}]


@pytest.fixture(scope="module")
def wmdp_probes(tmp_path_factory):
    f = tmp_path_factory.mktemp("wmdp") / "wmdp.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return load_benchmark("wmdp", "wmdp-bio", "test", source=f)


def test_lettered_prompt_is_lm_eval_template():
    # _default_template_yaml: "{{question.strip()}}\nA. {{choices[0]}}\n...\nD. {{choices[3]}}\nAnswer:"
    want = ("The following are multiple choice questions (with answers) about biology.\n\n"
            "What is the capital of France?\nA. Berlin\nB. Paris\nC. Madrid\nD. Rome\nAnswer:")
    got = lettered_prompt(ROWS[0]["question"], ROWS[0]["choices"],
                          "The following are multiple choice questions (with answers) about biology.\n\n")
    assert got == want


def _naive_ll(subject, prompt, answer, fmt):
    tp = tokenize_probes(subject, [Probe("x", prompt, answer)], fmt)[0]
    return float(score_probes(subject, [tp])[0].logprobs.sum())


@pytest.mark.slow
@pytest.mark.parametrize("formulation", ["lettered", "cloze"])
def test_mc_table_equals_a_naive_loop(smol, wmdp_probes, formulation):
    t = mc_table(smol, wmdp_probes, formulation)
    for row, r in zip(t.itertuples(), ROWS):
        if formulation == "lettered":
            text = r["question"].strip() + "\n" + "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(r["choices"]))
            lls = [_naive_ll(smol, text + "\nAnswer:", letter, "raw") for letter in "ABCD"]
        else:
            lls = [_naive_ll(smol, r["question"], c, "plain") for c in r["choices"]]
        assert np.allclose(row.lls, lls, atol=1e-4)
        assert row.pred == int(np.argmax(lls)) and row.gold == r["answer"]
        assert row.correct == (int(np.argmax(lls)) == r["answer"])
        # acc_norm divides by the scored continuation's length, as lm-eval's process_results divides by
        # len(doc_to_choice): the letter (so lettered acc_norm is acc) or the choice's text
        norm = [ll / (1 if formulation == "lettered" else len(c)) for ll, c in zip(lls, r["choices"])]
        assert row.pred_norm == int(np.argmax(norm))
        assert formulation == "cloze" or row.pred_norm == row.pred
        assert row.margin == pytest.approx(lls[r["answer"]] - max(np.delete(lls, r["answer"])), abs=1e-4)
    acc, chance = mc_accuracy(t)
    assert acc.n == 3 and acc.k == int(t.correct.sum()) and chance == 0.25


def test_mc_refuses_probes_without_choices(tiny_llama):
    with pytest.raises(UnpactError, match=r"meta\['choices'\]"):
        mc_table(tiny_llama, [Probe("p", "what ?", "a")])
    with pytest.raises(UnpactError, match="answer_index"):
        mc_table(tiny_llama, [Probe("p", "what ?", "a", meta={"choices": ["a", "b"], "answer_index": 5})])
    with pytest.raises(UnpactError, match="formulation"):
        mc_table(tiny_llama, [Probe("p", "what ?", "a", meta={"choices": ["a", "b"], "answer_index": 0})], "letters")


def test_as_multiple_choice():
    from unpact_mech.evals.multiple_choice import as_multiple_choice

    facts = [Probe(f"g{i}", f"q{i} ?", f"answer {c}", fact=c, domain="geo") for i, c in enumerate("abcdef")]
    facts.append(Probe("x0", "other ?", "zz", domain="other"))
    mc = as_multiple_choice(facts[:6], 4, seed=1)
    assert mc == as_multiple_choice(facts[:6], 4, seed=1)  # seeded
    for p, q in zip(facts, mc):
        ch = q.meta["choices"]
        assert len(ch) == 4 == len(set(ch)) and ch[q.meta["answer_index"]] == p.fact and set(ch) <= set("abcdef")
    with pytest.raises(UnpactError, match="distractors"):
        as_multiple_choice(facts, 4)


def _mc_probes():
    from unpact_mech.probes import Probe

    words = ["paris", "tokyo", "shakespeare", "mars"]
    qs = [("what is the capital of france ?", 0), ("what is the capital of japan ?", 1), ("who wrote hamlet ?", 2),
          ("what is the red planet ?", 3)]
    return [Probe(f"m{i}", q, words[k], ["forget", "forget", "retain", "general"][i],
                  meta={"choices": words[i:] + words[:i], "answer_index": (k - i) % 4}) for i, (q, k) in enumerate(qs)]


@pytest.mark.parametrize("route", [None, "embed", "attention"])
def test_choice_criterion_equals_a_naive_loop_under_emphasis(tiny_llama, route):
    """The multiple_choice criterion (all choices of all probes in one batch, row r's emphasis on each of its
    choices) == a naive loop: each choice alone, the emphasis route's hooks on the bridge, log_softmax summed."""
    import torch

    from unpact_mech.evals.criteria import criterion
    from unpact_mech.hooks import Emphasis
    from unpact_mech.scoring import emphasis_hooks

    probes = _mc_probes()
    tps = tokenize_probes(tiny_llama, probes, "plain")
    pos = [list(tp.attributable[1:3]) for tp in tps]
    emph = None if route is None else Emphasis.of(route, pos, 8.0)
    t = criterion("multiple_choice").table(tiny_llama, tps, emph)
    for row, p, tp_pos in zip(t.itertuples(), probes, pos):
        lls = []
        for c in p.meta["choices"]:
            tp = tokenize_probes(tiny_llama, [Probe("x", p.prompt, c)], "plain")[0]
            ids = torch.tensor([tp.ids])
            with torch.no_grad():
                logits = (tiny_llama.bridge(ids) if emph is None else tiny_llama.bridge.run_with_hooks(
                    ids, fwd_hooks=emphasis_hooks(tiny_llama, Emphasis.of(route, [tp_pos], 8.0))))[0]
            lp = torch.log_softmax(logits.double(), -1)[tp.prompt_len - 1:-1]
            lls.append(float(lp.gather(1, torch.tensor(tp.answer_ids)[:, None]).sum()))
        gold = p.meta["answer_index"]
        assert row.pred == int(np.argmax(lls)) and row.correct == (int(np.argmax(lls)) == gold)
        assert row.margin == pytest.approx(lls[gold] - max(np.delete(lls, gold)), abs=1e-4)


def test_choice_criterion_applies_only_to_probes_with_choices(tiny_probes):
    from unpact_mech.evals.criteria import check_criteria, criteria_for, universal_criteria

    assert universal_criteria() == ("teacher_forced", "generation")
    assert criteria_for(tiny_probes) == universal_criteria()
    assert criteria_for(_mc_probes()) == ("teacher_forced", "generation", "multiple_choice")
    assert criteria_for(_mc_probes() + tiny_probes[:1]) == universal_criteria()
    with pytest.raises(UnpactError, match=r"'multiple_choice' judges multiple-choice probes only.*'t0'.*--probes wmdp"):
        check_criteria(["multiple_choice"], tiny_probes)


def test_recovery_under_the_choice_criterion(tiny_llama, tiny_llama_dir, tmp_path):
    """findings.recovery judged by the choice argmax: eligibility from the base and unlearned choice tables,
    and its rates counted over those eligible probes; refused on probes without choices, before any work."""
    from dataclasses import replace

    from unpact_mech.evals.criteria import choice_table
    from unpact_mech.findings import recovery
    from unpact_mech.model.loading import load_model
    from unpact_mech.unlearning import unlearn

    first = _mc_probes()  # gold := the base model's own choice, so that the base answers every probe
    pred = choice_table(tiny_llama, tokenize_probes(tiny_llama, first, "plain")).pred
    probes = [replace(p, answer=p.meta["choices"][k], meta={**p.meta, "answer_index": int(k)}) for p, k in zip(first, pred)]
    ck = unlearn(tiny_llama, "ga_klr", probes[:2], probes[2:3], tmp_path / "ck", steps=3, lr=5e-2, progress=False,
                 fmt="plain")
    unl = load_model(str(ck))
    rec = recovery(tiny_llama, unl, probes, (1.0, 4.0), modes=("embed",), prompt_styles=(), fmt="plain",
                   criteria=("multiple_choice",), eligible_only=False, n_draws=1)
    tps = tokenize_probes(tiny_llama, probes, "plain")
    b, u = choice_table(tiny_llama, tps), choice_table(unl, tps)
    e = rec.eligibility
    assert list(e.criterion.unique()) == ["multiple_choice"]
    assert list(e.base_correct) == list(b.correct) and list(e.unlearned_correct) == list(u.correct)
    assert list(e.margin_unlearned) == pytest.approx(list(u.margin), abs=1e-6)
    n_elig = int((b.correct & ~u.correct).sum())
    assert b.correct.all() and n_elig >= 1  # the unlearning moved at least one argmax
    best = rec.rates[(rec.rates.scope == "best") & (rec.rates.condition == "keytokens")]
    assert set(best.n) == {n_elig}
    with pytest.raises(UnpactError, match="meta"):
        recovery(tiny_llama, unl, [Probe("q", "who wrote hamlet ?", "shakespeare")], criteria=("multiple_choice",))


def test_the_study_knows_a_choice_probe_by_its_argmax(tiny_llama, tiny_probes):
    """The study's known-fact filter: fact top-1 for plain probes, the choice argmax for probes with choices."""
    from dataclasses import replace

    from unpact_mech.evals.criteria import choice_table
    from unpact_mech.evals.loaders import filter_known
    from unpact_mech.study.prepare import known_probes

    mc = _mc_probes()
    pred = list(choice_table(tiny_llama, tokenize_probes(tiny_llama, mc)).pred)
    # gold := the base's choice on m0 and m2, another choice on m1 and m3
    mc = [replace(p, meta={**p.meta, "answer_index": k if i % 2 == 0 else (k + 1) % 4})
          for i, (p, k) in enumerate(zip(mc, pred))]
    got = known_probes(tiny_llama, [*mc, *tiny_probes])
    plain_known = [p.id for p in filter_known(tiny_llama, list(tiny_probes))[0]]
    assert [p.id for p in got] == ["m0", "m2", *plain_known]


def test_cli_emphasize_under_the_choice_criterion(tiny_llama_dir, tiny_llama_other_dir, tmp_path, capsys):
    """`unpact emphasize --criteria multiple_choice` on probes with choices; refused on probes without."""
    from unpact_mech.cli import main
    from unpact_mech.probes import save_probes

    f = save_probes(_mc_probes(), tmp_path / "mc.jsonl")
    out = tmp_path / "emph"
    argv = ["emphasize", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_other_dir), "--format", "plain",
            "--criteria", "multiple_choice", "--factors", "4", "--draws", "1", "--out", str(out)]
    assert main([*argv, "--probes", str(f)]) == 0
    import pandas as pd

    e = pd.read_csv(out / "eligibility.csv")
    assert set(e.criterion) == {"multiple_choice"} and len(e) == 2  # the forget probes m0, m1
    assert main([*argv[:-1], str(tmp_path / "e2"), "--probes", "facts:forget"]) == 2
    assert "judges multiple-choice probes only" in capsys.readouterr().err


def test_each_wmdp_subset_opens_with_lm_eval_s_description():
    """The whole lettered prompt of each subset, as lm-eval's wmdp_bio/chem/cyber.yaml build it (description, then
    _default_template_yaml's doc_to_text), written out here."""
    from unpact_mech.evals.tasks import wmdp_description

    q, choices = "What is X? ", ["a", "b", "c", "d"]
    body = "What is X?\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    want = {"wmdp-bio": "The following are multiple choice questions (with answers) about biology.\n\n" + body,
            "wmdp-chem": "The following are multiple choice questions (with answers) about chemistry.\n\n" + body,
            "wmdp-cyber": "The following are multiple choice questions (with answers) about cybersecurity.\n\n" + body}
    for subset, prompt in want.items():
        desc, convention = wmdp_description(Probe("x", q, "a", domain=subset))
        assert lettered_prompt(q, choices, desc) == prompt and convention == f"lm-eval wmdp_{subset[5:]}.yaml description"
    assert wmdp_description(Probe("x", q, "a", domain="history")) == ("", "no description (subset unknown)")
    assert wmdp_description(Probe("x", q, "a", domain="wmdp-bio"), "") == ("", "given description")
