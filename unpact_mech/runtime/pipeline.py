"""Stamped stages: a cached output is reused only when everything that determines it is unchanged.

A stage's stamp is a JSON-able dict of its inputs (model, data hash, method settings, steps, target, seed,
KeyToken parameters), the package version, and a **fingerprint of the code it runs** (:func:`code_fingerprint`:
the SHA-256 of the source of the stage's modules and of every ``unpact_mech`` module they import, directly or
not, with the torch, transformers and TransformerLens versions), so editing a source file the stage depends on
recomputes it. ``ON_CHANGE`` decides what a different stamp does: ``"recompute"``
(the default) recomputes the stage, ``"stop"`` raises an error that names what changed.

A computed stage's stamp file also records what computing it cost (:data:`COST`: wall seconds and peak memory,
:func:`unpact_mech.core.meter.measure`); the cost is not part of the stamp, so it never invalidates a cached output.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write_json, json_safe
from unpact_mech.core.log import say
from unpact_mech.core.meter import describe, measure, release_memory

T = TypeVar("T")
ON_CHANGE = ("recompute", "stop")


class StaleStageError(UnpactError):
    """A cached stage was made with other inputs and the user asked to stop rather than recompute."""


PACKAGE = "unpact_mech"
VERSION = importlib.metadata.version(PACKAGE) if importlib.util.find_spec(PACKAGE) else "unknown"
LIBRARIES = ("torch", "transformers", "transformer-lens")
COST = "stage_cost"  # the key of a stamp file that holds what computing the stage cost (not part of the stamp)


def _source(module: str) -> tuple[str, str] | None:
    """(path, text) of a package module's source, or None when it is not a file of the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return spec.origin, Path(spec.origin).read_text(encoding="utf-8")


def _imports(module: str, text: str, is_package: bool) -> set[str]:
    """The ``unpact_mech`` modules a source imports (at any depth of the file, relative imports resolved), with
    their parent packages."""
    out: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(text)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            root = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
            mod = ".".join(x for x in (root, node.module or "") if x)
            names = [mod, *(f"{mod}.{a.name}" for a in node.names)]
        for n in names:
            if n == PACKAGE or n.startswith(PACKAGE + "."):
                parts = n.split(".")
                out.update(".".join(parts[: i + 1]) for i in range(1, len(parts)))
    return out


@functools.cache
def code_fingerprint(*modules: str) -> str:
    """SHA-256 over the sources of ``modules`` and of every ``unpact_mech`` module they import (transitively),
    and the versions of the libraries the numbers depend on (:data:`LIBRARIES`)."""
    seen: dict[str, str] = {}
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        src = _source(m)
        if src is None:
            seen[m] = ""
            continue
        path, text = src
        seen[m] = hashlib.sha256(text.encode()).hexdigest()
        todo += sorted(_imports(m, text, path.endswith("__init__.py")) - set(seen))
    h = hashlib.sha256()
    for m in sorted(seen):
        h.update(f"{m}={seen[m]}\n".encode())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}=={importlib.metadata.version(lib)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{lib} absent\n".encode())
    return h.hexdigest()[:16]


def make_stamp(code: tuple[str, ...] = (), **inputs: Any) -> dict[str, Any]:
    """The stamp of a stage: its inputs (as JSON sees them), the package version and, with ``code`` (the modules
    the stage runs), their :func:`code_fingerprint`."""
    extra = {"code": code_fingerprint(*code)} if code else {}
    return json.loads(json.dumps(json_safe({**inputs, **extra, "version": VERSION}), default=str, sort_keys=True))


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two stamps (``key: old -> new``)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp a stamp file holds (its :data:`COST` left out), or None when it is missing or unreadable."""
    data = _read_json(path)
    return None if data is None else {k: v for k, v in data.items() if k != COST}


def read_cost(path: Path) -> dict[str, Any] | None:
    """What computing a stage cost, as its stamp file records it (None for a file written before costs were)."""
    cost = (_read_json(path) or {}).get(COST)
    return cost if isinstance(cost, dict) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def announce(message: str) -> None:
    """One progress line of a long run (stdout, flushed, prefixed ``[unpact]``)."""
    say(f"[unpact] {message}")


def stage(name: str, stamp_file: Path, stamp: dict[str, Any], exists: Callable[[], bool], load: Callable[[], T],
          compute: Callable[[], T], on_change: str = "recompute") -> T:
    """``load()`` when the output exists and ``stamp_file`` holds ``stamp``; else ``compute()`` (which writes the
    output) and record the stamp. With ``on_change="stop"``, an output made with another stamp raises."""
    if on_change not in ON_CHANGE:
        raise UnpactError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
    old = read_stamp(stamp_file)
    why = "new"
    if exists() and old is not None:
        if old == stamp:
            announce(f"stage {name}: cached")
            return load()
        if on_change == "stop":
            raise StaleStageError(
                f"stage '{name}' in {stamp_file.parent} was made with other inputs ({'; '.join(changes(old, stamp))}); "
                "rerun with --on-change recompute, or choose another --out"
            )
        why = "changed: " + ", ".join(sorted(k for k in set(old) | set(stamp) if old.get(k) != stamp.get(k)))
    announce(f"stage {name}: computing ({why})")
    with measure() as cost:
        result = compute()
    release_memory()  # what the stage freed leaves the process's RSS before the next one (glibc keeps it otherwise)
    announce(f"stage {name}: {describe(cost)}")
    atomic_write_json(stamp_file, {**stamp, COST: cost})
    return result
