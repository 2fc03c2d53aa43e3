"""Multiple-choice scoring against a naive loop that scores each letter (or choice) on its own, with the
lm-evaluation-harness WMDP prompt written out here."""

import json

import numpy as np
import pytest

from unpact_mech.data import load_benchmark
from unpact_mech.errors import UnpactError
from unpact_mech.multiple_choice import lettered_prompt, mc_accuracy, mc_table
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
        norm = [ll / len(c) for ll, c in zip(lls, r["choices"])]
        assert row.pred_norm == int(np.argmax(norm))
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
    from unpact_mech.multiple_choice import as_multiple_choice

    facts = [Probe(f"g{i}", f"q{i} ?", f"answer {c}", fact=c, domain="geo") for i, c in enumerate("abcdef")]
    facts.append(Probe("x0", "other ?", "zz", domain="other"))
    mc = as_multiple_choice(facts[:6], 4, seed=1)
    assert mc == as_multiple_choice(facts[:6], 4, seed=1)  # seeded
    for p, q in zip(facts, mc):
        ch = q.meta["choices"]
        assert len(ch) == 4 == len(set(ch)) and ch[q.meta["answer_index"]] == p.fact and set(ch) <= set("abcdef")
    with pytest.raises(UnpactError, match="distractors"):
        as_multiple_choice(facts, 4)
