"""Stamped stages: a cached output is reused only when everything that determines it is unchanged.

A stage's stamp is a JSON-able dict of its inputs (model, data hash, method settings, steps, target, seed,
KeyToken parameters) plus the package version. ``ON_CHANGE`` decides what a different stamp does: ``"recompute"``
(the default) recomputes the stage, ``"stop"`` raises an error that names what changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from unpact_mech.errors import UnpactError
from unpact_mech.io import atomic_write_json, json_safe

T = TypeVar("T")
ON_CHANGE = ("recompute", "stop")


class StaleStageError(UnpactError):
    """A cached stage was made with other inputs and the user asked to stop rather than recompute."""


def make_stamp(**inputs: Any) -> dict[str, Any]:
    """The stamp of a stage: its inputs (as JSON sees them) and the package version."""
    from unpact_mech import __version__

    return json.loads(json.dumps(json_safe({**inputs, "version": __version__}), default=str, sort_keys=True))


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two stamps (``key: old -> new``)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stage(name: str, stamp_file: Path, stamp: dict[str, Any], exists: Callable[[], bool], load: Callable[[], T],
          compute: Callable[[], T], on_change: str = "recompute") -> T:
    """``load()`` when the output exists and ``stamp_file`` holds ``stamp``; else ``compute()`` (which writes the
    output) and record the stamp. With ``on_change="stop"``, an output made with another stamp raises."""
    if on_change not in ON_CHANGE:
        raise UnpactError(f"on_change must be one of {ON_CHANGE}, got {on_change!r}")
    old = read_stamp(stamp_file)
    if exists() and old is not None:
        if old == stamp:
            return load()
        if on_change == "stop":
            raise StaleStageError(
                f"stage '{name}' in {stamp_file.parent} was made with other inputs ({'; '.join(changes(old, stamp))}); "
                "rerun with --on-change recompute, or choose another --out"
            )
    result = compute()
    atomic_write_json(stamp_file, stamp)
    return result
