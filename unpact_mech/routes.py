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

Routes (``RECOVERY_ROUTES``; add one with ``@register_route``):

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

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from unpact_mech.analysis import Analysis
from unpact_mech.backends.hf import HFBackend
from unpact_mech.criteria import check_criteria, criterion
from unpact_mech.errors import UnknownNameError, UnpactError, check_unique
from unpact_mech.findings import CRITERIA, judge, recovery
from unpact_mech.hooks import EMPHASIS_MODES
from unpact_mech.log import warn
from unpact_mech.probes import Probe, TokenizedProbe, tokenize_probes
from unpact_mech.registry import Registry
from unpact_mech.stats import newcombe, rate_columns, wilson
from unpact_mech.subject import Subject, wrap
from unpact_mech.unlearning import fit


@dataclass
class RouteContext:
    """What every route gets: the base :class:`Analysis`, the unlearned model, the forget probes, the control
    facts (``unknown``: candidates the base model does not know), disjoint data for relearning and few-shot
    prompts, the criteria, per-route options and a cache shared across calls (e.g. the quantised base)."""

    analysis: Analysis
    unlearned: Subject
    forget: list[TokenizedProbe]
    unknown: list[TokenizedProbe]
    retain: list[Probe]
    shots: list[Probe]
    criteria: tuple[str, ...] = CRITERIA
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)
    collateral: list[TokenizedProbe] = field(default_factory=list)

    def opt(self, route: str, name: str, default: Any) -> Any:
        return self.options.get(route, {}).get(name, default)

    def route_criteria(self, route: str) -> tuple[str, ...]:
        """The criteria a route is judged by: option ``criteria`` of that route, else all of ``criteria``."""
        return tuple(c for c in self.opt(route, "criteria", self.criteria) if c in self.criteria)

    def eligible(self, criterion: str) -> tuple[list[TokenizedProbe], list[TokenizedProbe]]:
        """(forget probes the base answers and the unlearned model does not, control facts neither answers)."""
        key = ("eligible", criterion, self.unlearned.name)
        if key not in self.cache:
            b = list(judge(self.analysis, self.forget, criterion).correct)
            u = list(judge(self.unlearned, self.forget, criterion).correct)
            ub = list(judge(self.analysis.base, self.unknown, criterion).correct) if self.unknown else []
            uu = list(judge(self.unlearned, self.unknown, criterion).correct) if self.unknown else []
            self.cache[key] = ([tp for tp, x, y in zip(self.forget, b, u) if x and not y],
                               [tp for tp, x, y in zip(self.unknown, ub, uu) if not x and not y])
        return self.cache[key]

    def collateral_lost(self, criterion: str) -> list[TokenizedProbe]:
        """Collateral-damage probes: ``collateral`` facts the base answers and the unlearned model does not."""
        key = ("collateral", criterion, self.unlearned.name)
        if key not in self.cache:
            b = _flags(self.analysis.base, self.collateral, criterion)
            u = _flags(self.unlearned, self.collateral, criterion)
            self.cache[key] = [tp for tp, x, y in zip(self.collateral, b, u) if x and not y]
        return self.cache[key]


RouteFn = Callable[[RouteContext], list[dict[str, Any]]]
RECOVERY_ROUTES: Registry[RouteFn] = Registry("recovery route")


def register_route(name: str) -> Callable[[RouteFn], RouteFn]:
    """Register a recovery route under ``name``: ``fn(ctx) -> rows`` built with :func:`route_row`."""
    return RECOVERY_ROUTES.decorator(name)


