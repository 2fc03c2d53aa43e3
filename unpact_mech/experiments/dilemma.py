"""The unlearning dilemma study, end to end on one base model: data, KeyTokens, unlearning, findings, recovery
routes, frontier, summary table and HTML report. ``unpact demo`` is this study on the built-in facts and SmolLM2.

Stages are resumable and cached under ``OUT``: the probe split (``data.json``), the KeyToken table
(``keytokens.csv``), checkpoints (``checkpoints/METHOD``) and per-method results (``METHOD/result.json``).
A rerun with everything cached does not load the model at all; it only rebuilds the report. Every write is
atomic. The base model's side (leave-one-out, scores, decompositions) is computed once and reused across
methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.data import load_benchmark
from unpact_mech.errors import UnpactError, check_choices, check_float, check_int
from unpact_mech.experiments.base import LazyBase
from unpact_mech.experiments.data import data_stage, keytoken_stage
from unpact_mech.experiments.findings import findings_stamp, method_stage
from unpact_mech.experiments.routes import routes_stage
from unpact_mech.experiments.settings import BUDGET, FACTORS, PAPER_METHODS, ROUTE_BUDGET
from unpact_mech.io import write_table
from unpact_mech.keytokens import KeyTokenParams
from unpact_mech.report.sections import build_report
from unpact_mech.report.tables import summary_table
from unpact_mech.unlearning import METHODS


def run_demo(model: Any = "smollm2-135m", methods: Sequence[str] = PAPER_METHODS, out: str | Path = "unpact_out/demo",
             steps: int | None = None, target: float = 0.25, patch: bool = True, per_split: int | None = BUDGET["per_split"],
             probes: Sequence[Any] | None = None, known_only: bool = True,
             on_keytokens: Callable[[pd.DataFrame], None] | None = None,
             keytoken_probes: Sequence[Any] | None = None, params: Any = None,
             on_change: str = "recompute") -> pd.DataFrame:
    """Run (or resume) the demo; returns the summary table and writes ``OUT/report.html``.

    ``model`` is a model spec or a loaded Subject. ``on_keytokens`` receives the base model's KeyToken table
    of ``keytoken_probes`` (default: the first 12 probes) before the unlearning stages; the CLI prints it.
    """
    methods = check_choices(list(methods), sorted(METHODS), "methods")  # before any stage runs
    if steps is not None:
        check_int(steps, "steps", 1)
    check_float(target, "target", 0.0, 1.0, lo_open=False)
    if on_change not in ("recompute", "stop"):
        raise UnpactError(f"on_change must be 'recompute' or 'stop', got {on_change!r}")
    out = Path(out)
    params = params or KeyTokenParams()
    t0 = time.perf_counter()
    lazy = LazyBase(model)
    pool = list(probes) if probes is not None else load_benchmark("facts")
    lazy.pool = pool
    if on_keytokens is not None:
        kp = list(keytoken_probes) if keytoken_probes is not None else pool[:12]
        on_keytokens(keytoken_stage(lazy, out, kp, params, on_change))
    data, model_name = data_stage(lazy, out, pool, known_only, per_split, on_change)
    print(f"[unpact] base knows {len(data['forget'])} forget, {len(data['retain'])} retain, "
          f"{len(data['general'])} general facts", flush=True)
    rows = []
    for i, m in enumerate(methods):
        t = time.perf_counter()
        print(f"[unpact] method {i + 1}/{len(methods)}: {m}", flush=True)
        patch_m = patch and i == 0
        rows.append(method_stage(lazy, m, data, out, steps, target, patch_m, params, on_change))
        routes_stage(lazy, m, data, out, steps, target, params,
                     findings_stamp(lazy, m, data, steps, target, patch_m, params), on_change)
        print(f"[unpact] {m} done in {time.perf_counter() - t:.0f} s", flush=True)
    table = summary_table(rows)
    write_table(table, out / "summary.csv")
    report = build_report(out, rows, data, model_name, {"budget": BUDGET, "route_budget": ROUTE_BUDGET,
                                                        "factors": FACTORS, "keytoken_params": asdict(params)})
    print(f"[unpact] demo finished in {time.perf_counter() - t0:.0f} s "
          f"({'model loaded' if lazy.loaded else 'all stages cached, model not loaded'}); report: {report}", flush=True)
    return table
