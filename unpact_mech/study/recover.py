"""The study's recovery-routes stage: how superficial the forgetting is, per method (``unpact_mech.routes``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from unpact_mech.core.io import read_table, write_table
from unpact_mech.evals.criteria import CRITERIA, criteria_for
from unpact_mech.model import loading as models
from unpact_mech.routes import recover
from unpact_mech.runtime.pipeline import announce, make_stamp, stage
from unpact_mech.runtime.results import table_path
from unpact_mech.study.base import LazyBase
from unpact_mech.study.settings import control_candidates
from unpact_mech.study.unlearn import unlearn_stage

CODE = ("unpact_mech.study.recover",)


def routes_stage(lazy: LazyBase, method: str, data: dict[str, list], out: Path, steps: int | None, target: float,
                 params: Any, findings_stamp: dict[str, Any], on_change: str = "recompute") -> pd.DataFrame:
    """Recovery routes for one method (``OUT/METHOD/recovery_routes.csv``), stamped with the findings stage's
    stamp (the emphasis route reads its cached recovery tables) and the study's route budget. Every route is judged by
    the budget's criteria plus, where the probes carry choices, ``multiple_choice`` (WMDP's own score)."""
    f = table_path(out, method, "recovery_routes")
    rb = lazy.route_budget
    stamp = make_stamp(CODE, findings=findings_stamp, routes=asdict(rb))

    def compute() -> pd.DataFrame:
        announce(f"{method}: recovery routes {', '.join(rb.routes)}")
        base = lazy.get()
        forget, retain, general = data["forget"], data["retain"], data["general"]
        an = lazy.analysis(forget + retain + general, params)
        ckpt, _ = unlearn_stage(lazy, method, forget, retain, out, steps, target, on_change=on_change)
        unl = models.load_like(str(ckpt), base).memoize()
        emph = SimpleNamespace(rates=read_table(table_path(out, method, "recovery_rates")),
                               control=read_table(table_path(out, method, "recovery_control")))
        shots = general[: rb.shots]  # fewer when the general split is smaller
        unknown = control_candidates(lazy.pool, data, rb.n_control, lazy.budget.candidates)
        # the budget's criteria, and on probes with choices (WMDP) the benchmark's own, multiple_choice, too
        crits = criteria_for(forget + unknown)
        rc = tuple(rb.criteria) + tuple(c for c in crits if CRITERIA[c].needs_choices)
        table = recover(an, unl, forget, unknown, retain, shots, rb.routes, criteria=crits,
                        options={"emphasis": {"result": emph},
                                 "quantize": {"bits": rb.bits, "group_size": rb.group_size, "quantizers": rb.quantizers,
                                              "criteria": rc},
                                 "relearn": {"steps": rb.relearn_steps, "lr": rb.relearn_lr,
                                             "criteria": rc, "progress": True},
                                 "in_context": {"shots": len(shots), "criteria": rc}},
                        cache=lazy.route_cache, progress=True, collateral=general[len(shots):])
        write_table(table, f)
        return table

    return stage(f"routes {method}", out / method / "recovery_routes.stamp.json", stamp, f.exists,
                 lambda: read_table(f), compute, on_change)