def route_row(route: str, treatment: str, criterion: str, recovered: Sequence[bool], control_kind: str,
              control: Sequence[bool], base_kept: Sequence[bool] | None = None) -> dict[str, Any]:
    """One table row from per-probe flags: recovered (eligible forget probes), control (unknown facts), base."""
    rec, ctl = wilson(sum(map(bool, recovered)), len(recovered)), wilson(sum(map(bool, control)), len(control))
    d, lo, hi = newcombe(rec, ctl) if rec.n and ctl.n else (float("nan"),) * 3
    row = {"route": route, "treatment": treatment, "criterion": criterion, "n": rec.n, **rate_columns("recovered", rec),
           "control_kind": control_kind, **rate_columns("control", ctl), "excess": d, "excess_low": lo,
           "excess_high": hi}
    kept = wilson(sum(map(bool, base_kept)), len(base_kept)) if base_kept is not None else None
    row.update(rate_columns("base_kept", kept))
    return row


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
            criteria: Sequence[str] = CRITERIA, options: dict[str, dict[str, Any]] | None = None,
            cache: dict[Any, Any] | None = None, progress: bool = False,
            collateral: Sequence[Probe] = ()) -> pd.DataFrame:
    """The "how superficial is the forgetting" table: one row per (route, treatment, criterion, control); see the
    module docstring for the columns. ``collateral``: general facts for the relearning route's collateral-damage
    control. ``cache`` may be shared across unlearned models (it keeps the quantised base)."""
    check_route_data(routes, forget, unknown, retain, shots, need_control=False, collateral=collateral)
    check_criteria(criteria, [*forget, *unknown])
    if not unknown and any(r != "emphasis" for r in routes):
        warn("[unpact] recovery routes: no control facts were given, so every excess over control is undefined "
             "(NaN)")
    ctx = RouteContext(base, unlearned, base.add(list(forget)), base.add(list(unknown)) if unknown else [],
                       list(retain), list(shots), tuple(criteria), options or {}, {} if cache is None else cache,
                       base.add(list(collateral)) if collateral else [])
    rows = []
    for name in tqdm(routes, desc="recovery routes", disable=not progress):
        t0 = time.perf_counter()
        rows += [{**r, "seconds": round(time.perf_counter() - t0, 1)} for r in RECOVERY_ROUTES[name](ctx)]
    out = pd.DataFrame(rows)
    out.insert(0, "model", unlearned.name)
    return base.annotate(out)


# ------------------------------------------------------------------------------------------------------------
# emphasis
# ------------------------------------------------------------------------------------------------------------
@register_route("emphasis")
def _emphasis(ctx: RouteContext) -> list[dict[str, Any]]:
    """Best over factors per emphasis route; control = random non-KeyTokens, paired per probe: the
    KeyToken-minus-random difference that :func:`~unpact_mech.findings.recovery` computed (its ``control`` table),
    reused, never recomputed. A precomputed :class:`~unpact_mech.findings.RecoveryResult` may be given as option
    ``result`` (its ``rates`` and ``control`` tables)."""
    res = ctx.opt("emphasis", "result", None)
    if res is None:
        res = recovery(ctx.analysis, ctx.unlearned, [tp.probe for tp in ctx.forget],
                       factors=ctx.opt("emphasis", "factors", (1.0, 2.0, 4.0, 8.0)),
                       routes=ctx.opt("emphasis", "routes", EMPHASIS_MODES), prompt_styles=(),
                       criteria=ctx.criteria, n_draws=ctx.opt("emphasis", "n_draws", 3))
    rows = []
    best = res.rates[res.rates.scope == "best"]
    control = res.control[res.control.scope == "best"].set_index(["criterion", "route"])
    for (crit, route), g in best.groupby(["criterion", "route"], sort=False):
        if crit not in ctx.route_criteria("emphasis"):
            continue
        k = g.set_index("condition")
        kt, rnd = k.loc["keytokens"], k.loc["random"]
        n = int(kt.n)
        c = control.loc[(crit, route)]
        rows.append({"route": "emphasis", "treatment": f"{route} (best factor)", "criterion": crit, "n": n,
                     **rate_columns("recovered", kt), "control_kind": "random tokens", **rate_columns("control", rnd),
                     "excess": c.vs_random_diff, "excess_low": c.vs_random_diff_low,
                     "excess_high": c.vs_random_diff_high, "base_kept": float("nan")})
    return rows


# ------------------------------------------------------------------------------------------------------------
# quantisation
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def quantize_rtn_(weight: torch.Tensor, bits: int, group_size: int = 64) -> torch.Tensor:
    """Round-trip a [out, in] weight through asymmetric b-bit RTN per (row, group of ``group_size`` columns), in
    place (formula in the module docstring). A last partial group is its own group."""
    if not 2 <= bits <= 16:
        raise UnpactError(f"quantisation bits must be in 2..16, got {bits}")
    qmax = 2**bits - 1
    for c0 in range(0, weight.shape[1], group_size):
        w = weight[:, c0 : c0 + group_size]
        lo, hi = w.amin(1, keepdim=True).clamp(max=0), w.amax(1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / qmax).clamp(min=1e-12)
        z = torch.round(-lo / s)
        w.copy_(s * (torch.clamp(torch.round(w / s) + z, 0, qmax) - z))
    return weight


