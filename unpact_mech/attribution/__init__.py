"""Attribution methods, registered by name. Each returns the shared long table (see ``tables.py``).

Add a method: write a module with a function ``fn(subject, tprobes, **options) -> DataFrame`` and decorate it
with ``@register("name")``; import the module below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from unpact_mech.errors import UnknownNameError
from unpact_mech.models import Subject
from unpact_mech.probes import Probe, TokenizedProbe, check_unique_ids, tokenize_probes

AttributionFn = Callable[..., pd.DataFrame]
ATTRIBUTION_METHODS: dict[str, AttributionFn] = {}


def register(name: str) -> Callable[[AttributionFn], AttributionFn]:
    """Register an attribution function under ``name``."""

    def deco(fn: AttributionFn) -> AttributionFn:
        if name in ATTRIBUTION_METHODS:
            raise ValueError(f"attribution method '{name}' registered twice")
        ATTRIBUTION_METHODS[name] = fn
        return fn

    return deco


def attribute(
    subject: Subject, probes: Sequence[Probe | TokenizedProbe], method: str = "loo", fmt: str = "auto", **options: Any
) -> pd.DataFrame:
    """Run a registered attribution method on probes (raw or tokenised)."""
    if method not in ATTRIBUTION_METHODS:
        raise UnknownNameError(f"unknown attribution method '{method}'; available: {sorted(ATTRIBUTION_METHODS)}")
    check_unique_ids([p.probe if isinstance(p, TokenizedProbe) else p for p in probes])  # rows are keyed by id
    tps = [p if isinstance(p, TokenizedProbe) else None for p in probes]
    raw = [p for p in probes if isinstance(p, Probe)]
    tok = iter(tokenize_probes(subject, raw, fmt))
    tps = [tp if tp is not None else next(tok) for tp in tps]
    return ATTRIBUTION_METHODS[method](subject, tps, **options)


from unpact_mech.attribution import dla, gradient, loo  # noqa: E402,F401  (registers methods)

__all__ = ["ATTRIBUTION_METHODS", "attribute", "register"]
