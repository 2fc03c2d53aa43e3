"""Recovery routes: how superficial is the forgetting? Other ways than emphasis to bring the answer back.

Every route treats the unlearned model without the forget set and reports, per treatment and correctness
criterion, on the forget probes the base model answers and the unlearned one does not (``n`` eligible):

* ``recovered``: the treated unlearned model answers (k of n, Wilson interval);
* a **control** of what the treatment gives without forgotten knowledge (``control_*``):
  random non-KeyTokens for emphasis (same probes, paired); for the other routes, facts that *neither* model
  knew, under the same treatment of the unlearned model (a treatment that makes the model guess or learn
  answers shows up there);
* ``excess`` = recovered - control with a 95% interval (paired bootstrap for emphasis; Newcombe's hybrid score
  interval for the unpaired controls);
* ``base_kept``: the same treatment of the *base* model still answers (quantisation and few-shot prompts can
  change the base's own knowledge), where it applies.

Routes (``RECOVERY_ROUTES``; one module each, with its options dataclass holding its defaults; add one with ``@register_route(name, OptionsClass)``):

* ``emphasis``: the paper's FocusOnKey (:func:`unpact_mech.findings.recovery`), best over factors per route.
* ``quantize``: every linear layer of the decoder blocks round-tripped through a quantiser (``QUANTIZERS``;
  embeddings, final norm and LM head stay in float, as ``BitsAndBytesConfig`` and weight-only RTN baselines
  leave them):

  - ``rtn``: b-bit integers, asymmetric round-to-nearest per output channel in groups of ``group_size`` input
    columns: s = (max - min) / (2^b - 1), z = round(-min / s), w' = s (clamp(round(w / s) + z, 0, 2^b - 1) - z);
  - ``nf4`` / ``fp4``: bitsandbytes' 4-bit formats as ``BitsAndBytesConfig(load_in_4bit=True,
    bnb_4bit_quant_type=...)`` stores them (``Params4bit``: blocks of 64 consecutive weights, each scaled by its
    absmax and rounded to the nearest of 16 code values; no double quantisation), dequantised back
    (``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit``). This is the quantiser of Zhang et al.,
    "Catastrophic Failure of LLM Unlearning via Quantization" (ICLR 2025);
  - ``int8``: bitsandbytes' LLM.int8 weight format (``Int8Params``: per output row, w' = round(127 w / absmax)
    absmax / 127; ``int8_vectorwise_quant`` / ``int8_vectorwise_dequant``). LLM.int8's matmul also keeps
    activation outlier columns (|x| > 6) in 16-bit, which a weight round-trip cannot; this is its weights only.

  bitsandbytes 0.50's CPU 4-bit round trip departs from the flat-block definition when a row's length is not a
  multiple of 64 (blocks then span rows); every linear layer of SmolLM2 and Gemma-3 has in_features % 64 == 0.
* ``relearn``: k AdamW steps of next-token loss on retain facts (disjoint from the forget set); forget accuracy as
  a function of k. Besides the unknown-facts control it has a second one, **collateral damage**: general facts
  (``collateral``) the base answers and the unlearned model lost without being asked to forget them. If relearning
  brings forgotten facts back no faster than those, it restores the model, not specifically hidden forget
  knowledge.
* ``in_context``: the question preceded by ``shots`` other facts as question/answer pairs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from unpact_mech.analysis import Analysis
from unpact_mech.core.errors import UnknownNameError, UnpactError, check_unique
from unpact_mech.core.log import warn
from unpact_mech.evals.criteria import check_criteria
from unpact_mech.findings import CRITERIA
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe
from unpact_mech.routes.base import (
    RECOVERY_ROUTES,
    ROUTE_OPTIONS,
    RouteContext,
    RouteOptions,
    register_route,
    route_options,
    route_row,
)
from unpact_mech.routes.emphasis import EmphasisOptions
from unpact_mech.routes.in_context import InContextOptions, few_shot
from unpact_mech.routes.quantize import (
    QUANTIZERS,
    QuantizeOptions,
    quantize_bnb_,
    quantize_rtn_,
    quantize_treatments,
    quantized_subject,
)
from unpact_mech.routes.relearn import RelearnOptions

__all__ = ["QUANTIZERS", "RECOVERY_ROUTES", "ROUTE_OPTIONS", "EmphasisOptions", "InContextOptions", "QuantizeOptions",
           "RelearnOptions", "RouteContext", "RouteOptions", "check_route_data", "few_shot", "quantize_bnb_",
           "quantize_rtn_", "quantize_treatments", "quantized_subject", "recover", "register_route", "route_data",
           "route_row"]


def route_data(probes: Sequence[Probe], n: int, shots: int, n_control: int
               ) -> tuple[list[Probe], list[Probe], list[Probe], list[Probe]]:
    """(forget, retain, shots, control candidates) from one probe list by split: the first ``n`` forget and
    retain probes, the first ``shots`` general probes as few-shot examples and the next ``n_control`` as
    control candidates (disjoint by construction)."""
    by = {s: [p for p in probes if p.split == s] for s in ("forget", "retain", "general")}
    if not by["forget"]:
        raise UnpactError("no probes with split 'forget': the recovery routes test forget probes")
    return by["forget"][:n], by["retain"][:n], by["general"][:shots], by["general"][shots : shots + n_control]


def check_route_data(routes: Sequence[str], forget: Sequence[Probe], unknown: Sequence[Probe] = (),
                     retain: Sequence[Probe] = (), shots: Sequence[Probe] = (), need_control: bool = True,
                     collateral: Sequence[Probe] = ()) -> None:
    """Everything about the routes' data that needs no model: known, unrepeated routes; forget probes; data
    disjoint from the forget set; control facts apart from training data and shots; each route's own data; and
    (``need_control``) control facts for the routes that compare with them, without which their excess is NaN."""
    unknown_routes = [r for r in routes if r not in RECOVERY_ROUTES]
    if unknown_routes:
        raise UnknownNameError(f"unknown recovery route(s) {unknown_routes}; available: {sorted(RECOVERY_ROUTES)}")
    check_unique(list(routes), "routes")
    if not forget:
        raise UnpactError("no forget probes: the recovery routes test forget probes")
    forget_ids = {p.id for p in forget}
    overlap = sorted(forget_ids & {p.id for p in [*retain, *shots, *unknown, *collateral]})
    if overlap:
        raise UnpactError(f"recovery-route data must be disjoint from the forget set; shared probes: {overlap[:5]}")
    overlap = sorted({p.id for p in unknown} & {p.id for p in [*retain, *shots]})
    if overlap:
        raise UnpactError(f"control facts must not be trained on or shown as shots; shared probes: {overlap[:5]}")
    overlap = sorted({p.id for p in collateral} & {p.id for p in [*retain, *shots]})
    if overlap:  # (they may be the unknown-control candidates: the base knows one kind and not the other)
        raise UnpactError(f"collateral-damage facts must not be trained on or shown as shots; shared probes: "
                          f"{overlap[:5]}")
    if "relearn" in routes and not retain:
        raise UnpactError("the relearn route needs retain probes (data disjoint from the forget set)")
    if "in_context" in routes and not shots:
        raise UnpactError("the in_context route needs shot probes (other facts for the few-shot prompt)")
    needs_control = [r for r in routes if r != "emphasis"]
    if needs_control and not unknown and need_control:
        raise UnpactError(f"the {', '.join(needs_control)} route(s) compare with control facts (general probes after "
                          "the shots, which the base does not know), and there are none: add general probes")



def recover(base: Analysis, unlearned: Subject, forget: Sequence[Probe], unknown: Sequence[Probe] = (),
            retain: Sequence[Probe] = (), shots: Sequence[Probe] = (), routes: Sequence[str] = ("emphasis",),
            criteria: Sequence[str] = CRITERIA,
            options: Mapping[str, RouteOptions | Mapping[str, Any]] | None = None,
            cache: dict[Any, Any] | None = None, progress: bool = False,
            collateral: Sequence[Probe] = ()) -> pd.DataFrame:
    """The "how superficial is the forgetting" table: one row per (route, treatment, criterion, control); see the
    module docstring for the columns. ``options``: per route, its options dataclass (or a mapping of its fields). ``collateral``: general facts for the relearning route's collateral-damage
    control. ``cache`` may be shared across unlearned models (it keeps the quantised base)."""
    check_route_data(routes, forget, unknown, retain, shots, need_control=False, collateral=collateral)
    typed = route_options(options, routes)
    check_criteria(criteria, [*forget, *unknown])
    if not unknown and any(r != "emphasis" for r in routes):
        warn("[unpact] recovery routes: no control facts were given, so every excess over control is undefined "
             "(NaN)")
    ctx = RouteContext(base, unlearned, base.add(list(forget)), base.add(list(unknown)) if unknown else [],
                       list(retain), list(shots), tuple(criteria), typed, {} if cache is None else cache,
                       base.add(list(collateral)) if collateral else [])
    rows = []
    for name in tqdm(routes, desc="recovery routes", disable=not progress):
        t0 = time.perf_counter()
        rows += [{**r, "seconds": round(time.perf_counter() - t0, 1)} for r in RECOVERY_ROUTES[name](ctx)]
    out = pd.DataFrame(rows)
    out.insert(0, "model", unlearned.name)
    return base.annotate(out)
