"""The attribution-method registry: ``@register("name", level=...)``; each method returns the shared long table.

``level`` says what a table's rows attribute to: ``"token"`` (prompt tokens: leave-one-out, gradients; KeyTokens
are selected among them) or ``"component"`` (heads, MLPs, embeddings: DLA, attention paths).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from unpact_mech.core.registry import Registry
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, TokenizedProbe, check_unique_ids, tokenize_probes

AttributionFn = Callable[..., pd.DataFrame]
LEVELS = ("token", "component")


@dataclass(frozen=True)
class AttributionMethod:
    name: str
    fn: AttributionFn
    level: str


ATTRIBUTION_METHODS: Registry[AttributionMethod] = Registry("attribution method")


def register(name: str, level: str = "token") -> Callable[[AttributionFn], AttributionFn]:
    """Register an attribution function ``fn(subject, tprobes, **options) -> DataFrame`` under ``name``."""
    if level not in LEVELS:
        raise ValueError(f"attribution level must be one of {LEVELS}, got {level!r}")

    return ATTRIBUTION_METHODS.decorator(name, lambda fn: AttributionMethod(name, fn, level))


def method_info(method: str) -> AttributionMethod:
    return ATTRIBUTION_METHODS[method]


def attribute(
    subject: Subject, probes: Sequence[Probe | TokenizedProbe], method: str = "loo", fmt: str = "auto", **options: Any
) -> pd.DataFrame:
    """Run a registered attribution method on probes (raw or tokenised)."""
    info = method_info(method)
    check_unique_ids([p.probe if isinstance(p, TokenizedProbe) else p for p in probes])  # rows are keyed by id
    tps = [p if isinstance(p, TokenizedProbe) else None for p in probes]
    raw = [p for p in probes if isinstance(p, Probe)]
    tok = iter(tokenize_probes(subject, raw, fmt))
    tps = [tp if tp is not None else next(tok) for tp in tps]
    return info.fn(subject, tps, **options)
