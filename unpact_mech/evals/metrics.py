"""Correctness, recovery and destructive rates (with counts and Wilson intervals, ``unpact_mech.core.stats``), ROUGE-L recall."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from rouge_score import rouge_scorer

from unpact_mech.core.stats import Rate, check_lengths, wilson

Flags = Sequence[bool | np.bool_]  # per-probe correctness (Python or numpy booleans)


def recovery_rate(base: Flags, unlearned: Flags, emphasized: Flags) -> Rate:
    """Among forget probes the base answers and the unlearned model does not, the share restored by emphasis."""
    check_lengths(base, unlearned, emphasized)
    eligible = [e for b, u, e in zip(base, unlearned, emphasized) if b and not u]
    return wilson(sum(bool(e) for e in eligible), len(eligible))


def destructive_rate(base: Flags, unlearned: Flags) -> Rate:
    """Among retain/general probes the base answers correctly, the share the unlearned model fails."""
    check_lengths(base, unlearned)
    eligible = [u for b, u in zip(base, unlearned) if b]
    return wilson(sum(not u for u in eligible), len(eligible))


def accuracy(correct: Flags) -> Rate:
    """Share correct."""
    return wilson(sum(bool(c) for c in correct), len(correct))


GEN_THRESHOLD = 0.5  # ROUGE-L recall of the short gold answer at or above which a generated answer is correct


@functools.cache
def _scorer(stem: bool = True) -> Any:
    """open-unlearning's scorer (stemmed); MUSE's own repository scores unstemmed (``metrics/logger.py``)."""
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=stem)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of a generated answer against the reference (``rouge-score`` package, stemmed):
    LCS(prediction, reference) / len(reference), in lower-cased word tokens."""
    return float(_scorer().score(reference, prediction)["rougeL"].recall)


def rouge1_recall(prediction: str, reference: str) -> float:
    """ROUGE-1 recall (``rouge-score``, stemmed): reference unigrams also in the prediction / reference unigrams
    (open-unlearning ``utils.py: eval_text_similarity``, ``rouge1_recall``)."""
    return float(_scorer().score(reference, prediction)["rouge1"].recall)


def rouge_l_f1(prediction: str, reference: str, stem: bool = True) -> float:
    """ROUGE-L F1 (``rouge-score``, stemmed unless ``stem=False``): the harmonic mean of LCS / len(prediction) and
    LCS / len(reference), what open-unlearning's MUSE configs report (``rouge_type: rougeL_f1``)."""
    return float(_scorer(stem).score(reference, prediction)["rougeL"].fmeasure)


def gold_short(probe: Any) -> str:
    """The short gold answer a generation is judged against: the probe's fact span, else its whole answer.

    MUSE's KnowMem judges short answers; judged against our full answer sentences, a wrong answer that
    echoes the question ("The capital of France is Lyon.") would score 5/6."""
    return str(probe.fact or probe.answer)


def generated_correct(prediction: str, probe: Any, threshold: float = GEN_THRESHOLD) -> bool:
    """Correct by generation: ROUGE-L recall of :func:`gold_short` >= ``threshold``, or the fact span appears
    in the generation as whole words (case-insensitive)."""
    gold = gold_short(probe)
    if probe.fact and re.search(rf"(?<!\w){re.escape(probe.fact.lower())}(?!\w)", prediction.lower()):
        return True
    return rouge_l_recall(prediction, gold) >= threshold


def mean_row(metric: str, values: Sequence[float], reference: str, **extra: Any) -> dict[str, Any]:
    """A metric row: the mean over the examples that have a score; those without (NaN: no token left to score)
    are left out, as open-unlearning leaves out its None scores, and counted in ``n_empty``."""
    v = np.asarray(values, dtype=float)
    kept = v[~np.isnan(v)]
    return {"metric": metric, "value": float(kept.mean()) if len(kept) else float("nan"), "n": len(kept),
            "n_empty": int(len(v) - len(kept)), "reference": reference, **extra}
