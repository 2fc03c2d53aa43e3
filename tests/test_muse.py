"""MUSE's KnowMem, VerbMem and PrivLeak against their two reference codes, written out here step by step:
swj0419/muse_bench (``metrics/knowmem.py``, ``verbmem.py``, ``privleak.py``, ``eval.py``) and open-unlearning
(``src/data/qa.py``, ``pretraining.py``, ``src/evals/metrics/utils.py: eval_text_similarity``, ``mia/min_k.py``,
``privacy.py``). Generation in the references runs through transformers' ``generate``; here through the toolkit's
own greedy loop."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_jsonl as _jsonl
from rouge_score import rouge_scorer

from unpact_mech.cli import main
from unpact_mech.core.errors import UnpactError
from unpact_mech.evals import muse
from unpact_mech.evals.loaders import Passage, load_benchmark
from unpact_mech.evals.tasks import task_metrics
from unpact_mech.model.loading import load_model
from unpact_mech.probes import Probe

STOP = ["\n\n", "\nQuestion", "Question:"]


def _hf(subject):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(subject.source, torch_dtype=torch.float32).eval()


def _token_logprobs(hf, ids):
    """log p(ids[i] | ids[:i]) for i = 1..n-1, one forward pass, float64."""
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def _pair_auc(neg, pos):
    """P(pos > neg) + P(pos == neg) / 2 over all pairs: the ROC AUC with ``neg`` labelled 0 and ``pos`` 1."""
    return float(np.mean([(p > n) + 0.5 * (p == n) for n in neg for p in pos]))


PASSAGES = [("the capital of france is paris and the city is on the river", "forget"),
            ("who wrote hamlet ? it was shakespeare , a writer", "forget"),
            ("the red planet is mars and gold is au", "forget"),
            ("japan has a capital city and it is tokyo", "forget"),
            ("a river in a country was the largest", "holdout"),
            ("the symbol of gold is au and it was by mars", "holdout"),
            ("what is the largest planet ? it was a red city", "holdout")]


@pytest.fixture(scope="module")
def passages():
    return [Passage(f"p{i}", t, s) for i, (t, s) in enumerate(PASSAGES)]


def test_privleak_both_conventions_written_out(tiny_llama, tiny_llama_other_dir, passages):
    other = load_model(str(tiny_llama_other_dir))
    tok = tiny_llama.tokenizer
    ids = [tok.encode(p.text) for p in passages]
    forget = [i for i, p in enumerate(passages) if p.split == "forget"]
    holdout = [i for i, p in enumerate(passages) if p.split == "holdout"]

    def muse_scores(model):  # metrics/privleak.py: compute_ppl over every token after the first, Min-40%
        out = []
        for x in ids:
            lp = _token_logprobs(model, x)
            k_length = int(len(lp) * 0.4)
            out.append(-np.mean(np.sort(lp)[:k_length]))
        return np.array(out)

    def ou_scores(model):  # CompletionDataset, prefix "": labels from index 1; tokenwise_logprobs drops the last
        out = []
        for x in ids:
            lp = _token_logprobs(model, x)[:-1]
            out.append(0.0 if not lp else -np.mean(np.sort(lp)[:max(1, int(len(lp) * 0.4))]))
        return np.array(out)

    hf, hf_other = _hf(tiny_llama), _hf(other)
    for conv, scores in (("muse", muse_scores), ("open-unlearning", ou_scores)):
        got = muse.min_k_scores(tiny_llama, passages, 0.4, conv)
        assert np.allclose(got, scores(hf), rtol=1e-5, atol=1e-6), conv
        s, r = scores(hf), scores(hf_other)
        if conv == "muse":  # sklearn roc_curve(y, -ppl) with forget 0 and holdout 1; eval.py's privleak
            auc, ref = _pair_auc(-s[forget], -s[holdout]), _pair_auc(-r[forget], -r[holdout])
            leak = (auc - ref) / ref * 100
        else:  # mia/utils.py: forget 0, holdout 1 on the scores; privacy.py on 1 - AUC
            auc, ref = _pair_auc(s[forget], s[holdout]), _pair_auc(r[forget], r[holdout])
            leak = ((1 - auc) - (1 - ref)) / (1 - ref + 1e-10) * 100
        t = task_metrics("muse-privleak", tiny_llama, passages, retain_model=other, convention=conv).set_index("metric")
        assert t.loc["mia_min_k_auc", "value"] == pytest.approx(auc, abs=1e-12)
        assert t.loc["privleak", "value"] == pytest.approx(leak, rel=1e-9, abs=1e-9)
        assert t.loc["privleak", "ref_auc"] == pytest.approx(ref, abs=1e-12)
        assert t.loc["privleak", "n_forget"] == 4 and t.loc["privleak", "n_holdout"] == 3
        assert t.loc["privleak", "against"] == other.name and t.loc["privleak", "convention"] == conv
    # with no retain model the reference AUC is open-unlearning's ref_value 0.5, or the one given
    t = task_metrics("muse-privleak", tiny_llama, passages, ref_auc=0.4772, convention="muse").set_index("metric")
    auc = t.loc["mia_min_k_auc", "value"]
    assert t.loc["privleak", "value"] == pytest.approx((auc - 0.4772) / 0.4772 * 100)
    with pytest.raises(UnpactError, match="scores Passages, got a Probe"):
        task_metrics("muse-privleak", tiny_llama, [Probe("q", "what ?", "a")])
    with pytest.raises(UnpactError, match="ref_auc must be strictly between 0 and 1"):
        muse.privleak_metrics(tiny_llama, passages, ref_auc=0.0, convention="muse")
    with pytest.raises(UnpactError, match="1 forget and 0 holdout"):
        muse.privleak_metrics(tiny_llama, passages[:1])
    with pytest.raises(UnpactError, match="unknown MUSE convention 'unpact_v1'"):
        muse.privleak_metrics(tiny_llama, passages, convention="unpact_v1")


def test_a_passage_left_with_no_token_scores_zero_in_open_unlearning(tiny_llama):
    two = [Passage("a", "paris france", "forget")]  # one labelled token, dropped as the last: min_k.py returns 0
    assert muse.min_k_scores(tiny_llama, two, 0.4, "open-unlearning").tolist() == [0.0]
    assert math.isnan(muse.min_k_scores(tiny_llama, two, 0.4, "muse")[0])  # int(1 * 0.4) = 0 tokens: no score


def test_stop_words_and_the_prompt_text():
    assert muse.cut_at_stopwords(" Paris\n\nQuestion: next", STOP) == "Paris"
    assert muse.cut_at_stopwords("Paris\nQuestion", STOP) == "Paris"
    assert muse.cut_at_stopwords("Paris Question: x", STOP) == "Paris"
    assert muse.qa_text("q?", [("a?", "A"), ("b?", "B")]) == ("Question: a?\nAnswer: A\n\nQuestion: b?\nAnswer: B\n\n"
                                                              "Question: q?\nAnswer: ")


def test_each_convention_scores_rouge_as_its_reference(tiny_llama, monkeypatch):
    """open-unlearning's scorer stems (``use_stemmer=True``), MUSE's does not (``metrics/logger.py``)."""
    monkeypatch.setattr(muse, "generations", lambda subject, prompts, n, stop=(): ["the cats were running"] * len(prompts))
    # the tiny word-level tokenizer knows neither word: take each gold as written (the golds are tested on SmolLM2)
    real_k, real_v = muse.knowmem_inputs, muse.verbmem_inputs
    monkeypatch.setattr(muse, "knowmem_inputs", lambda *a, **k: (real_k(*a, **k)[0], "a cat runs"))
    monkeypatch.setattr(muse, "verbmem_inputs", lambda *a, **k: (real_v(*a, **k)[0], "a cat runs", real_v(*a, **k)[2]))
    qa = [Probe("q", "what is it ?", "a cat runs")]
    for conv, stem in (("muse", False), ("open-unlearning", True)):
        want = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem).score("a cat runs", "the cats were running")
        for name in ("muse-knowmem", "muse-verbmem"):
            got = task_metrics(name, tiny_llama, qa, convention=conv).set_index("metric").loc["rouge_l_f1", "value"]
            assert got == pytest.approx(want["rougeL"].fmeasure), (name, conv)
    assert want["rougeL"].fmeasure > 0 and rouge_scorer.RougeScorer(["rougeL"]).score("a cat runs", "the cats were running")[
        "rougeL"].fmeasure == 0


@pytest.mark.slow
def test_knowmem_and_verbmem_against_both_references_on_smollm2(smol):
    """The full prompt of each convention written out, and the ROUGE-L F1 each reference would print."""
    tok, hf = smol.tokenizer, _hf(smol)
    shots = [Probe("s1", "What is the capital of France?", "Paris"), Probe("s2", "Who wrote Hamlet?", "William Shakespeare")]
    qa = [Probe("q1", "What is the capital of Japan?", "Tokyo"), Probe("q2", "What is the largest planet?", "Jupiter"),
          Probe("q3", "What is the chemical symbol of gold?", "Au")]
    n = 12
    # MUSE's repository: plain text whatever the model, the gold as written, unstemmed
    prompt = muse.knowmem_inputs(tok, qa[0].prompt, qa[0].answer, [(s.prompt, s.answer) for s in shots], "muse")[0]
    assert tok.decode(prompt) == ("Question: What is the capital of France?\nAnswer: Paris\n\n"
                                  "Question: Who wrote Hamlet?\nAnswer: William Shakespeare\n\n"
                                  "Question: What is the capital of Japan?\nAnswer: ")
    # open-unlearning on a chat model: the examples as earlier turns of SmolLM2's template (its default system turn)
    prompt = muse.knowmem_inputs(tok, qa[0].prompt, qa[0].answer, [(s.prompt, s.answer) for s in shots])[0]
    assert tok.decode(prompt) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n"
        "<|im_start|>user\nWho wrote Hamlet?<|im_end|>\n<|im_start|>assistant\nWilliam Shakespeare<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n")

    def generate(ids, pad):
        out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=pad)[0, len(ids):]
        return tok.decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)

    plain, stemmed = (rouge_scorer.RougeScorer(["rougeL"], use_stemmer=s) for s in (False, True))
    icl = "".join(f"Question: {s.prompt}\nAnswer: {s.answer}\n\n" for s in shots)
    want_muse = []
    for p in qa:  # metrics/knowmem.py
        out = generate(tok(icl + f"Question: {p.prompt}\nAnswer: ", add_special_tokens=True)["input_ids"], tok.pad_token_id)
        for w in STOP:
            out = out.split(w)[0]
        want_muse.append(plain.score(p.answer, out)["rougeL"].fmeasure)
    want_ou = []
    for p in qa:  # qa.py + preprocess_chat_instance (predict_with_generate) + eval_text_similarity
        chat = [m for s in (*shots, p) for m in ({"role": "user", "content": s.prompt},
                                                 {"role": "assistant", "content": s.answer})]
        p_ids = tok.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
        p_ids = tok(p_ids, add_special_tokens=False)["input_ids"]
        c_ids = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
        c_ids += [] if c_ids[-1] == tok.eos_token_id else [tok.eos_token_id]
        gt = tok.decode(c_ids, skip_special_tokens=True).replace(tok.decode(p_ids, skip_special_tokens=True), "").strip()
        out = generate(p_ids, tok.eos_token_id)
        for w in [tok.decode([tok.eos_token_id]), *STOP]:
            if w and w in out:
                out = out.split(w)[0]
        want_ou.append(stemmed.score(gt, out.strip())["rougeL"].fmeasure)
    for conv, want in (("muse", want_muse), ("open-unlearning", want_ou)):
        t = task_metrics("muse-knowmem", smol, qa, shots=shots, max_new_tokens=n, convention=conv).iloc[0]
        assert t.value == pytest.approx(np.mean(want), abs=1e-12), conv
        assert t.n == 3 and t.n_shots == 2 and t.convention == conv
    assert max(want_muse + want_ou) > 0  # the model answers some: the comparison is not of zeros

    # VerbMem: the prefix as it is; MUSE's gold is its first max_new_tokens tokens, open-unlearning's the whole
    vm = [Probe("v1", "It was the best of times, it was the worst of times,", "it was the age of wisdom, it was the "
                "age of foolishness, it was the epoch of belief"),
          Probe("v2", "Four score and seven years ago our fathers", "brought forth on this continent a new nation")]
    n = 8
    want_muse, want_ou = [], []
    for p in vm:
        p_ids = tok(p.prompt, add_special_tokens=True)["input_ids"]
        out = generate(p_ids, tok.pad_token_id)
        gt_short = tok.decode(tok(p.answer, add_special_tokens=True)["input_ids"][:n], skip_special_tokens=True,
                              clean_up_tokenization_spaces=True)  # metrics/verbmem.py
        want_muse.append(plain.score(gt_short, out)["rougeL"].fmeasure)
        full = tok(p.prompt + " " + p.answer, add_special_tokens=True)["input_ids"][:len(p_ids) + 2048]
        gt = tok.decode(full[len(p_ids):], skip_special_tokens=True).replace(tok.decode(p_ids, skip_special_tokens=True), "")
        eos = tok.decode([tok.eos_token_id])
        want_ou.append(stemmed.score(gt.strip(), (out.split(eos)[0] if eos in out else out).strip())["rougeL"].fmeasure)
    for conv, want in (("muse", want_muse), ("open-unlearning", want_ou)):
        t = task_metrics("muse-verbmem", smol, vm, max_new_tokens=n, convention=conv).set_index("metric")
        assert t.loc["rouge_l_f1", "value"] == pytest.approx(np.mean(want), abs=1e-12), conv
    assert want_muse != want_ou  # the two golds differ in length, so the references disagree here



def test_cli_evaluate_muse(tmp_path, tiny_llama, tiny_llama_dir, tiny_llama_other_dir, passages, capsys):
    f = _jsonl(tmp_path / "forget.jsonl", [{"text": p.text} for p in passages if p.split == "forget"])
    h = _jsonl(tmp_path / "holdout.jsonl", [{"text": p.text} for p in passages if p.split == "holdout"])
    out = tmp_path / "privleak.csv"
    assert main(["evaluate", "--task", "muse-privleak", "--probes", "muse-news", "--source", f"forget={f},holdout={h}",
                 "--model", str(tiny_llama_dir), "--retain-model", str(tiny_llama_other_dir), "--out", str(out)]) == 0
    got = pd.read_csv(out).set_index("metric")
    want = muse.privleak_metrics(tiny_llama, passages, load_model(str(tiny_llama_other_dir)))
    assert got.loc["privleak", "value"] == pytest.approx(want[1]["value"])
    assert got.loc["privleak", "convention"] == "open-unlearning"
    assert "privleak" in capsys.readouterr().out
    for args, msg in ((["--source", f"forget={f}"], "one local file per split"),
                      (["--source", str(f), "--shots", "forget_qa_icl"], "--shots is used only by --task muse-knowmem"),
                      (["--source", f"forget={f},holdout={h}", "--convention", "unpact_v1"], "unknown MUSE convention")):
        assert main(["evaluate", "--task", "muse-privleak", "--probes", "muse-news", "--model", str(tiny_llama_dir),
                     *args]) == 2
        assert msg in capsys.readouterr().err
    assert main(["evaluate", "--task", "muse-privleak", "--probes", "facts", "--model", str(tiny_llama_dir)]) == 2
    assert "give --probes muse-news or muse-books" in capsys.readouterr().err
    # KnowMem with its in-context examples from a local file, as MUSE's repository scores it
    qa = _jsonl(tmp_path / "qa.jsonl", [{"question": "what is the capital of france ?", "answer": "paris"},
                                        {"question": "who wrote hamlet ?", "answer": "shakespeare"}])
    icl = _jsonl(tmp_path / "icl.jsonl", [{"question": "what is the red planet ?", "answer": "mars"},
                                          {"question": "what is the symbol of gold ?", "answer": "au"}])
    out = tmp_path / "knowmem.csv"
    assert main(["evaluate", "--task", "muse-knowmem", "--probes", "muse-news", "--subset", "knowmem", "--source",
                 str(qa), "--shots", str(icl), "--convention", "muse", "--max-new-tokens", "3", "--model",
                 str(tiny_llama_dir), "--out", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    ps, shots = (load_benchmark("muse-news", "knowmem", s, source=x) for s, x in (("forget_qa", qa), ("forget_qa_icl", icl)))
    assert row.n_shots == 2 and row.convention == "muse"
    assert row.value == pytest.approx(task_metrics("muse-knowmem", tiny_llama, ps, shots=shots, max_new_tokens=3,
                                                   convention="muse").iloc[0].value)
    # --plan: KnowMem generates 3 tokens per question after its 2 in-context examples; privleak scores each passage
    capsys.readouterr()
    assert main(["evaluate", "--task", "muse-knowmem", "--probes", "muse-news", "--subset", "knowmem", "--source",
                 str(qa), "--shots", str(icl), "--max-new-tokens", "3", "--model", str(tiny_llama_dir), "--plan"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "after 2 in-context examples" in ln)
    passes, _, generated = line.split("examples")[1].split()[:3]
    assert (passes, generated) == ("2", "6")
    assert main(["evaluate", "--task", "muse-privleak", "--probes", "muse-news", "--source", f"forget={f},holdout={h}",
                 "--model", str(tiny_llama_dir), "--plan"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "passages scored" in ln)
    assert int(line.split("(Min-k%)")[1].split()[0]) == len(passages)
