"""open-unlearning's evaluation metrics, as its files define them (locuslab/open-unlearning, ``src/evals/metrics``).

Each metric is registered with the file its formula follows. The formulas work on per-example numbers; the
``*_of`` functions compute those numbers for a subject by teacher forcing (:func:`unpact_mech.scoring.token_stats`)
over the tokens open-unlearning labels (:mod:`unpact_mech.probes.labels`): for QA the answer, the template's
closing tokens and EOS; for raw text the continuation. Sequence-level numbers (probability, truth ratio, the
loss-based attacks) average over all of them; token-level ones (exact memorisation, extraction strength, Min-K%,
Min-K%++) drop the last labelled token, as ``tokenwise_logprobs`` does. An example left with no token is left out
of the mean and counted (``n_empty``), as open-unlearning leaves out its None scores.

* probability: ``p = exp(-mean NLL of the answer tokens)`` (``utils.py: evaluate_probability``);
  with options ``p_c / (p_c + sum_k p_w,k + 1e-10)`` (``memorization.py: probability_w_options``).
* truth ratio: ``TR = p_wrong / (p_correct + 1e-10)`` with ``p = exp(-mean over answers of their mean NLL)``,
  correct = paraphrased answer, wrong = the perturbed answers; aggregated ``closer_to_1_better``
  (mean min(TR, 1/TR)), ``true_better`` (mean max(0, 1 - TR)) or ``prob_mean`` (mean p_c/(p_c+p_w))
  (``memorization.py: truth_ratio``).
* forget quality: the two-sample KS p-value between the unlearned and the retain model's per-example truth
  ratios on the forget set (``privacy.py: ks_test``).
* model utility: the harmonic mean of the utility numbers (``utility.py: hm_aggregate``).
* exact memorisation: the share of answer tokens that are the top-1 (``memorization.py: exact_memorization``).
* extraction strength: ``1 - k/n`` for the smallest k whose suffix of greedy tokens all equal the gold ones
  (``memorization.py: extraction_strength``; as there, a sequence with no matching suffix gives k = n - 1).
* Min-K%: ``-mean`` of the lowest ``max(1, int(n k))`` token log-probs (``mia/min_k.py``); Min-K%++: the same
  over ``(log p - mu) / sqrt(max(var, 1e-6))`` with mu, var the log-prob moments of the model's own
  distribution at that position (``mia/min_k_plus_plus.py``).
* MIA AUC: ROC AUC with forget labelled 0 and holdout 1 (``mia/utils.py: mia_auc``), i.e.
  ``P(s_holdout > s_forget) + P(tie) / 2``; privleak ``((1 - AUC) - (1 - ref)) / (1 - ref + 1e-10) * 100``
  (``privacy.py: privleak``, ref 0.5 by default as in ``configs/eval/muse_metrics/privleak.yaml``).
* ROUGE-L recall and ROUGE-1 recall of a greedy answer (``utils.py: eval_text_similarity``):
  :func:`unpact_mech.evals.metrics.rouge_l_recall`, :func:`~unpact_mech.evals.metrics.rouge1_recall`.
* rel_diff: ``(score - ref) / (ref + 1e-10) * 100`` (``privacy.py: rel_diff``); privleak is the same on
  ``1 - AUC`` with the retain model's AUC as ``ref_auc`` where it was measured (MUSE), 0.5 otherwise.
* MIA attacks (:func:`mia_scores_of`): Min-K%, Min-K%++, LOSS, zlib, reference, gradient norm (``mia/``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.registry import Registry
from unpact_mech.evals.metrics import rouge1_recall, rouge_l_recall
from unpact_mech.hooks import Emphasis
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, TokenizedProbe, tokenize_probes
from unpact_mech.probes.labels import labelled
from unpact_mech.scoring import TokenStats, score_probes, token_stats

OU = "locuslab/open-unlearning src/evals/metrics/"
EPS = 1e-10  # open-unlearning's guard in every ratio


@dataclass(frozen=True)
class OUMetric:
    """A registered metric: its formula and the open-unlearning file it follows."""

    name: str
    fn: Callable[..., Any]
    reference: str


OU_METRICS: Registry[OUMetric] = Registry("metric")


def register_metric(name: str, reference: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return OU_METRICS.decorator(name, lambda fn: OUMetric(name, fn, OU + reference))


def _array(x: Any, what: str, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim not in ndim or a.size == 0:
        raise UnpactError(f"{what}: expected a non-empty array of {' or '.join(f'{d}-D' for d in ndim)}, got shape {a.shape}")
    return a


@register_metric("probability", "utils.py: evaluate_probability")
def probability(avg_nll: Any) -> np.ndarray:
    """Per example: exp(-mean answer-token NLL)."""
    return np.exp(-_array(avg_nll, "probability"))


@register_metric("probability_w_options", "memorization.py: probability_w_options")
def probability_w_options(p_correct: Any, p_wrong: Any) -> np.ndarray:
    """Per example: p_c / (p_c + sum_k p_w,k + 1e-10)."""
    c, w = _array(p_correct, "p_correct"), _array(p_wrong, "p_wrong", (1, 2))
    return c / (c + w.reshape(len(c), -1).sum(1) + EPS)


TR_AGGREGATORS: dict[str, Callable[[np.ndarray], float]] = {
    "closer_to_1_better": lambda tr: float(np.mean(np.minimum(tr, 1 / (tr + EPS)))),
    "true_better": lambda tr: float(np.mean(np.maximum(0, 1 - tr))),
}


def check_aggregator(aggregator: str) -> None:
    if aggregator not in (*TR_AGGREGATORS, "prob_mean"):
        raise UnpactError(f"truth_ratio: unknown aggregator {aggregator!r}; use one of "
                          f"{', '.join([*TR_AGGREGATORS, 'prob_mean'])}")


@register_metric("truth_ratio", "memorization.py: truth_ratio")
def truth_ratio(avg_nll_correct: Any, avg_nll_wrong: Any, aggregator: str = "closer_to_1_better") -> tuple[np.ndarray, float]:
    """Per-example truth ratios and their aggregate. Each side's NLL is first averaged over its answers
    (``aggregate_to_1D``); p = exp(-NLL); TR = p_w / (p_c + 1e-10), or p_c / (p_c + p_w + 1e-10) for ``prob_mean``."""
    c = _array(avg_nll_correct, "avg_nll_correct", (1, 2))
    w = _array(avg_nll_wrong, "avg_nll_wrong", (1, 2))
    if len(c) != len(w):
        raise UnpactError(f"truth_ratio: {len(c)} correct and {len(w)} wrong examples")
    pc = np.exp(-c.reshape(len(c), -1).mean(1))
    pw = np.exp(-w.reshape(len(w), -1).mean(1))
    check_aggregator(aggregator)
    if aggregator == "prob_mean":
        tr = pc / (pc + pw + EPS)
        return tr, float(np.mean(tr))
    tr = pw / (pc + EPS)
    return tr, TR_AGGREGATORS[aggregator](tr)


@register_metric("forget_quality", "privacy.py: ks_test")
def forget_quality(tr_model: Any, tr_retain_model: Any) -> float:
    """Two-sample KS p-value between the model's and the retain model's per-example forget-set truth ratios."""
    return float(sps.ks_2samp(_array(tr_model, "tr_model"), _array(tr_retain_model, "tr_retain_model")).pvalue)


@register_metric("model_utility", "utility.py: hm_aggregate")
def model_utility(values: Any) -> float:
    """Harmonic mean of the utility numbers (retain/real-authors/world-facts probability, ROUGE, truth ratio)."""
    v = _array(values, "model_utility")
    if (v < 0).any():
        raise UnpactError(f"model_utility: the harmonic mean needs non-negative values, got {v.tolist()}")
    return float(sps.hmean(v))


def _top1(top1: Any, what: str) -> np.ndarray:
    t = np.asarray(top1, dtype=bool)
    if t.ndim != 1 or t.size == 0:
        raise UnpactError(f"{what}: expected a non-empty 1-D array of per-token top-1 flags, got shape {t.shape}")
    return t


@register_metric("exact_memorization", "memorization.py: exact_memorization")
def exact_memorization(top1: Any) -> float:
    """Share of answer tokens whose greedy (top-1) prediction is the gold token."""
    return float(_top1(top1, "exact_memorization").mean())


@register_metric("extraction_strength", "memorization.py: extraction_strength")
def extraction_strength(top1: Any) -> float:
    """1 - k/n, k the first index from which every greedy token matches (n - 1 when none does)."""
    t = _top1(top1, "extraction_strength")
    n = len(t)
    k = next((k for k in range(n) if t[k:].all()), n - 1)
    return 1 - k / n


def _lowest_k_mean(scores: np.ndarray, k: float) -> float:
    if not 0 < k <= 1:
        raise UnpactError(f"min-k: k must be in (0, 1], got {k}")
    num = max(1, int(len(scores) * k))
    return float(-np.mean(np.sort(scores)[:num]))


@register_metric("min_k", "mia/min_k.py: MinKProbAttack")
def min_k(logprobs: Any, k: float = 0.4) -> float:
    """-mean of the lowest max(1, int(n k)) token log-probs (higher = less likely a member)."""
    return _lowest_k_mean(_array(logprobs, "min_k"), k)


@register_metric("min_k_plus_plus", "mia/min_k_plus_plus.py: MinKPlusPlusAttack")
def min_k_plus_plus(logprobs: Any, mu: Any, var: Any, k: float = 0.4) -> float:
    """Min-K% over the standardised log-probs (log p - mu) / sqrt(max(var, 1e-6))."""
    lp, m, v = _array(logprobs, "logprobs"), _array(mu, "mu"), _array(var, "var")
    if not lp.shape == m.shape == v.shape:
        raise UnpactError(f"min_k_plus_plus: shapes differ: {lp.shape}, {m.shape}, {v.shape}")
    return _lowest_k_mean((lp - m) / np.sqrt(np.maximum(v, 1e-6)), k)


@register_metric("mia_auc", "mia/utils.py: mia_auc")
def mia_auc(forget_scores: Any, holdout_scores: Any) -> float:
    """ROC AUC of the attack scores, forget labelled 0 and holdout 1: the Mann-Whitney U of holdout over forget
    divided by n_forget * n_holdout (ties count 1/2)."""
    f, h = _array(forget_scores, "forget_scores"), _array(holdout_scores, "holdout_scores")
    ranks = sps.rankdata(np.concatenate([f, h]))
    u = ranks[len(f):].sum() - len(h) * (len(h) + 1) / 2
    return float(u / (len(f) * len(h)))


@register_metric("privleak", "privacy.py: privleak")
def privleak(auc: float, ref_auc: float = 0.5) -> float:
    """((1 - AUC) - (1 - ref)) / (1 - ref + 1e-10) * 100: the MIA AUC relative to the retain model's (MUSE)."""
    s, r = 1 - float(auc), 1 - float(ref_auc)
    return (s - r) / (r + EPS) * 100


