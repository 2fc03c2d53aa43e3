"""What each benchmark task runs, known before any model loads: the sequences it scores teacher forced and the
prompts it generates from, as probes its format renders. ``unpact evaluate`` plans and checks its memory from
this (:mod:`unpact_mech.runtime.plan` costs each part), the way the other commands plan from their probes.

Each part follows the task's metrics (:mod:`unpact_mech.evals.tasks`): WMDP scores every choice of every
formulation (:func:`~unpact_mech.evals.multiple_choice.choice_variants`); TOFU scores the answers, generates
greedy answers (200 new tokens by default) and, on the perturbed splits, scores every paraphrased and perturbed
answer; MUSE's KnowMem generates from the question after its in-context examples (32 tokens), VerbMem from the
prefix (128 tokens) and scores it for extraction strength, privleak scores each passage; ``facts`` scores, and
generates under the generation criterion. MUSE's chat rendering is planned as its ``Question:/Answer:`` text
(a few template tokens apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from unpact_mech.core.errors import UnpactError
from unpact_mech.evals.criteria import criteria_for, criterion
from unpact_mech.evals.loaders import Passage
from unpact_mech.evals.multiple_choice import FORMULATIONS, choice_variants
from unpact_mech.evals.muse import OU_COMPLETION_MAX, qa_text
from unpact_mech.evals.tasks import check_task_inputs, wmdp_description
from unpact_mech.probes import Probe


@dataclass(frozen=True)
class Work:
    """One part of a task's run: ``probes`` as ``fmt`` renders them, scored teacher forced (``new_tokens`` 0) or
    generated from (``new_tokens`` > 0, or None: each probe's answer length plus the generation margin); ``cut``:
    the tokens of each sequence the task keeps (MUSE's 2,048, open-unlearning's ``CompletionDataset``)."""

    what: str
    probes: list[Probe]
    fmt: str
    new_tokens: int | None = 0
    cut: int | None = None  # the task keeps at most this many tokens of each sequence (no context check then)


def _variants(probes: Sequence[Probe]) -> list[Probe]:
    """TOFU's answer variants of each probe (paraphrased, then perturbed), as ``answer_nll_of`` scores them."""
    out = []
    for p in probes:
        for key in ("paraphrased_answer", "perturbed_answer"):
            val = p.meta.get(key)
            out += [replace(p, answer=a, fact=None) for a in ([val] if isinstance(val, str) else list(val or []))]
    return out


def _passage_probe(p: Passage) -> Probe:
    """A passage as a probe whose first word is the prompt and the rest the scored answer (its split, e.g.
    holdout, is not a probe's and plays no part in the cost)."""
    first, _, rest = p.text.strip().partition(" ")
    return Probe(p.id, first or " ", rest or first)


def task_work(name: str, probes: Sequence[Any], **options: Any) -> list[Work]:
    """The parts of task ``name`` on ``probes`` with its ``options`` (those :func:`~unpact_mech.evals.tasks.task_metrics`
    takes; the retain model's own work is the same scoring once more)."""
    t = check_task_inputs(name, probes)
    new = options.get("max_new_tokens")
    if name == "wmdp":
        desc = options.get("description")
        return [Work(f"{f} choices", [v for p in probes for v in choice_variants(
                    p, f, wmdp_description(p, desc)[0] if f == "lettered" else "")],
                     "raw" if f == "lettered" else "plain") for f in options.get("formulations", FORMULATIONS)]
    if name == "tofu":
        fmt = options.get("fmt", t.fmt)
        parts = [Work("answers", list(probes), fmt), Work("greedy answers", list(probes), fmt, new or 200)]
        variants = _variants(probes)
        return parts + ([Work("paraphrased and perturbed answers", variants, fmt)] if variants else [])
    if name == "muse-knowmem":
        pairs = [(s.prompt, s.answer) for s in options.get("shots", ())]
        return [Work(f"greedy answers after {len(pairs)} in-context examples",
                     [replace(p, prompt=qa_text(p.prompt, pairs)) for p in probes], "raw", new or 32)]
    if name == "muse-verbmem":
        return [Work("greedy continuations", list(probes), "raw", new or 128),
                Work("continuations scored (extraction strength)", list(probes), "raw", cut=OU_COMPLETION_MAX)]
    if name == "muse-privleak":
        return [Work("passages scored (Min-k%)", [_passage_probe(p) for p in probes], "raw", cut=OU_COMPLETION_MAX)]
    if name == "facts":
        names = options.get("criteria") or criteria_for(list(probes))
        parts = [Work("answers", list(probes), t.fmt)]
        if any(criterion(c).costly for c in names):
            parts.append(Work("greedy answers", list(probes), t.fmt, None))
        if "multiple_choice" in names:
            parts.append(Work("cloze choices", [v for p in probes for v in choice_variants(p, "cloze")], "plain"))
        return parts
    raise UnpactError(f"task {name!r} has no description of its work for the plan; unpact evaluate "
                      "--skip-memory-check runs it unplanned")


__all__ = ["Work", "task_work"]
