"""The one long table shape every attribution method returns (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

COLUMNS = ["probe_id", "model", "method", "position", "token", "layer", "head", "component", "score"]
_DTYPES = {
    "probe_id": "string",
    "model": "string",
    "method": "string",
    "position": "Int64",
    "token": "string",
    "layer": "Int64",
    "head": "Int64",
    "component": "string",
    "score": "float64",
}


def make_table(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Build an attribution table: the shared columns in order, missing ones empty, fixed dtypes."""
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in df:
            df[col] = pd.NA
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].astype(_DTYPES)