@register_metric("rel_diff", "privacy.py: rel_diff")
def rel_diff(score: float, ref: float) -> float:
    """(score - ref) / (ref + 1e-10) * 100: a statistic relative to the retain model's."""
    return (float(score) - float(ref)) / (float(ref) + EPS) * 100


@register_metric("rouge1_recall", "utils.py: eval_text_similarity")
def rouge1(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per example: ROUGE-1 recall of the generation against the reference (stemmed, ``rouge-score``)."""
    if len(predictions) != len(references):
        raise UnpactError(f"rouge1: {len(predictions)} predictions and {len(references)} references")
    return np.array([rouge1_recall(p, r) for p, r in zip(predictions, references)])


@register_metric("rouge_l_recall", "utils.py: eval_text_similarity")
def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per example: ROUGE-L recall of the generation against the reference (stemmed, ``rouge-score``)."""
    if len(predictions) != len(references):
        raise UnpactError(f"rouge_l: {len(predictions)} predictions and {len(references)} references")
    return np.array([rouge_l_recall(p, r) for p, r in zip(predictions, references)])


# --- per-example numbers of a subject ---------------------------------------------------------------------

def labelled_probes(subject: Subject, probes: Sequence[Probe], fmt: str = "auto") -> list[TokenizedProbe]:
    """The probes tokenized with open-unlearning's labelled tokens as the answer span (:func:`labelled`)."""
    return [labelled(subject.tokenizer, tp) for tp in tokenize_probes(subject, list(probes), fmt)]


def _labelled_stats(subject: Subject, tprobes: Sequence[TokenizedProbe]) -> list[TokenStats]:
    """:class:`~unpact_mech.scoring.TokenStats` of already tokenized probes' labelled tokens (:func:`labelled`)."""
    return token_stats(subject, [labelled(subject.tokenizer, tp) for tp in tprobes])


def stats_of(subject: Subject, probes: Sequence[Probe], fmt: str = "auto") -> list[TokenStats]:
    """:class:`~unpact_mech.scoring.TokenStats` of each probe's labelled tokens under ``subject``."""
    return _labelled_stats(subject, tokenize_probes(subject, list(probes), fmt))


def avg_nll_of(subject: Subject, probes: Sequence[Probe], fmt: str = "auto", emphasis: Emphasis | None = None) -> np.ndarray:
    """Mean NLL over each probe's labelled tokens (open-unlearning's ``avg_loss``: ``utils.py:
    evaluate_probability``); with ``emphasis`` (row r on probe r's prompt positions) as the emphasised model
    scores it."""
    if emphasis is None:
        return np.array([-float(s.logprobs.mean()) for s in stats_of(subject, probes, fmt)])
    tps = labelled_probes(subject, probes, fmt)
    return np.array([-float(s.logprobs.mean()) for s in score_probes(subject, tps, emphasis=emphasis)])


def tokenwise(values: Any) -> Any:
    """A per-labelled-token array without its last entry: what open-unlearning's token-level metrics read
    (``utils.py: tokenwise_logprobs``: "-1 to ignore eos prediction")."""
    return values[:-1]


def _answers(p: Probe, key: str) -> list[str]:
    val = p.meta.get(key)
    vals = [val] if isinstance(val, str) else list(val or [])
    if not vals or not all(isinstance(v, str) and v.strip() for v in vals):
        raise UnpactError(f"probe '{p.id}' has no meta['{key}'] answers (TOFU's perturbed splits have "
                          f"'paraphrased_answer' and 'perturbed_answer')")
    return vals


def answer_nll_of(subject: Subject, probes: Sequence[Probe], correct_key: str | None = "paraphrased_answer",
                  wrong_key: str = "perturbed_answer", fmt: str = "auto",
                  emphasis: Emphasis | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean answer-token NLL of each probe's correct answers, averaged over them (``[n]``; ``correct_key=None``: the
    probe's own answer), and of each of its wrong answers (``[n, k]``), all variants scored in one batch (with
    ``emphasis``, probe r's row on each of its variants: they share its prompt)."""
    correct = [[p.answer] if correct_key is None else _answers(p, correct_key) for p in probes]
    wrong = [_answers(p, wrong_key) for p in probes]
    if len({len(w) for w in wrong}) > 1:
        raise UnpactError(f"truth_ratio: probes have different numbers of '{wrong_key}' answers")
    variants = [replace(p, answer=a, fact=None) for p, c, w in zip(probes, correct, wrong) for a in (*c, *w)]
    owner = [r for r, (c, w) in enumerate(zip(correct, wrong)) for _ in (*c, *w)]
    nll = avg_nll_of(subject, variants, fmt, None if emphasis is None else emphasis.rows(owner))
    out_c, out_w, i = [], [], 0
    for c, w in zip(correct, wrong):
        out_c.append(nll[i:i + len(c)].mean())
        out_w.append(nll[i + len(c):i + len(c) + len(w)])
        i += len(c) + len(w)
    return np.array(out_c), np.array(out_w)


def truth_ratio_of(subject: Subject, probes: Sequence[Probe], aggregator: str = "closer_to_1_better",
                   correct_key: str | None = "paraphrased_answer", wrong_key: str = "perturbed_answer",
                   fmt: str = "auto") -> tuple[np.ndarray, float]:
    """:func:`truth_ratio` of ``subject`` on TOFU-style probes (correct and wrong answers in ``meta``;
    ``correct_key=None``: the probe's own answer is the correct one, as for TOFU's real authors and world facts)."""
    check_aggregator(aggregator)  # before any model work
    return truth_ratio(*answer_nll_of(subject, probes, correct_key, wrong_key, fmt), aggregator)


MIA_ATTACKS = ("min_k", "min_k_plus_plus", "loss", "zlib", "reference", "gradnorm")


def mia_scores_of(subject: Subject, probes: Sequence[Probe], attack: str = "min_k_plus_plus", k: float = 0.4,
                  fmt: str = "raw", reference: Subject | None = None, p: float = 2) -> np.ndarray:
    """Per-probe membership scores (higher = less likely seen in training; ``mia_auc`` labels forget 0 and holdout
    1); ``fmt='raw'`` scores the answer as a continuation of the prompt text as it is, as MUSE's MIA sets are
    scored. The attacks of ``src/evals/metrics/mia/``:

    * ``min_k`` / ``min_k_plus_plus``: :func:`min_k` / :func:`min_k_plus_plus` of the labelled tokens but the last
      (``min_k.py``, ``min_k_plus_plus.py``); 0 for a probe left with none, as there;
    * ``loss``: the mean NLL of the labelled tokens (``loss.py``);
    * ``zlib``: that NLL over the zlib-compressed length in bytes of the labelled tokens' text, decoded without
      special tokens (``zlib.py``);
    * ``reference``: that NLL minus the ``reference`` model's (``reference.py``);
    * ``gradnorm``: the mean over parameter tensors of the p-norm of the gradient of the mean log-prob of the
      labelled tokens but the last (``gradnorm.py``; here in eval mode, which differs from its train mode only
      for a model with dropout)."""
    if attack not in MIA_ATTACKS:
        raise UnpactError(f"unknown MIA attack {attack!r}; use one of {', '.join(MIA_ATTACKS)}")
    if attack == "reference" and reference is None:
        raise UnpactError("the reference attack compares with a reference model: give reference=SUBJECT (MUSE: the "
                          "retain model)")
    if attack == "gradnorm" and p not in (1, 2, float("inf")):
        raise UnpactError(f"gradnorm: p must be 1, 2 or inf, got {p}")
    if attack in ("loss", "zlib", "reference"):
        nll = avg_nll_of(subject, probes, fmt)
        if attack == "reference":
            assert reference is not None
            return nll - avg_nll_of(reference, probes, fmt)
        if attack == "loss":
            return nll
        texts = [subject.tokenizer.decode(list(tp.answer_ids), skip_special_tokens=True)
                 for tp in labelled_probes(subject, probes, fmt)]
        return np.array([x / len(zlib.compress(t.encode("utf-8"))) for x, t in zip(nll, texts)])
    if attack == "gradnorm":
        return _gradnorms(subject, labelled_probes(subject, probes, fmt), p)
    st = stats_of(subject, probes, fmt)
    out = []
    for s in st:
        lp, mu, var = tokenwise(s.logprobs.numpy()), tokenwise(s.mu.numpy()), tokenwise(s.var.numpy())
        if not len(lp):  # a one-token answer keeps no token: 0, as min_k.py / min_k_plus_plus.py score it
            out.append(0.0)
        else:
            out.append(min_k(lp, k) if attack == "min_k" else min_k_plus_plus(lp, mu, var, k))
    return np.array(out)


def _gradnorms(subject: Subject, tps: Sequence[TokenizedProbe], p: float) -> np.ndarray:
    """Per probe: mean over parameter tensors of ||d(-mean log p of the labelled tokens but the last)/dW||_p, on a
    fresh copy of the weights (one probe per backward pass, as ``gradnorm.py``)."""
    model = subject.load_hf_model().to(subject.device).eval()
    out = []
    for tp in tps:
        ids = torch.tensor([tp.ids], device=subject.device)
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        targets = torch.tensor(tp.ids[1:], device=subject.device)
        lp = logp.gather(1, targets[:, None])[:, 0][tp.prompt_len - 1:-1]  # labelled tokens, the last left out
        if not len(lp):
            out.append(float("nan"))
            continue
        model.zero_grad()
        (-lp.mean()).backward()
        norms = [q.grad.detach().float().norm(p=p) for q in model.parameters() if q.grad is not None]
        out.append(float(torch.stack(norms).mean()))
    del model
    return np.array(out)


def extraction_strength_of(subject: Subject, tprobes: Sequence[TokenizedProbe]) -> np.ndarray:
    """Per-probe :func:`extraction_strength` of the labelled tokens but the last, teacher forced; a probe left
    with none scores 0, as open-unlearning scores it (``memorization.py: extraction_strength``)."""
    st = _labelled_stats(subject, tprobes)
    return np.array([extraction_strength(tokenwise(s.top1.numpy())) if len(s.top1) > 1 else 0.0 for s in st])


def exact_memorization_of(subject: Subject, tprobes: Sequence[TokenizedProbe]) -> np.ndarray:
    """Per-probe :func:`exact_memorization` of the labelled tokens but the last; NaN for a probe left with none
    (open-unlearning's None, left out of its mean)."""
    st = _labelled_stats(subject, tprobes)
    return np.array([exact_memorization(tokenwise(s.top1.numpy())) if len(s.top1) > 1 else float("nan") for s in st])
