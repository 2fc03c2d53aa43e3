"""The dilemma frontier: how recovery and destruction move together as unlearning gets stronger.

At each unlearning strength (a snapshot along the training trajectory, or a Task Vector scale) one
:func:`frontier_point` measures forget accuracy, KeyToken recovery, control recovery (random non-KeyTokens)
and the destructive rate, on the same base :class:`~unpact_mech.analysis.Analysis`. Reading: a method whose
line rises (more recovery) as it moves right (more destruction) forgets superficially *and* at a cost; the
dashed control line shows how much of the recovery any emphasis of as many tokens would give.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unpact_mech.analysis import Analysis
from unpact_mech.core.stats import rate_columns, wilson
from unpact_mech.evals.metrics import accuracy
from unpact_mech.findings import destruction, recovery
from unpact_mech.model.loading import load_hf
from unpact_mech.model.subject import Subject, wrap
from unpact_mech.probes import Probe


def frontier_point(an: Analysis, subject: Subject, forget: Sequence[Probe], others: Sequence[Probe],
                   strength: float, factors: Sequence[float] = (1.0, 4.0), modes: Sequence[str] = ("attention",),
                   n_draws: int = 2, criteria: Sequence[str] = ("teacher_forced",)) -> list[dict[str, Any]]:
    """One row per (criterion, emphasis mode): forget accuracy, best-over-factors recovery on KeyTokens, on random
    tokens and on function words (eligible probes only, so n changes along the frontier) and the destructive
    rate on ``others`` (retain + general), each with its counts and interval."""
    rows = []
    res = recovery(an, subject, list(forget), factors, modes, prompt_styles=(), criteria=criteria, n_draws=n_draws)
    for crit in criteria:
        _, d = destruction(an, subject, list(others), criterion=crit)
        pooled = _pool(d)
        f_ok = list(res.eligibility[res.eligibility.criterion == crit].unlearned_correct)
        fa = accuracy(f_ok)
        for route in modes:
            best = res.rates[(res.rates.criterion == crit) & (res.rates.route == route) & (res.rates.scope == "best")]
            row: dict[str, Any] = {"model": subject.name, "strength": float(strength), "criterion": crit,
                                   "route": route, **rate_columns("forget_acc", fa),
                                   **rate_columns("destructive", pooled)}
            for _, r in best.iterrows():
                row.update(rate_columns(str(r.condition), r))
            rows.append(row)
    return rows


def _pool(rates: dict) -> Any:
    """The destructive rate over all splits together (k and n summed)."""
    return wilson(sum(r.k for r in rates.values()), sum(r.n for r in rates.values()))


def snapshot_subject(hf_model: Any, tokenizer: Any, name: str, source: str) -> Subject:
    """A Subject over a frozen copy of an in-training HF model (the trainer's model is left untouched)."""
    return wrap(copy.deepcopy(hf_model), tokenizer, name, source)


def interpolated(base: Subject, unlearned_dir: str | Path, fraction: float, name: str) -> Subject:
    """theta_0 + fraction * (theta_1 - theta_0) between the base model and a checkpoint (for Task Vector this
    is exactly the negation scale fraction * a)."""
    hf0 = base.load_hf_model()
    hf1 = load_hf(str(unlearned_dir), dtype=base.dtype)
    with torch.no_grad():
        for p0, p1 in zip(hf0.parameters(), hf1.parameters()):
            p0.add_(fraction * (p1 - p0))
    del hf1
    return wrap(hf0, base.tokenizer, name, str(unlearned_dir))
