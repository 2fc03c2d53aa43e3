"""The ``in_context`` route: the question preceded by ``shots`` other facts as question/answer pairs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from unpact_mech.core.errors import UnpactError
from unpact_mech.probes import Probe, TokenizedProbe, tokenize_probes
from unpact_mech.routes.base import RouteContext, RouteOptions, flags, register_route, route_row


@dataclass(frozen=True)
class InContextOptions(RouteOptions):
    """``shots``: how many other facts precede the question."""

    shots: int = 3


def few_shot(probe: Probe, shots: Sequence[Probe]) -> Probe:
    """``probe`` with other facts' question/answer pairs before its question (same answer and fact)."""
    prefix = "".join(f"Question: {s.prompt}\nAnswer: {s.answer}\n\n" for s in shots)
    return dataclasses.replace(probe, id=f"{probe.id}@{len(shots)}shot", prompt=f"{prefix}Question: {probe.prompt}")


@register_route("in_context", InContextOptions)
def _in_context(ctx: RouteContext) -> list[dict[str, Any]]:
    n = int(ctx.opts("in_context", InContextOptions).shots)
    shots = ctx.shots[:n]
    if len(shots) < n:
        raise UnpactError(f"the in_context route needs {n} shot probes, got {len(shots)}")
    rows = []
    for crit in ctx.route_criteria("in_context"):
        elig, unk = ctx.eligible(crit)

        def treat(tps: Sequence[TokenizedProbe]) -> list[TokenizedProbe]:
            return tokenize_probes(ctx.unlearned, [few_shot(tp.probe, shots) for tp in tps], tps[0].format) if tps else []

        fe, fu = treat(elig), treat(unk)
        rows.append(route_row("in_context", f"{n}-shot (other facts)", crit, flags(ctx.unlearned, fe, crit),
                              "unknown facts", flags(ctx.unlearned, fu, crit), flags(ctx.analysis.base, fe, crit)))
    return rows
