"""open-unlearning's metrics against their formulas written out here (loops over the reference files' steps),
scipy where it has the statistic, and a naive per-probe forward for the subject-level numbers."""

import math
import zlib

import numpy as np
import pytest
import torch
from scipy import stats as sps

from unpact_mech.core.errors import UnpactError
from unpact_mech.evals import ou_metrics as om
from unpact_mech.probes import Probe, tokenize_probes
from unpact_mech.scoring import token_stats

RNG = np.random.default_rng(0)


def test_registry_names_each_reference_file():
    assert {"probability", "truth_ratio", "forget_quality", "model_utility", "extraction_strength", "min_k",
            "min_k_plus_plus", "mia_auc", "privleak", "rouge_l_recall"} <= set(om.OU_METRICS)
    assert all(m.reference.startswith("locuslab/open-unlearning src/evals/metrics/") and ".py" in m.reference
               for m in om.OU_METRICS.values())


def test_probability_and_options():
    nll = RNG.uniform(0.1, 3, 7)
    assert np.allclose(om.probability(nll), [math.exp(-x) for x in nll])
    pc, pw = RNG.uniform(0, 1, 5), RNG.uniform(0, 1, (5, 3))
    want = [pc[i] / (pc[i] + sum(pw[i]) + 1e-10) for i in range(5)]
    assert np.allclose(om.probability_w_options(pc, pw), want)


@pytest.mark.parametrize("agg", ["closer_to_1_better", "true_better", "prob_mean"])
def test_truth_ratio_written_out(agg):
    c, w = RNG.uniform(0.2, 3, 6), RNG.uniform(0.2, 3, (6, 5))
    trs = []
    for i in range(6):
        p_c = math.exp(-c[i])
        p_w = math.exp(-sum(w[i]) / 5)  # aggregate_to_1D: mean of the perturbed answers' avg losses
        trs.append(p_c / (p_c + p_w + 1e-10) if agg == "prob_mean" else p_w / (p_c + 1e-10))
    if agg == "closer_to_1_better":
        want = sum(min(t, 1 / (t + 1e-10)) for t in trs) / 6
    elif agg == "true_better":
        want = sum(max(0.0, 1 - t) for t in trs) / 6
    else:
        want = sum(trs) / 6
    tr, value = om.truth_ratio(c, w, agg)
    assert np.allclose(tr, trs) and value == pytest.approx(want)
    with pytest.raises(UnpactError, match="unknown aggregator"):
        om.truth_ratio(c, w, "mean")


def test_forget_quality_is_the_ks_p_value():
    a, b = RNG.lognormal(0, 1, 40), RNG.lognormal(0.8, 1, 30)
    # the KS statistic written out: the largest gap between the two empirical CDFs
    grid = np.concatenate([a, b])
    d = max(abs((a <= x).mean() - (b <= x).mean()) for x in grid)
    res = sps.ks_2samp(a, b)
    assert res.statistic == pytest.approx(d)
    assert om.forget_quality(a, b) == pytest.approx(res.pvalue)
    # utils.py's get_forget_quality tests 1/TR; KS is invariant under the monotone map
    assert om.forget_quality(a, b) == pytest.approx(sps.ks_2samp(1 / a, 1 / b).pvalue)
    assert om.forget_quality(a, a) == pytest.approx(1.0)
    assert om.forget_quality(a, a + 100) < 1e-6


def test_model_utility_harmonic_mean():
    v = [0.5, 0.8, 0.2, 0.9]
    assert om.model_utility(v) == pytest.approx(len(v) / sum(1 / x for x in v))
    with pytest.raises(UnpactError, match="non-negative"):
        om.model_utility([0.5, -0.1])


def _es_reference(top1):
    n = len(top1)
    for k in range(n):  # memorization.py's loop, with its break
        if all(top1[k:]):
            break
    return 1 - k / n


def test_exact_memorization_and_extraction_strength():
    for _ in range(50):
        t = RNG.random(int(RNG.integers(1, 12))) < 0.6
        assert om.extraction_strength(t) == pytest.approx(_es_reference(list(t)))
        assert om.exact_memorization(t) == pytest.approx(sum(t) / len(t))
    assert om.extraction_strength([True] * 4) == 1.0
    assert om.extraction_strength([False] * 4) == pytest.approx(0.25)  # the reference's k = n - 1
    assert om.extraction_strength([False, True, True, True]) == pytest.approx(0.75)


