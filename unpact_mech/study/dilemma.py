"""The unlearning dilemma study, end to end on one base model: data, KeyTokens, unlearning, findings, recovery
routes, frontier, summary table and HTML report. ``unpact demo`` is this study on the built-in facts and SmolLM2.

Stages are resumable and cached under ``OUT``: the probe split (``data.json``), the KeyToken table
(``keytokens.csv``), checkpoints (``checkpoints/METHOD``) and per-method results (``METHOD/result.json``).
A rerun with everything cached does not load the model at all; it only rebuilds the report. Every write is
atomic. The base model's side (leave-one-out, scores, decompositions) is computed once and reused across
methods.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.analysis import Analysis
from unpact_mech.core.errors import UnpactError, check_choices, check_float, check_int
from unpact_mech.core.io import check_output, read_table, write_table
from unpact_mech.core.log import say
from unpact_mech.evals.loaders import load_benchmark
from unpact_mech.evals.ou_metrics import truth_ratio_of
from unpact_mech.evals.tasks import UTILITY_SETS, task, task_metrics
from unpact_mech.findings import control_positions
from unpact_mech.hooks import Emphasis
from unpact_mech.model import loading as models
from unpact_mech.model.loading import data_hash
from unpact_mech.probes import Probe
from unpact_mech.probes.keytokens import KeyTokenParams
from unpact_mech.report.sections import build_report
from unpact_mech.report.tables import summary_table
from unpact_mech.runtime.pipeline import make_stamp, stage
from unpact_mech.study.base import LazyBase
from unpact_mech.study.finetune import check_finetune_pool, finetune_stage, retain_subject, tuned_base
from unpact_mech.study.measure import findings_stamp, method_stage
from unpact_mech.study.prepare import data_stage, keytoken_stage
from unpact_mech.study.recover import routes_stage
from unpact_mech.study.settings import (
    BUDGET,
    FACTORS,
    PAPER_METHODS,
    PER_SPLIT,
    ROUTE_BUDGET,
    Budget,
    RouteBudget,
    probe_key,
)
from unpact_mech.study.unlearn import given_fingerprint
from unpact_mech.unlearning import METHODS

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_given(given: Mapping[str, str]) -> list[str]:
    """The names of given checkpoints (each becomes a folder of OUT), with every spec checked without loading."""
    for name, spec in given.items():
        if not SAFE_NAME.fullmatch(name) or name in ("checkpoints", "figures", "finetuned"):
            raise UnpactError(f"unlearned checkpoint name {name!r}: use letters, digits, '_', '.', '-' (it names a "
                              "folder of the output), e.g. --unlearned npo=path/to/ckpt")
        models.check_spec(spec)
    return list(given)


def run_demo(model: Any = "smollm2-135m", methods: Sequence[str] = PAPER_METHODS, out: str | Path = "unpact_out/demo",
             steps: int | None = None, target: float = 0.25, patch: bool = True, per_split: int | None = PER_SPLIT,
             probes: Sequence[Any] | None = None, known_only: bool = True,
             on_keytokens: Callable[[pd.DataFrame], None] | None = None,
             keytoken_probes: Sequence[Any] | None = None, params: Any = None,
             on_change: str = "recompute", unlearned: Mapping[str, str] | None = None,
             task_name: str | None = None, finetune: bool = False,
             finetune_settings: Mapping[str, Any] | None = None, retain_model: str | None = None,
             budget: Budget = BUDGET, route_budget: RouteBudget = ROUTE_BUDGET,
             factors: Sequence[float] = FACTORS, config: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Run (or resume) the demo; returns the summary table and writes ``OUT/report.html``.

    ``finetune`` (TOFU's finetune-then-forget, :mod:`unpact_mech.study.finetune`): the probes' forget and
    retain people are first taught to ``model``, and the study runs on that "full" model; a second model taught
    only the retain people is the reference of the task's forget quality. The general split (collateral damage)
    is the built-in facts' general split where the probes have none.

    ``unlearned`` (name -> local directory or hub id) analyses those checkpoints as they are, e.g. released
    unlearned models, instead of training ``methods``: no unlearning runs, and each one's frontier is its one point.
    ``retain_model`` (a spec; not with ``finetune``, which makes its own) is the reference of TOFU's forget quality.

    ``budget``, ``route_budget`` and ``factors`` (the emphasis factors of finding 2) are what each method spends
    (:mod:`unpact_mech.study.settings`); ``config`` (the StudyConfig's values, which :class:`Study` passes) is
    what the report's settings section shows of the run.

    ``model`` is a model spec or a loaded Subject. ``on_keytokens`` receives the base model's KeyToken table
    of ``keytoken_probes`` (default: the first 12 probes) before the unlearning stages; the CLI prints it.
    """
    given = dict(unlearned or {})
    if given:
        methods = check_given(given)
    else:
        methods = check_choices(list(methods), sorted(METHODS), "methods")  # before any stage runs
    if task_name is not None and task(task_name).inputs is not Probe:
        raise UnpactError(f"task {task_name!r} scores {task(task_name).inputs.__name__}s, not the study's probes: run it "
                          f"with `unpact evaluate --task {task_name}` on the study's checkpoints")
    if retain_model is not None and finetune:
        raise UnpactError("finetune teaches its own retain model; give retain_model only without it")
    if finetune:
        check_finetune_pool(list(probes) if probes is not None else load_benchmark("facts"))
    if steps is not None:
        check_int(steps, "steps", 1)
    check_float(target, "target", 0.0, 1.0, lo_open=False)
    if on_change not in ("recompute", "stop"):
        raise UnpactError(f"on_change must be 'recompute' or 'stop', got {on_change!r}")
    out = check_output(out, kind="dir", overwrite=True)  # an existing directory is resumed; a file is refused
    params = params or KeyTokenParams()
    t0 = time.perf_counter()
    pool = list(probes) if probes is not None else load_benchmark("facts")
    lazy = LazyBase(model, pool, given, budget, route_budget, factors)
    retain_spec, task_pool = retain_model, pool
    if finetune:
        tuned = finetune_stage(lazy, pool, out, dict(finetune_settings or {}), on_change=on_change)
        if not any(p.split == "general" for p in pool):
            pool = pool + load_benchmark("facts", split="general")
        lazy = LazyBase(tuned_base(model, tuned["full"]), pool, given, budget, route_budget, factors)
        retain_spec = tuned["retain"]
    if on_keytokens is not None:
        kp = list(keytoken_probes) if keytoken_probes is not None else pool[:12]
        on_keytokens(keytoken_stage(lazy, out, kp, params, on_change))
    data, model_name = data_stage(lazy, out, pool, known_only, per_split, on_change)
    say(f"[unpact] base knows {len(data['forget'])} forget, {len(data['retain'])} retain, "
        f"{len(data['general'])} general facts")
    rows = []
    for i, m in enumerate(methods):
        t = time.perf_counter()
        say(f"[unpact] method {i + 1}/{len(methods)}: {m}")
        patch_m = patch and i == 0
        rows.append(method_stage(lazy, m, data, out, steps, target, patch_m, params, on_change))
        routes_stage(lazy, m, data, out, steps, target, params,
                     findings_stamp(lazy, m, data, steps, target, patch_m, params), on_change)
        say(f"[unpact] {m} done in {time.perf_counter() - t:.0f} s")
    if task_name is not None:
        task_stage(lazy, task_name, methods, out, task_pool, given, on_change, retain_spec)
    table = summary_table(rows)
    write_table(table, out / "summary.csv")
    settings = {"budget": asdict(budget), "route_budget": asdict(route_budget), "factors": list(factors),
                "keytoken_params": asdict(params), **({"config": dict(config)} if config is not None else {})}
    report = build_report(out, rows, data, model_name, settings)
    say(f"[unpact] demo finished in {time.perf_counter() - t0:.0f} s "
        f"({'model loaded' if lazy.loaded else 'all stages cached, model not loaded'}); report: {report}")
    return table


