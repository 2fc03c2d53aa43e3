"""A study's results on disk, typed: one :class:`MethodResult` per method (its summary row and its tables), and
the :class:`StudyResult` of a run. Each owns its file names, so the stages that write them and the report that
reads them share one list (``METHOD_TABLES``) instead of strings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write_json, read_table, write_table

# a method's tables, OUT/METHOD/NAME.csv: what each holds
METHOD_TABLES: dict[str, str] = {
    "keyword_focus": "finding 1 per forget probe: LP, focus on KeyTokens and KeyToken overlap, base vs unlearned",
    "retain_focus": "the same on the retain probes",
    "destruction": "finding 3: destructive rates per split and criterion",
    "emphasis_sweep": "finding 2 per probe, emphasis mode, factor, condition (KeyTokens, random, function words)",
    "recovery_rates": "finding 2's rates per criterion, mode and factor, and the best factor",
    "recovery_control": "KeyTokens minus random tokens, paired per probe: difference, interval, p",
    "eligibility": "which forget probes the base answers and the unlearned model does not, per criterion",
    "forget_answers": "the unlearned model's answers to the forget probes (teacher forced and generated)",
    "function_words": "the change of each prompt word's contribution by kind (KeyToken, content, function word)",
    "frontier": "forget accuracy against retained knowledge along the unlearning trajectory",
    "heads": "per-head direct logit attribution, base and unlearned",
    "keytoken_route": "the same restricted to attention paths from the KeyTokens",
    "logit_lens": "the answer's log-prob read after each layer",
    "patch_positions": "activation patching restoration per layer and position (the first method only)",
    "recovery_routes": "how superficial the forgetting is: each recovery route against its control",
}
RESULT_FILE = "result.json"  # a method's summary row


def table_path(out: str | Path, method: str, name: str) -> Path:
    """``OUT/METHOD/NAME.csv`` of a known table name (a misspelt one is refused, naming the known ones)."""
    if name not in METHOD_TABLES:
        raise UnpactError(f"unknown result table {name!r}; tables are {', '.join(METHOD_TABLES)}")
    return Path(out) / method / f"{name}.csv"


@dataclass
class MethodResult:
    """One method's results: its summary ``row`` (``OUT/METHOD/result.json``) and its tables, read from ``out``
    on first use and cached."""

    method: str
    out: Path
    row: dict[str, Any] = field(default_factory=dict)
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def has(self, name: str) -> bool:
        return name in self._tables or table_path(self.out, self.method, name).exists()

    def table(self, name: str) -> pd.DataFrame:
        """The table ``name`` (one of ``METHOD_TABLES``)."""
        if name not in self._tables:
            f = table_path(self.out, self.method, name)
            if not f.exists():
                raise UnpactError(f"{self.method} has no {name} table ({f} does not exist): the stage that writes "
                                  "it has not run (patch_positions: the first method only)")
            self._tables[name] = read_table(f)
        return self._tables[name]

    def put(self, name: str, table: pd.DataFrame) -> Path:
        """Write one table (atomically) and keep it."""
        f = write_table(table, table_path(self.out, self.method, name))
        self._tables[name] = table
        return f

    def save(self, tables: Mapping[str, pd.DataFrame] | None = None) -> Path:
        """Write ``tables`` and then the summary row (last: a present ``result.json`` means a finished method)."""
        for name, t in (tables or {}).items():
            self.put(name, t)
        return atomic_write_json(self.out / self.method / RESULT_FILE, self.row)

    @classmethod
    def load(cls, out: str | Path, method: str) -> MethodResult:
        f = Path(out) / method / RESULT_FILE
        if not f.is_file():
            raise UnpactError(f"no results of method {method!r} in {out} ({f} does not exist)")
        return cls(method, Path(out), json.loads(f.read_text()))


@dataclass
class StudyResult:
    """A study run: its summary table (one row per method and criterion), each method's results and the report."""

    out: Path
    summary: pd.DataFrame
    methods: dict[str, MethodResult]
    report: Path

    def __getitem__(self, method: str) -> MethodResult:
        if method not in self.methods:
            raise UnpactError(f"no method {method!r} in this study; methods: {', '.join(self.methods)}")
        return self.methods[method]

    @classmethod
    def load(cls, out: str | Path, methods: list[str] | None = None) -> StudyResult:
        """The results a finished study left in ``out`` (its methods from the summary table unless given)."""
        out = Path(out)
        if not (out / "summary.csv").is_file():
            raise UnpactError(f"{out} holds no finished study (no summary.csv)")
        summary = read_table(out / "summary.csv")
        names = methods if methods is not None else list(dict.fromkeys(summary["method"]))
        return cls(out, summary, {m: MethodResult.load(out, m) for m in names}, out / "report.html")
