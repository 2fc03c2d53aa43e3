"""Atomic writes: write to a temporary file in the same directory, then rename over the target."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``."""
    return _atomic(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (indent 2, non-JSON values as strings)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV or parquet (by suffix) atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        return _atomic(path, lambda tmp: df.to_parquet(tmp, index=False))
    if path.suffix in (".csv", ""):
        return _atomic(path, lambda tmp: df.to_csv(tmp, index=False))
    raise ValueError(f"unsupported table format '{path.suffix}' for {path}: use .csv or .parquet")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