def test_min_k_and_min_k_plus_plus_written_out():
    lp = -RNG.exponential(2, 11)
    mu, var = -RNG.exponential(2, 11), RNG.uniform(0, 3, 11)
    var[3] = 0.0  # clamped to 1e-6
    for k in (0.2, 0.4, 1.0):
        num = max(1, int(11 * k))
        assert om.min_k(lp, k) == pytest.approx(-sum(sorted(lp)[:num]) / num)
        z = [(lp[i] - mu[i]) / math.sqrt(max(var[i], 1e-6)) for i in range(11)]
        assert om.min_k_plus_plus(lp, mu, var, k) == pytest.approx(-sum(sorted(z)[:num]) / num)
    assert om.min_k([-1.0], 0.4) == 1.0  # at least one token
    with pytest.raises(UnpactError, match="k must be"):
        om.min_k(lp, 0)


def test_mia_auc_pairwise_and_privleak():
    f, h = RNG.normal(0, 1, 17).round(1), RNG.normal(0.5, 1, 13).round(1)  # rounded: ties occur
    pairs = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x in f for y in h)
    auc = om.mia_auc(f, h)
    assert auc == pytest.approx(pairs / (17 * 13))
    assert auc == pytest.approx(sps.mannwhitneyu(h, f).statistic / (17 * 13))
    assert om.privleak(auc) == pytest.approx(((1 - auc) - 0.5) / (0.5 + 1e-10) * 100)
    assert om.privleak(0.7, 0.7) == pytest.approx(0.0)


def test_token_stats_against_a_naive_forward(tiny_llama, tiny_probes):
    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    for tp, st in zip(tps, token_stats(tiny_llama, tps, batch_tokens=20)):
        with torch.no_grad():
            logits = tiny_llama.backend.forward(torch.tensor([tp.ids]), ())[0].double()
        for j, pos in enumerate(range(tp.prompt_len, len(tp.ids))):
            row = logits[pos - 1]
            logp = [float(x) for x in torch.log_softmax(row, -1)]
            p = [math.exp(x) for x in logp]
            mu = sum(pi * li for pi, li in zip(p, logp))
            var = sum(pi * li * li for pi, li in zip(p, logp)) - mu * mu
            assert float(st.logprobs[j]) == pytest.approx(logp[tp.ids[pos]], abs=1e-5)
            assert bool(st.top1[j]) == (int(row.argmax()) == tp.ids[pos])
            assert float(st.mu[j]) == pytest.approx(mu, abs=1e-5)
            assert float(st.var[j]) == pytest.approx(var, abs=1e-5)


def test_truth_ratio_of_a_subject(tiny_llama):
    probes = [Probe("q0", "what is the capital of france ?", "paris", meta={
                  "paraphrased_answer": "the capital is paris", "perturbed_answer": ["tokyo", "mars", "gold"]}),
              Probe("q1", "who wrote hamlet ?", "shakespeare", meta={
                  "paraphrased_answer": "shakespeare wrote it", "perturbed_answer": ["paris", "a city", "au"]})]
    tr, value = om.truth_ratio_of(tiny_llama, probes, "true_better", fmt="plain")

    def nll(prompt, answer):  # one probe at a time: open-unlearning's labels on the plain format are answer + EOS
        tp = tokenize_probes(tiny_llama, [Probe("x", prompt, answer)], "plain")[0]
        ids = list(tp.ids) + ([] if tp.ids[-1] == EOS else [EOS])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama.backend.forward(torch.tensor([ids]), ())[0].double(), -1)
        return -sum(float(logp[t - 1, ids[t]]) for t in range(tp.prompt_len, len(ids))) / (len(ids) - tp.prompt_len)

    want = []
    for p in probes:
        pc = math.exp(-nll(p.prompt, p.meta["paraphrased_answer"]))
        pw = math.exp(-sum(nll(p.prompt, a) for a in p.meta["perturbed_answer"]) / 3)
        want.append(pw / (pc + 1e-10))
    assert np.allclose(tr, want, rtol=1e-6)
    assert value == pytest.approx(sum(max(0, 1 - t) for t in want) / 2)
    with pytest.raises(UnpactError, match="paraphrased_answer"):
        om.truth_ratio_of(tiny_llama, [Probe("q", "what ?", "a")], fmt="plain")


