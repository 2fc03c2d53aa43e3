"""The dilemma study's settings: the paper's methods, the demo's learning rates (and the rule that fixed them), the
emphasis factors, the demo's budget and the recovery-route budget, the domain-stratified draw of facts.

Everything here was fixed before any finding was measured; ``unpact demo`` runs the study with these.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from unpact_mech.core.options import MAX_STEPS, choice_list, positive_int, unit_float
from unpact_mech.unlearning import METHODS

PAPER_METHODS = ("ga_gdr", "ga_klr", "npo_gdr", "npo_klr", "task_vector", "rmu")
# CPU-sized learning rates, fixed by one rule before any finding was measured: starting from the rates used
# under the first loss forms (START_LR), lr * 2^(-k/2) with the smallest k at which the method needs at least 3
# steps (forget accuracy checked after every step) to reach the 0.25 target on the demo's forget set, so that
# each stops close to the target and leaves a trajectory for the frontier. Every method stops at the same target
# (or at max steps); Task Vector's scale is bisected to it. The rule was reapplied (analyses/calibrate.py) when
# the examples took open-unlearning's labels (answer + closing tokens + EOS): ga_gdr k=0 (5 steps), ga_klr k=0
# (3), npo_gdr k=1 (6), npo_klr k=3 (3), rmu k=0 (4); under answer-only labels they were k = 0, 1, 6, 5, 1.
# The rates the rule starts from (those used under the first loss forms); analyses/calibrate.py applies it.
START_LR: dict[str, float] = {"ga_gdr": 1e-4, "ga_klr": 7e-5, "npo_gdr": 3e-4, "npo_klr": 2.5e-4, "rmu": 3e-2,
                              "simnpo": 3e-4, "idk_dpo": 3e-4, "ga": 1e-4, "npo": 1e-4}
CALIBRATION: dict[str, Any] = {"min_steps": 3, "max_k": 12}
SETTINGS: dict[str, dict[str, Any]] = {
    "ga_gdr": {"lr": 1e-4}, "ga_klr": {"lr": 7e-5}, "npo_gdr": {"lr": 2.12e-4}, "npo_klr": {"lr": 8.84e-5},
    "simnpo": {"lr": 3e-4}, "idk_dpo": {"lr": 3e-4}, "task_vector": {"lr": 1e-4, "tv_scale": 1.0, "steps": 6},
    "rmu": {"lr": 3e-2}, "ga": {"lr": 1e-4}, "npo": {"lr": 1e-4},
}
FACTORS = (1.0, 2.0, 8.0)
# Finetune-then-forget (experiments.finetune): teaching invented people, fixed from one pilot (4 people x 5
# facts: 40 steps at lr 1e-4 taught 20/20 facts by fact top-1, 0/20 before) and not tuned further; the same for
# both models. Larger pools need more steps (--finetune-steps; analyses/tofu_study.py keeps ~16 epochs).
FINETUNE: dict[str, Any] = {"lr": 1e-4, "steps": 40, "batch_size": 8, "check_every": 10, "checkpoint_every": 10}
# The demo's budget, fixed before any result was seen (the full versions are in analyses/: every known fact,
# factors 1-2-4-8, 3 draws, every route and prompt edit under both criteria, a longer trajectory): probes per
# split, random-control draws, what generation judges (costly: one forward per generated token), and the
# frontier's emphasis (attention x8, teacher forced, one draw) at every 2nd step and the last, and Task
# Vector's frontier scales. A study's config holds its own (StudyConfig.budget, .route_budget); these are the
# defaults.
PER_SPLIT = 12  # known probes per split (StudyConfig.per_split)


@dataclass(frozen=True)
class FrontierBudget:
    """The frontier's emphasis at each snapshot: factors, emphasis modes, random draws; every ``every`` steps."""

    factors: tuple[float, ...] = (1.0, 8.0)
    modes: tuple[str, ...] = ("attention",)
    n_draws: int = 1
    every: int = 2


@dataclass(frozen=True)
class Budget:
    """What a study spends per method: ``candidates`` facts tried for the splits, ``n_draws`` random-control
    draws, the emphasis factors and prompt styles judged by generation, the frontier, and Task Vector's frontier
    fractions of its calibrated scale."""

    candidates: int = 200
    n_draws: int = 2
    gen_factors: tuple[float, ...] = (8.0,)
    gen_prompt_styles: tuple[str, ...] = ("instruct",)
    frontier: FrontierBudget = field(default_factory=FrontierBudget)
    tv_fractions: tuple[float, ...] = (0.5, 1.0)