def task_stage(lazy: LazyBase, task_name: str, methods: Sequence[str], out: str | Path, probes: Sequence[Any],
               given: Mapping[str, str] | None = None, on_change: str = "recompute",
               retain_model: str | None = None) -> pd.DataFrame:
    """The task's own metrics (:func:`unpact_mech.evals.tasks.task_metrics`) of the base and of every method's
    checkpoint (given, or ``OUT/checkpoints/METHOD``) on ``probes``: ``OUT/task_metrics.csv``, stamped.
    The TOFU task is scored per split, as TOFU reports its forget and retain sets (a ``split`` column), and its
    real-authors and world-facts sets where the probes hold them; with all of retain, real authors and world facts,
    TOFU's nine-number model utility (split ``all``);
    ``retain_model`` (a spec) is the reference model of the forget split's forget quality."""
    t = task(task_name)
    out, given = Path(out), dict(given or {})
    specs = {m: given.get(m, str(out / "checkpoints" / m)) for m in methods}
    f = out / "task_metrics.csv"
    stamp = make_stamp(("unpact_mech.evals.tasks", "unpact_mech.evals.ou_metrics", "unpact_mech.evals.multiple_choice",
                        "unpact_mech.analysis", "unpact_mech.findings"),
                       model=lazy.key, task=task_name, probes=data_hash([probe_key(p) for p in probes]),
                       checkpoints={m: given_fingerprint(s) for m, s in specs.items()},
                       retain_model=None if retain_model is None else given_fingerprint(retain_model))

    def compute() -> pd.DataFrame:
        base = lazy.get()
        ref = None if retain_model is None or not t.takes("retain_model") else retain_subject(retain_model, base)
        split = {s: [p for p in probes if p.split == s and not p.meta.get("tofu_set")] for s in ("forget", "retain")}
        split.update({s: [p for p in probes if p.meta.get("tofu_set") == s] for s in UTILITY_SETS})
        groups: dict[str | None, list[Any]] = ({s: ps for s, ps in split.items() if ps} if t.by_split
                                               else {}) or {None: list(probes)}

        def score(subject: Any, role: str) -> list[pd.DataFrame]:
            frames = [task_metrics(task_name, subject, ps, **({"retain_model": ref} if ref and s == "forget" else {}))
                      .assign(role=role, **({} if s is None else {"split": s})) for s, ps in groups.items()]
            nine = t.utility(pd.concat(frames, ignore_index=True)) if t.utility else None
            return frames + ([pd.DataFrame([nine]).assign(task=task_name, model=subject.name, role=role)] if nine else [])

        frames = score(base, "base")
        forget = [p for p in split.get("forget", []) if {"paraphrased_answer", "perturbed_answer"} <= set(p.meta)]
        emph = emphasis_units(base, forget, lazy.factors) if t.under_emphasis and forget and specs else []
        ref_tr = truth_ratio_of(ref, forget)[0] if ref is not None and emph else None
        for m, spec in specs.items():
            unl = models.load_like(spec, base)
            frames += score(unl, m)
            for treatment, cond, e in emph:  # does emphasis bring TOFU's forget numbers back?
                assert t.under_emphasis is not None  # emph is empty otherwise
                frames.append(pd.DataFrame(t.under_emphasis(unl, forget, e, retain_tr=ref_tr)).assign(
                    task=task_name, model=unl.name, role=m, split="forget", treatment=treatment, positions=cond))
        table = pd.concat(frames, ignore_index=True)
        write_table(table, f)
        return table

    return stage(f"task metrics {task_name}", out / "task_metrics.stamp.json", stamp, f.exists, lambda: read_table(f),
                 compute, on_change)


def emphasis_units(base: Any, probes: Sequence[Any], factors: Sequence[float] = FACTORS
                   ) -> list[tuple[str, str, Emphasis]]:
    """The recovery treatments TOFU's metrics are scored under: each emphasis mode at the largest of the demo's
    factors, on the base model's KeyTokens and on as many random non-KeyTokens (one seeded draw, the control)."""
    an = Analysis(base, list(probes), KeyTokenParams())
    tps = an.probes.select(list(probes))
    keys = an.keytoken_positions(tps)
    ctrl = [control_positions(tp, k, 1) for tp, k in zip(tps, keys)]
    f = max(factors)
    return [(f"{route} x{f:g}", cond, Emphasis.of(route, [c[cond][0] for c in ctrl], f))
            for route in ("embed", "attention") for cond in ("keytokens", "random")]
