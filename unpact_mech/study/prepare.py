"""The study's data stages: the forget/retain/general facts the base model knows, and the KeyToken table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.analysis import Analysis
from unpact_mech.core.io import atomic_write_json, read_table, write_table
from unpact_mech.evals.criteria import choice_table
from unpact_mech.evals.loaders import filter_known
from unpact_mech.model.loading import data_hash
from unpact_mech.probes import tokenize_probes
from unpact_mech.probes.keytokens import KeyTokenParams, keytoken_table
from unpact_mech.runtime.pipeline import make_stamp, stage
from unpact_mech.study.base import LazyBase
from unpact_mech.study.settings import budget_order, probe_key

CODE = ("unpact_mech.study.prepare",)


def data_stage(lazy: LazyBase, out: Path, pool: Sequence[Any], known_only: bool,
               per_split: int | None, on_change: str = "recompute") -> tuple[dict[str, list], str]:
    """Forget/retain/general probes the base model knows and its name, cached as ``OUT/data.json``. Knowing is
    fact top-1 (teacher forced), or for probes with choices (WMDP) the benchmark's own criterion: the gold choice
    has the largest log-likelihood (:func:`unpact_mech.evals.criteria.choice_table`).

    ``per_split``: the demo's budget, at most that many probes per split, drawn in :func:`budget_order` from the
    first ``lazy.budget.candidates`` facts of that order (None: every known fact of the pool)."""
    f = out / "data.json"
    stamp = make_stamp(CODE, model=lazy.key, pool=data_hash([probe_key(p) for p in pool]), known_only=known_only,
                       per_split=per_split, candidates=lazy.budget.candidates)

    def compute() -> dict[str, Any]:
        cands = budget_order(pool)[: lazy.budget.candidates] if per_split else list(pool)
        known = known_probes(lazy.get(), list(cands)) if known_only else cands
        ids = {s: [p.id for p in known if p.split == s][:per_split] for s in ("forget", "retain", "general")}
        cached = {"model_name": lazy.get().name, "ids": ids, "candidates": len(cands), "known": len(known)}
        atomic_write_json(f, cached)
        return cached

    cached = stage("data", out / "data.stamp.json", stamp, f.exists, lambda: json.loads(f.read_text()), compute,
                   on_change)
    by_id = {p.id: p for p in pool}
    return {s: [by_id[i] for i in ids] for s, ids in cached["ids"].items()}, cached["model_name"]


def known_probes(base: Any, probes: list[Any]) -> list[Any]:
    """The probes ``base`` knows, in order: fact top-1, or the choice argmax for probes with choices."""
    mc = [p for p in probes if isinstance(p.meta.get("choices"), list)]
    plain = [p for p in probes if not isinstance(p.meta.get("choices"), list)]
    ok = {p.id for p in filter_known(base, plain)[0]} if plain else set()
    if mc:
        ok |= {p.id for p, right in zip(mc, choice_table(base, tokenize_probes(base, mc)).correct) if right}
    return [p for p in probes if p.id in ok]


def keytoken_stage(lazy: LazyBase, out: Path, probes: Sequence[Any], params: Any = None,
                   on_change: str = "recompute") -> pd.DataFrame:
    """The base model's KeyToken table for ``probes`` (cached as ``OUT/keytokens.csv`` per probe set and params)."""
    params = params or KeyTokenParams()
    f = out / "keytokens.csv"
    stamp = make_stamp(CODE, model=lazy.key, probes=data_hash([probe_key(p) for p in probes]), params=asdict(params))

    def compute() -> pd.DataFrame:
        an = Analysis(lazy.get(), list(probes), params)
        table = keytoken_table(an.loo(progress=True), params)
        write_table(table, f)
        return table

    return stage("keytokens", out / "keytokens.stamp.json", stamp, f.exists, lambda: read_table(f), compute, on_change)