def test_mia_scores_of_a_subject(tiny_llama, tiny_probes):
    """Raw text labels the continuation (no EOS), and the token-level attacks drop its last token, as
    ``tokenwise_logprobs`` does."""
    st = token_stats(tiny_llama, tokenize_probes(tiny_llama, tiny_probes, "raw"))
    got = om.mia_scores_of(tiny_llama, tiny_probes, "min_k", k=0.5)
    # a probe left with no token scores 0 (min_k.py: ``if lp.size == 0: return 0``)
    assert np.allclose(got, [om.min_k(s.logprobs.numpy()[:-1], 0.5) if len(s.logprobs) > 1 else 0.0 for s in st])
    with pytest.raises(UnpactError, match="unknown MIA attack"):
        om.mia_scores_of(tiny_llama, tiny_probes, "zlb")
    with pytest.raises(UnpactError, match="give reference=SUBJECT"):
        om.mia_scores_of(tiny_llama, tiny_probes, "reference")


EOS = 2  # the tiny models' eos_token_id


def _labelled_nll(hf, ids, labels):
    """open-unlearning's ``evaluate_probability`` written out: CrossEntropy(logits[:-1], labels[1:]) summed over the
    labelled tokens, divided by their count."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, :-1].double()
    lab = torch.tensor(labels[1:])
    loss = torch.nn.functional.cross_entropy(logits, lab, ignore_index=-100, reduction="sum")
    return float(loss) / sum(x != -100 for x in labels)


def test_plain_qa_scores_answer_then_eos_as_open_unlearning(tiny_llama, tiny_probes):
    """The probability metrics average over open-unlearning's labels: ``[-100] * len(prompt_ids) + chat_ids[len(prompt_ids):]``
    with EOS appended (``preprocess_chat_instance``), here built from the prompt and answer ids by hand."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama.source).eval()
    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    want = []
    for tp in tps:
        ids = list(tp.ids) + [EOS]
        want.append(_labelled_nll(hf, ids, [-100] * tp.prompt_len + ids[tp.prompt_len:]))
    assert np.allclose(om.avg_nll_of(tiny_llama, tiny_probes, "plain"), want, rtol=1e-5)
    # the LOSS attack is that number; zlib divides it by the compressed length of the labels' text
    assert np.allclose(om.mia_scores_of(tiny_llama, tiny_probes, "loss", fmt="plain"), want, rtol=1e-5)
    texts = [tiny_llama.tokenizer.decode(list(tp.answer_ids) + [EOS], skip_special_tokens=True) for tp in tps]
    assert np.allclose(om.mia_scores_of(tiny_llama, tiny_probes, "zlib", fmt="plain"),
                       [w / len(zlib.compress(t.encode())) for w, t in zip(want, texts)], rtol=1e-5)


def test_reference_and_gradnorm_attacks_written_out(tiny_llama, tiny_llama_other_dir, tiny_probes):
    from transformers import AutoModelForCausalLM

    from unpact_mech.model.loading import load_model

    other = load_model(str(tiny_llama_other_dir))
    got = om.mia_scores_of(tiny_llama, tiny_probes, "reference", reference=other)
    want = om.avg_nll_of(tiny_llama, tiny_probes, "raw") - om.avg_nll_of(other, tiny_probes, "raw")
    assert np.allclose(got, want) and np.abs(got).max() > 0
    # gradnorm: mean over parameter tensors of ||grad of -mean log p(labelled tokens but the last)||_2
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama.source).eval()
    want = []
    for tp in tokenize_probes(tiny_llama, tiny_probes, "raw"):
        ids = list(tp.ids)
        targets = list(range(tp.prompt_len, len(ids) - 1))  # the last labelled token left out
        if not targets:
            want.append(np.nan)
            continue
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0], -1)
        loss = -sum(logp[t - 1, ids[t]] for t in targets) / len(targets)
        grads = torch.autograd.grad(loss, [q for q in hf.parameters()], allow_unused=True)
        want.append(float(np.mean([float(torch.linalg.vector_norm(g)) for g in grads if g is not None])))
    assert np.allclose(om.mia_scores_of(tiny_llama, tiny_probes, "gradnorm"), want, rtol=1e-4, equal_nan=True)