BNB_BLOCKSIZE = 64  # Params4bit's default block size, which BitsAndBytesConfig keeps


def _bnb() -> Any:
    # bitsandbytes warns at import that its optional CPU matmul kernel package is absent; we only round-trip
    # weights, which does not use it, so that one logger is quieted for the import
    quiet = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as bnb_f
    except ImportError as err:  # a dependency; a broken install says how to mend it
        raise UnpactError(f"the bitsandbytes quantisers need bitsandbytes ({err}); pip install 'bitsandbytes>=0.50'"
                          ) from err
    finally:
        quiet.setLevel(level)
    return bnb_f


@torch.no_grad()
def quantize_bnb_(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """Round-trip a [out, in] weight through bitsandbytes' ``nf4``, ``fp4`` or ``int8`` format, in place (see the
    module docstring)."""
    f = _bnb()
    w = weight.float()
    if kind in ("nf4", "fp4"):
        q, state = f.quantize_4bit(w, blocksize=BNB_BLOCKSIZE, quant_type=kind)
        out = f.dequantize_4bit(q, state)
    elif kind == "int8":
        cb, scb, _ = f.int8_vectorwise_quant(w.half())  # Int8Params quantises the fp16 weight
        out = f.int8_vectorwise_dequant(cb, scb)
    else:
        raise UnpactError(f"unknown bitsandbytes format {kind!r}; use nf4, fp4 or int8")
    return weight.copy_(out.reshape(weight.shape).to(weight.dtype))


QUANTIZERS = {"rtn": "b-bit RTN, group of columns", "nf4": "bitsandbytes NF4, block 64",
              "fp4": "bitsandbytes FP4, block 64", "int8": "bitsandbytes LLM.int8 weights (row absmax)"}


def quantized_subject(subject: Subject, bits: int = 4, group_size: int = 64, quantizer: str = "rtn") -> Subject:
    """A fresh copy of ``subject``'s weights with every decoder-block linear layer round-tripped through
    ``quantizer`` (``rtn`` at ``bits`` / ``group_size``, or a bitsandbytes format)."""
    if quantizer not in QUANTIZERS:
        raise UnpactError(f"unknown quantizer {quantizer!r}; use {', '.join(QUANTIZERS)}")
    hf = subject.load_hf_model()
    for mod in hf.base_model.modules():
        if isinstance(mod, torch.nn.Linear):
            if quantizer == "rtn":
                quantize_rtn_(mod.weight.data, bits, group_size)
            else:
                quantize_bnb_(mod.weight.data, quantizer)
    tag = f"int{bits}" if quantizer == "rtn" else quantizer
    return wrap(hf, subject.tokenizer, f"{subject.name}@{tag}", subject.source, "hf").memoize()


def quantize_treatments(quantizers: Sequence[str], bits: Sequence[int], group_size: int) -> list[tuple[str, int, str]]:
    """(quantizer, bits, treatment label) per treatment: RTN once per bit width, each bitsandbytes format once."""
    out = []
    for q in quantizers:
        if q == "rtn":
            out += [("rtn", b, f"int{b} (RTN, group {group_size})") for b in bits]
        else:
            out.append((q, 4 if q in ("nf4", "fp4") else 8, QUANTIZERS[q]))
    return out


@register_route("quantize")
def _quantize(ctx: RouteContext) -> list[dict[str, Any]]:
    bits_list, gs = ctx.opt("quantize", "bits", (8, 4)), ctx.opt("quantize", "group_size", 64)
    rows = []
    for q, bits, label in quantize_treatments(ctx.opt("quantize", "quantizers", ("rtn",)), bits_list, gs):
        crits = ctx.route_criteria("quantize")
        # the quantised base's verdict on every forget probe, kept across unlearned models (not the model: one
        # fp32 copy per treatment held 0.5 GB each, and the eligible probes are a subset of these)
        key = ("quantized_base_flags", ctx.analysis.base.name, q, bits, gs, tuple(t.ids for t in ctx.forget), crits)
        if key not in ctx.cache:
            qb = quantized_subject(ctx.analysis.base, bits, gs, q)
            ctx.cache[key] = {c: dict(zip((t.ids for t in ctx.forget), _flags(qb, ctx.forget, c))) for c in crits}
            del qb
        qu = quantized_subject(ctx.unlearned, bits, gs, q)
        for crit in crits:
            elig, unk = ctx.eligible(crit)
            rows.append(route_row("quantize", label, crit, _flags(qu, elig, crit),
                                  "unknown facts", _flags(qu, unk, crit), [ctx.cache[key][crit][t.ids] for t in elig]))
        del qu
    return rows


def _flags(subject: Subject, tps: Sequence[TokenizedProbe], criterion: str) -> list[bool]:
    return list(judge(subject, tps, criterion).correct) if tps else []


# ------------------------------------------------------------------------------------------------------------
# relearning
# ------------------------------------------------------------------------------------------------------------
@register_route("relearn")
def _relearn(ctx: RouteContext) -> list[dict[str, Any]]:
    """k full-batch steps of mean answer-token NLL on the retain probes through the one trainer
    (:func:`unpact_mech.unlearning.fit`: AdamW, gradient clipping, NaN guards), evaluated at each k in ``steps``."""
    steps, lr = sorted(ctx.opt("relearn", "steps", (1, 2, 4))), float(ctx.opt("relearn", "lr", 1e-5))
    rows: list[dict[str, Any]] = []

    def evaluate(k: int, model: Any) -> None:
        if k not in steps:
            return
        # the model being trained, scored as it is now (no copy; eval mode, no grad)
        snap = wrap(model, ctx.unlearned.tokenizer, f"{ctx.unlearned.name}+relearn{k}", ctx.unlearned.source,
                    HFBackend(model)).memoize()
        for crit in ctx.route_criteria("relearn"):
            elig, unk = ctx.eligible(crit)
            treatment = f"{k} step{'s' * (k != 1)} on retain (lr {lr:g})"
            recovered = _flags(snap, elig, crit)
            rows.append(route_row("relearn", treatment, crit, recovered, "unknown facts", _flags(snap, unk, crit)))
            if ctx.collateral and criterion(crit).applies([tp.probe for tp in ctx.collateral]):
                rows.append(route_row("relearn", treatment, crit, recovered, "collateral damage",
                                      _flags(snap, ctx.collateral_lost(crit), crit)))

    fit(ctx.unlearned, ctx.retain, steps=max(steps), lr=lr, full_batch=True, check_every=1,
        seed=int(ctx.opt("relearn", "seed", 0)), fmt=ctx.analysis.probes.fmt, on_snapshot=evaluate,
        progress=bool(ctx.opt("relearn", "progress", False)))
    return rows


# ------------------------------------------------------------------------------------------------------------
# in-context
# ------------------------------------------------------------------------------------------------------------
def few_shot(probe: Probe, shots: Sequence[Probe]) -> Probe:
    """``probe`` with other facts' question/answer pairs before its question (same answer and fact)."""
    prefix = "".join(f"Question: {s.prompt}\nAnswer: {s.answer}\n\n" for s in shots)
    return dataclasses.replace(probe, id=f"{probe.id}@{len(shots)}shot", prompt=f"{prefix}Question: {probe.prompt}")


@register_route("in_context")
def _in_context(ctx: RouteContext) -> list[dict[str, Any]]:
    n = int(ctx.opt("in_context", "shots", 3))
    shots = ctx.shots[:n]
    if len(shots) < n:
        raise UnpactError(f"the in_context route needs {n} shot probes, got {len(shots)}")
    rows = []
    for crit in ctx.route_criteria("in_context"):
        elig, unk = ctx.eligible(crit)

        def treat(tps: Sequence[TokenizedProbe]) -> list[TokenizedProbe]:
            return tokenize_probes(ctx.unlearned, [few_shot(tp.probe, shots) for tp in tps], tps[0].format) if tps else []

        fe, fu = treat(elig), treat(unk)
        rows.append(route_row("in_context", f"{n}-shot (other facts)", crit, _flags(ctx.unlearned, fe, crit),
                              "unknown facts", _flags(ctx.unlearned, fu, crit), _flags(ctx.analysis.base, fe, crit)))
    return rows
