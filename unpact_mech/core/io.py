"""Atomic writes: write to a temporary file in the same directory, then rename over the target."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.core.errors import OutputError, UnpactError


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path`` (umask applied)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}; choose a writable location") from err
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; outputs follow the user's umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


TABLE_SUFFIXES = (".csv", ".parquet")


def check_output(path: str | Path, kind: str = "file", overwrite: bool = False, suffixes: tuple[str, ...] = (),
                 inputs: Sequence[str | Path] = ()) -> Path:
    """Check an output path before any work: allowed suffix, not one of the inputs, not already there (unless
    ``overwrite``), of the right kind (file or directory), and a writable parent."""
    path = Path(path)
    if suffixes and path.suffix not in suffixes:
        raise OutputError(f"output {path} must end in {' or '.join(suffixes)}")
    resolved = path.resolve()
    if any(Path(i).resolve() == resolved for i in inputs):
        raise OutputError(f"output {path} is also one of the inputs; write to another path")
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise OutputError(f"output {path} exists and is a file, not a directory; choose another path")
        if kind == "file" and path.is_dir():
            raise OutputError(f"output {path} is a directory; give a file path")
        if not overwrite:
            raise OutputError(f"output {path} exists; pass --overwrite (overwrite=True) to replace it")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {parent} is not writable; choose a writable location")
    return path


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (indent 2, non-JSON values as strings, NaN/inf as null: always valid JSON)."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) + "\n")


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV or parquet (by suffix) atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        return atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
    if path.suffix in (".csv", ""):
        return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    raise UnpactError(f"unsupported table format '{path.suffix}' for {path}: use .csv or .parquet")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    path = Path(path)
    if not path.is_file():
        raise UnpactError(f"table {path} does not exist")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # pandas/pyarrow raise many types for a damaged file
        raise UnpactError(f"cannot read table {path} ({type(err).__name__}: {err}); re-create it") from err
