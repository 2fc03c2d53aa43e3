"""The ``quantize`` route: every linear layer of the decoder blocks round-tripped through a quantiser (RTN, or
bitsandbytes' NF4 / FP4 / LLM.int8 weight formats; formulas in :mod:`unpact_mech.routes`), judged against the
same quantisation of the base (``base_kept``) and on facts neither model knew (the control)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unpact_mech.core.errors import UnpactError
from unpact_mech.model.subject import Subject, wrap
from unpact_mech.routes.base import RouteContext, RouteOptions, flags, register_route, route_row


@dataclass(frozen=True)
class QuantizeOptions(RouteOptions):
    """``quantizers``: names in ``QUANTIZERS``; ``bits``: RTN bit widths; ``group_size``: RTN's group of input
    columns."""

    quantizers: tuple[str, ...] = ("rtn", "nf4")
    bits: tuple[int, ...] = (8, 4)
    group_size: int = 64


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


@register_route("quantize", QuantizeOptions)
def _quantize(ctx: RouteContext) -> list[dict[str, Any]]:
    o = ctx.opts("quantize", QuantizeOptions)
    gs = o.group_size
    rows = []
    for q, bits, label in quantize_treatments(o.quantizers, o.bits, gs):
        crits = ctx.route_criteria("quantize")
        # the quantised base's verdict on every forget probe, kept across unlearned models (not the model: one
        # fp32 copy per treatment held 0.5 GB each, and the eligible probes are a subset of these)
        key = ("quantized_base_flags", ctx.analysis.base.name, q, bits, gs, tuple(t.ids for t in ctx.forget), crits)
        if key not in ctx.cache:
            qb = quantized_subject(ctx.analysis.base, bits, gs, q)
            ctx.cache[key] = {c: dict(zip((t.ids for t in ctx.forget), flags(qb, ctx.forget, c))) for c in crits}
            del qb
        qu = quantized_subject(ctx.unlearned, bits, gs, q)
        for crit in crits:
            elig, unk = ctx.eligible(crit)
            rows.append(route_row("quantize", label, crit, flags(qu, elig, crit),
                                  "unknown facts", flags(qu, unk, crit), [ctx.cache[key][crit][t.ids] for t in elig]))
        del qu
    return rows