# The "how superficial is the forgetting" table (unpact_mech.routes), fixed before any route was run: emphasis
# from the findings stage (both criteria), weights RTN-quantised to 8 and 4 bits (group 64) and, as Zhang et al.
# (ICLR 2025) quantised, bitsandbytes NF4 (added with the bitsandbytes quantisers; RTN was fixed first), relearning
# on the retain split evaluated at 1, 2 and 4 steps, a 3-shot prompt of general facts; control facts drawn from
# the candidates no split uses. For time (measured: ~90 s per method with generation, ~2.5x the teacher-forced
# cost) the new routes are judged teacher forced here (and, on probes with choices such as WMDP's, by the
# benchmark's own multiple_choice too); `unpact recover` and analyses/recovery_routes.py judge both.
@dataclass(frozen=True)
class RouteBudget:
    """The study's recovery routes and their options (see :mod:`unpact_mech.routes` for each)."""

    routes: tuple[str, ...] = ("emphasis", "quantize", "relearn", "in_context")
    bits: tuple[int, ...] = (8, 4)
    quantizers: tuple[str, ...] = ("rtn", "nf4")
    group_size: int = 64
    relearn_steps: tuple[int, ...] = (1, 2, 4)
    relearn_lr: float = 1e-5
    shots: int = 3
    n_control: int = 16
    criteria: tuple[str, ...] = ("teacher_forced",)


BUDGET = Budget()
ROUTE_BUDGET = RouteBudget()


def method_settings(method: str, steps: int | None, target: float) -> dict[str, Any]:
    """The demo's unlearning settings for a method: its tuned defaults, then the user's explicit ``steps``."""
    s = {"steps": 10, "target_forget_acc": target, "check_every": 1, "checkpoint_every": 0, **SETTINGS.get(method, {})}
    if steps is not None:  # explicit settings beat the demo's per-method defaults (Task Vector's 6 steps too)
        s["steps"] = steps
    return s


def add_run_arguments(ap: Any, out: str) -> None:
    """The options every demo-like script shares (model, methods, output directory, steps, forget target), with
    their values checked when parsed (``args.methods`` is a list)."""
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=",".join(PAPER_METHODS), type=choice_list(sorted(METHODS)),
                    help="unlearning methods, comma-separated")
    ap.add_argument("--out", default=out, help="output directory (reruns reuse its checkpoints)")
    ap.add_argument("--steps", type=positive_int(MAX_STEPS), default=None, help="max unlearning steps per method "
                    "(default: 10, Task Vector 6; an explicit value applies to every method)")
    ap.add_argument("--target", type=unit_float(), default=0.25, help="stop when forget fact top-1 accuracy <= "
                    "target, in [0, 1]")
    ap.add_argument("--on-change", default="recompute", choices=["recompute", "stop"],
                    help="a cached stage made with other inputs: recompute it, or stop and say what changed")


def probe_key(p: Any) -> list[Any]:
    """What identifies a probe in a stage's data hash."""
    return [p.id, p.prompt, p.answer, p.split, p.fact]


def budget_order(pool: Sequence[Any], seed: int = 0) -> list[Any]:
    """The pool in a seeded, domain-stratified order: shuffled within each domain, then domains taken in turn,
    so any prefix covers the domains evenly."""
    by_domain: dict[str, list[Any]] = {}
    for p in pool:
        by_domain.setdefault(str(p.domain), []).append(p)
    for name, items in by_domain.items():
        random.Random(f"{seed}:{name}").shuffle(items)
    order, queues = [], [list(v) for _, v in sorted(by_domain.items())]
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def control_candidates(pool: Sequence[Any], data: dict[str, list], n: int, candidates: int = BUDGET.candidates
                       ) -> list[Any]:
    """Of the first ``candidates`` facts of the pool in :func:`budget_order`, the first ``n`` that no split uses:
    the routes' control facts (the routes keep those that neither model answers)."""
    used = {p.id for v in data.values() for p in v}
    return [p for p in budget_order(pool)[:candidates] if p.id not in used][:n]
