"""Split a batch job over machines: ``--shard i/n`` keeps every n-th probe; ``unpact merge`` joins the parts.

Each part is written with a sidecar ``<table>.shard.json`` recording the run (command, model, options, probe
set hash) and its shard; merging refuses parts of different runs, duplicate or missing shards, and sorts rows
canonically so the merged table does not depend on the order the parts are given in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write_json, read_table, sha256_file, write_table
from unpact_mech.core.options import parse_shard
from unpact_mech.model.loading import data_hash

__all__ = ["ShardError", "canonical", "merge_parts", "parse_shard", "run_key", "take_shard", "write_part"]

T = TypeVar("T")
SORT_KEYS = ["probe_id", "model", "method", "component", "layer", "head", "position"]


class ShardError(UnpactError):
    """Parts that cannot be merged into one table."""


def take_shard(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Every n-th item starting at i (all items without a shard)."""
    if shard is None:
        return list(items)
    i, n = shard
    return [x for k, x in enumerate(items) if k % n == i]


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in a fixed order (by the shared keys present), index reset."""
    keys = [k for k in SORT_KEYS if k in df.columns]
    return df.sort_values(keys, kind="mergesort", na_position="first").reset_index(drop=True)


def run_key(command: str, options: dict[str, Any], probe_ids: Sequence[str]) -> str:
    return data_hash({"command": command, "options": options, "probes": list(probe_ids)})


def sidecar(path: str | Path) -> Path:
    return Path(path).with_name(Path(path).name + ".shard.json")


def write_part(df: pd.DataFrame, path: str | Path, key: str, shard: tuple[int, int] | None) -> Path:
    """Write a table; a sharded part also gets its sidecar (an unsharded table gets none, and loses a stale one)."""
    path = Path(path)
    write_table(canonical(df), path)
    if shard is None:
        sidecar(path).unlink(missing_ok=True)
    else:
        atomic_write_json(sidecar(path), {"run": key, "shard": shard[0], "n_shards": shard[1], "rows": len(df),
                                          "columns": list(df.columns), "sha256": sha256_file(path)})
    return path


def merge_parts(parts: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Merge partial tables of one run into ``out`` (written atomically; ``out`` gets no sidecar)."""
    if not parts:
        raise ShardError("nothing to merge")
    if any(Path(p).resolve() == Path(out).resolve() for p in parts):
        raise ShardError(f"the merged output {out} is also one of the parts; write it to another path")
    if len({Path(p).resolve() for p in parts}) != len(parts):
        raise ShardError("a part is given twice")
    metas: list[dict[str, Any]] = []
    for p in parts:
        side = sidecar(p)
        if not Path(p).exists():
            raise ShardError(f"part {p} does not exist")
        if not side.exists():
            raise ShardError(f"{p} has no {side.name}: not written with --shard")
        try:
            meta = json.loads(side.read_text())
            metas.append({"run": str(meta["run"]), "shard": int(meta["shard"]), "n_shards": int(meta["n_shards"]),
                          "sha256": meta.get("sha256"), "columns": meta.get("columns")})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ShardError(f"{side} is damaged ({err}); re-create the part") from err
        if metas[-1]["sha256"] is not None and sha256_file(p) != metas[-1]["sha256"]:
            raise ShardError(f"part {p} has changed since it was written (its SHA-256 differs from {side.name}: "
                             "truncated or edited?); re-create the part")
    runs = {m["run"] for m in metas}
    if len(runs) > 1:
        raise ShardError(f"parts come from different runs ({len(runs)} run keys): same command, model, options "
                         "and probes are needed")
    n = metas[0]["n_shards"]
    got = sorted(m["shard"] for m in metas)
    if any(m["n_shards"] != n for m in metas) or got != list(range(n)):
        raise ShardError(f"need shards 0..{n - 1} exactly once, got {got}")
    tables = [read_table(p) for p in parts]
    for p, t, m in zip(parts, tables, metas):
        want = m["columns"] or list(tables[0].columns)
        if list(t.columns) != want:
            raise ShardError(f"part {p} has columns {list(t.columns)[:8]}, expected {want[:8]}: it is damaged or from "
                             "another command; re-create it")
    merged = canonical(pd.concat(tables, ignore_index=True))
    write_table(merged, out)
    sidecar(out).unlink(missing_ok=True)
    return merged
