"""Correctness criteria, registered by name (``CRITERIA``; open-unlearning's ``@unlearning_metric`` in spirit).

A criterion judges each probe right or wrong, for a plain model or under an emphasis:

* ``teacher_forced``: every token of the fact span is the model's top-1 given the gold prefix
  (:func:`unpact_mech.scoring.fact_top1`); extra column ``lp`` = LP(x, y).
* ``generation``: the greedy answer (at most the gold answer's length + ``GEN_EXTRA_TOKENS`` tokens, stopping at
  end of turn) has ROUGE-L recall >= ``GEN_THRESHOLD`` of the fact span, or contains it as whole words
  (:func:`unpact_mech.evals.metrics.generated_correct`); extra column ``generated`` = the answer's text. Costly: one
  forward per generated token.
* ``multiple_choice`` (probes with ``meta['choices']``, e.g. WMDP): the cloze formulation of
  :mod:`unpact_mech.evals.multiple_choice` on the probe's own prompt, so the KeyTokens and any emphasis sit on the same
  positions: correct = argmax_c sum_t log p(c_t | x, c_<t) is the gold choice (lm-eval's ``acc``); extra column
  ``margin`` = LL(gold) - max over the other choices of LL. It applies only to probes with choices
  (:func:`criteria_for`).

Add one with ``@register_criterion``: a function ``(subject, tprobes, emphasis) -> DataFrame`` with one row per
probe (``probe_id``, ``split``, ``model``, ``correct`` and the criterion's extra columns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.registry import Registry
from unpact_mech.evals.metrics import generated_correct, gold_short, rouge_l_recall
from unpact_mech.evals.multiple_choice import check_choices, choice_variants
from unpact_mech.hooks import Emphasis
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, TokenizedProbe, tokenize_probe
from unpact_mech.scoring import (
    GEN_EXTRA_TOKENS,
    HookSource,
    generate_answers,
    memoized,
    probe_table,
    score_probes,
)

Judge = Callable[[Subject, Sequence[TokenizedProbe], Emphasis | None], pd.DataFrame]


@dataclass(frozen=True)
class Criterion:
    """A registered correctness criterion: its table function, the extra per-probe column it reports, the
    column suffix of the demo's summary, whether it is costly (limited factor sets in sweeps), and whether it
    needs multiple-choice probes (``meta['choices']``; then it judges only those)."""

    name: str
    judge: Judge
    extra: str
    suffix: str
    costly: bool = False
    needs_choices: bool = False

    def applies(self, probes: Sequence[Probe]) -> bool:
        """Whether this criterion can judge every one of ``probes``."""
        return not self.needs_choices or all(isinstance(p.meta.get("choices"), list) for p in probes)

    def table(self, subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None = None) -> pd.DataFrame:
        """One row per probe: ``correct`` and the extra columns (empty table for no probes)."""
        if not tprobes:
            return pd.DataFrame(columns=["probe_id", "split", "model", "correct", self.extra])
        return self.judge(subject, tprobes, emphasis)


CRITERIA: Registry[Criterion] = Registry("correctness criterion")


def register_criterion(name: str, extra: str, suffix: str, costly: bool = False,
                       needs_choices: bool = False) -> Callable[[Judge], Judge]:
    """Register a correctness criterion (see the module docstring)."""
    return CRITERIA.decorator(name, lambda fn: Criterion(name, fn, extra, suffix, costly, needs_choices))


def criterion(name: str) -> Criterion:
    """The registered criterion ``name``, or one clear error naming the known ones."""
    return CRITERIA[name]


def check_criteria(names: Sequence[str], probes: Sequence[Probe] | None = None) -> list[Criterion]:
    """The criteria ``names``; with ``probes``, one clear error if a criterion cannot judge them all."""
    crits = [criterion(n) for n in names]
    for c in crits:
        if probes is not None and not c.applies(probes):
            bad = next(p for p in probes if not isinstance(p.meta.get("choices"), list))
            raise UnpactError(f"criterion {c.name!r} judges multiple-choice probes only, and probe '{bad.id}' has no "
                              "meta['choices']; use it on a multiple-choice source (e.g. --probes wmdp), or drop it")
    return crits


def universal_criteria() -> tuple[str, ...]:
    """The criteria that judge any probe (the study's defaults): ``teacher_forced``, ``generation``."""
    return tuple(n for n, c in CRITERIA.items() if not c.needs_choices)


def criteria_for(probes: Sequence[Probe]) -> tuple[str, ...]:
    """The registered criteria that can judge every one of ``probes`` (with choices: ``multiple_choice`` too)."""
    return tuple(n for n, c in CRITERIA.items() if probes and c.applies(probes)) or universal_criteria()


@register_criterion("teacher_forced", extra="lp", suffix="")
def _teacher_forced(subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None) -> pd.DataFrame:
    return probe_table(subject, tprobes, emphasis=emphasis).rename(columns={"fact_top1": "correct"})


@register_criterion("generation", extra="generated", suffix="_gen", costly=True)
def _generation(subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None) -> pd.DataFrame:
    return generation_table(subject, tprobes, emphasis=emphasis).rename(columns={"gen_correct": "correct"})


@register_criterion("multiple_choice", extra="margin", suffix="_mc", needs_choices=True)
def _multiple_choice(subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None) -> pd.DataFrame:
    return choice_table(subject, tprobes, emphasis)


def choice_table(subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None = None) -> pd.DataFrame:
    """Cloze multiple choice on each probe's own prompt: every choice as the continuation, in one batch, with
    row r's ``emphasis`` on each of its choices; ``correct`` = argmax of the summed log-likelihoods is the gold
    choice, ``margin`` = LL(gold) - max LL(other), ``pred`` the chosen index."""
    variants, owner = [], []
    for r, tp in enumerate(tprobes):
        check_choices(tp.probe)
        for v in choice_variants(tp.probe, "cloze"):
            tv = tokenize_probe(subject.tokenizer, v, tp.format, max_len=subject.n_ctx)
            if tv.prompt_ids != tp.prompt_ids:
                raise UnpactError(f"probe '{tp.probe.id}': a choice changes how its prompt tokenises, so the KeyToken "
                                  "positions would not carry over; render it in a format with a separate answer")
            variants.append(tv)
            owner.append(r)
    lls = [float(s.logprobs.sum()) for s in score_probes(subject, variants,
                                                          emphasis=None if emphasis is None else emphasis.rows(owner))]
    rows = []
    for r, tp in enumerate(tprobes):
        ll = np.array([x for x, o in zip(lls, owner) if o == r])
        gold = int(tp.probe.meta["answer_index"])
        rows.append({"probe_id": tp.probe.id, "split": tp.probe.split, "model": subject.name,
                     "correct": int(ll.argmax()) == gold, "margin": float(ll[gold] - np.delete(ll, gold).max()),
                     "pred": int(ll.argmax())})
    return pd.DataFrame(rows)


def generation_table(subject: Subject, tprobes: Sequence[TokenizedProbe], hooks: HookSource = (),
                     emphasis: Emphasis | None = None) -> pd.DataFrame:
    """Correctness by generation: one row per probe with the greedy answer
    (:func:`~unpact_mech.scoring.generate_answers`), its ROUGE-L recall of the short gold answer and
    ``gen_correct`` (:func:`unpact_mech.evals.metrics.generated_correct`). Unhooked answers are memoized on a memoizing
    subject."""

    def run() -> list[list[int]]:
        return generate_answers(subject, tprobes, hooks, emphasis)

    plain = emphasis is None and not callable(hooks)
    outs = memoized(subject, hooks, ("generate", tuple(tp.ids for tp in tprobes)), run) if plain else run()
    texts = [subject.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]
    return pd.DataFrame({
        "probe_id": [tp.probe.id for tp in tprobes],
        "split": [tp.probe.split for tp in tprobes],
        "model": subject.name,
        "generated": texts,
        "rouge_l": [rouge_l_recall(t, gold_short(tp.probe)) for tp, t in zip(tprobes, texts)],
        "gen_correct": [generated_correct(t, tp.probe) for tp, t in zip(tprobes, texts)],
    })


__all__ = ["CRITERIA", "GEN_EXTRA_TOKENS", "Criterion", "check_criteria", "choice_table", "criteria_for", "criterion",
           "generation_table", "register_criterion", "universal_criteria"]
