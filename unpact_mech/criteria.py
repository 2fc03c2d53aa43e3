"""Correctness criteria, registered by name (``CRITERIA``; open-unlearning's ``@unlearning_metric`` in spirit).

A criterion judges each probe right or wrong, for a plain model or under an emphasis:

* ``teacher_forced``: every token of the fact span is the model's top-1 given the gold prefix
  (:func:`unpact_mech.scoring.fact_top1`); extra column ``lp`` = LP(x, y).
* ``generation``: the greedy answer (at most the gold answer's length + ``GEN_EXTRA_TOKENS`` tokens, stopping at
  end of turn) has ROUGE-L recall >= ``GEN_THRESHOLD`` of the fact span, or contains it as whole words
  (:func:`unpact_mech.metrics.generated_correct`); extra column ``generated`` = the answer's text. Costly: one
  forward per generated token.

Add one with ``@register_criterion``: a function ``(subject, tprobes, emphasis) -> DataFrame`` with one row per
probe (``probe_id``, ``split``, ``model``, ``correct`` and the criterion's extra columns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from unpact_mech.errors import UnknownNameError
from unpact_mech.hooks import Emphasis
from unpact_mech.metrics import generated_correct, gold_short, rouge_l_recall
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import (
    GEN_EXTRA_TOKENS,
    HookSource,
    generate_answers,
    memoized,
    probe_table,
)
from unpact_mech.subject import Subject

Judge = Callable[[Subject, Sequence[TokenizedProbe], Emphasis | None], pd.DataFrame]


@dataclass(frozen=True)
class Criterion:
    """A registered correctness criterion: its table function, the extra per-probe column it reports, the
    column suffix of the demo's summary, and whether it is costly (limited factor sets in sweeps)."""

    name: str
    judge: Judge
    extra: str
    suffix: str
    costly: bool = False

    def table(self, subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None = None) -> pd.DataFrame:
        """One row per probe: ``correct`` and the extra columns (empty table for no probes)."""
        if not tprobes:
            return pd.DataFrame(columns=["probe_id", "split", "model", "correct", self.extra])
        return self.judge(subject, tprobes, emphasis)


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, extra: str, suffix: str, costly: bool = False) -> Callable[[Judge], Judge]:
    """Register a correctness criterion (see the module docstring)."""

    def deco(fn: Judge) -> Judge:
        if name in CRITERIA:
            raise ValueError(f"criterion '{name}' registered twice")
        CRITERIA[name] = Criterion(name, fn, extra, suffix, costly)
        return fn

    return deco


def criterion(name: str) -> Criterion:
    """The registered criterion ``name``, or one clear error naming the known ones."""
    if name not in CRITERIA:
        raise UnknownNameError(f"unknown correctness criterion {name!r}; use {', '.join(CRITERIA)}")
    return CRITERIA[name]


def check_criteria(names: Sequence[str]) -> list[Criterion]:
    return [criterion(n) for n in names]


@register_criterion("teacher_forced", extra="lp", suffix="")
def _teacher_forced(subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None) -> pd.DataFrame:
    return probe_table(subject, tprobes, emphasis=emphasis).rename(columns={"fact_top1": "correct"})


@register_criterion("generation", extra="generated", suffix="_gen", costly=True)
def _generation(subject: Subject, tprobes: Sequence[TokenizedProbe], emphasis: Emphasis | None) -> pd.DataFrame:
    return generation_table(subject, tprobes, emphasis=emphasis).rename(columns={"gen_correct": "correct"})


def generation_table(subject: Subject, tprobes: Sequence[TokenizedProbe], hooks: HookSource = (),
                     emphasis: Emphasis | None = None) -> pd.DataFrame:
    """Correctness by generation: one row per probe with the greedy answer
    (:func:`~unpact_mech.scoring.generate_answers`), its ROUGE-L recall of the short gold answer and
    ``gen_correct`` (:func:`unpact_mech.metrics.generated_correct`). Unhooked answers are memoized on a memoizing
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


__all__ = ["CRITERIA", "GEN_EXTRA_TOKENS", "Criterion", "check_criteria", "criterion", "generation_table",
           "register_criterion"]