def test_token_level_metrics_drop_the_last_labelled_token(tiny_llama):
    """Exact memorisation and extraction strength read the labelled tokens but the last; a one-token raw answer keeps
    none: extraction strength 0 and exact memorisation left out (NaN), as open-unlearning scores them."""
    probes = [Probe("a", "the capital of france is", " paris is the capital"), Probe("b", "the red planet is", " mars")]
    tps = tokenize_probes(tiny_llama, probes, "raw")
    st = token_stats(tiny_llama, tps)
    es, em = om.extraction_strength_of(tiny_llama, tps), om.exact_memorization_of(tiny_llama, tps)
    top1 = st[0].top1.numpy()[:-1]
    n = len(top1)
    k = next((k for k in range(n) if top1[k:].all()), n - 1)
    assert es[0] == pytest.approx(1 - k / n) and em[0] == pytest.approx(top1.mean())
    assert len(st[1].top1) == 1 and es[1] == 0.0 and np.isnan(em[1])


def test_rouge1_recall_and_rel_diff_written_out():
    # reference unigrams: the x2, cat, sat, on, mat; the prediction has the, cat, on, mat once each -> 4 / 6
    assert om.rouge1(["the cat on a mat"], ["the cat sat on the mat"])[0] == pytest.approx(4 / 6)
    assert om.rel_diff(0.3, 0.4) == pytest.approx((0.3 - 0.4) / (0.4 + 1e-10) * 100)
    assert om.privleak(0.6, 0.7) == pytest.approx(om.rel_diff(1 - 0.6, 1 - 0.7))


def _ids(out):
    """apply_chat_template(tokenize=True) gives ids, or (newer transformers) a mapping holding them."""
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.slow  # SmolLM2
def test_chat_labels_are_open_unlearnings_on_smollm2(smol, smol_probes):
    """On a real chat template, the probability metrics score exactly open-unlearning's labels, built here as
    ``preprocess_chat_instance`` builds them: ``apply_chat_template`` of the conversation with and without the
    answer turn (``add_generation_prompt=True`` for the prompt), EOS appended unless last, labels from the prompt's
    length on (the answer, ``<|im_end|>``, ``\\n``, EOS)."""
    from transformers import AutoModelForCausalLM

    tok = smol.tokenizer
    probes = smol_probes[:3]
    hf = AutoModelForCausalLM.from_pretrained(smol.source, torch_dtype=torch.float32).eval()
    want = []
    for p in probes:
        chat = [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.answer}]
        chat_ids, prompt_ids = (_ids(tok.apply_chat_template(c, tokenize=True, add_generation_prompt=g))
                                for c, g in ((chat, False), (chat[:1], True)))
        if chat_ids[-1] != tok.eos_token_id:
            chat_ids.append(tok.eos_token_id)
        labels = [-100] * len(prompt_ids) + chat_ids[len(prompt_ids):]
        assert len(chat_ids) - len(prompt_ids) > len(tok(p.answer, add_special_tokens=False)["input_ids"])
        want.append(_labelled_nll(hf, chat_ids, labels))
    assert np.allclose(om.avg_nll_of(smol, probes, "chat"), want, rtol=1e-4)
    # the plain format as open-unlearning's tag configs build it (configs/model/Llama-2-7b-hf.yaml): the joint text
    # "Question: q\nAnswer: a" against "Question: q\nAnswer: ", whose trailing space is its own token, so the answer's
    # first token (which absorbs that space) is not labelled
    want = []
    for p in probes:
        wrapped = f"Question: {p.prompt}\nAnswer: "
        chat_ids = tok(wrapped + p.answer)["input_ids"] + [tok.eos_token_id]
        n = len(tok(wrapped)["input_ids"])
        assert tok.convert_ids_to_tokens(tok(wrapped)["input_ids"])[-1] == "Ġ"
        want.append(_labelled_nll(hf, chat_ids, [-100] * n + chat_ids[n:]))
    assert np.allclose(om.avg_nll_of(smol, probes, "plain"), want, rtol=1e-4)
