"""What a run will cost, from the models' config.json and the tokenized inputs alone: passes, FLOPs, peak memory,
disk and time, before any weight loads (``unpact ... --plan``; the up-front memory refusal of every command).

Memory, with W the bytes of one copy of the weights (:class:`~unpact_mech.model.shape.ModelShape`), is

    peak = baseline + max over steps (copies x W + activations),

* ``baseline``: the Python process with torch, transformers and TransformerLens imported (:data:`BASELINE_BYTES`,
  measured on the CPU; not on a GPU), and the model's tokenizer, ``TOKENIZER_ENTRY_BYTES x V`` (measured: 46 MiB
  for SmolLM2's 49,152 entries, 322 MiB for Gemma-3's 262,144);
* ``copies``: the weight copies a step holds at once (the budget of ``docs/running-big.md``);
* activations of a forward over ``rows`` sequences of ``new`` positions attending to ``keys`` positions, in the
  toolkit's eager attention, with ``R`` positions unembedded and ``C`` positions of KV cache held:

      A = rows new (LIN_COPIES (d + f) b)  +  SCORE_COPIES rows H new keys 4  +  R V (b + 16)  +  C kv,

  (the float32 score matrix and its softmax; the answer logits and their float64 log-softmax; kv = 2 L G e b).
  ``LIN_COPIES`` and ``SCORE_COPIES`` were read off plain transformers forwards of SmolLM2 at 256..4,096 tokens
  (``benchmarks/bench_plan.py``); the other terms are counted.

FLOPs are :meth:`ModelShape.forward_flops` per pass (x2 with a backward to the inputs, x3 with weight
gradients). Time is FLOPs at a matmul rate, attention
score elements at an elementwise rate, and a fixed cost per model call, each rate timed on this machine in about
0.8 s (:mod:`unpact_mech.runtime.speed`).
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from accelerate.utils import convert_file_size_to_int

from unpact_mech.attribution.loo import LONG_SPAN, QUERY_CHUNK, REUSE_CHUNK
from unpact_mech.core.errors import UnpactError
from unpact_mech.core.meter import mapped_bytes, rss_bytes
from unpact_mech.model.shape import DTYPE_BYTES, ModelShape, dtype_bytes
from unpact_mech.runtime.speed import Rates
from unpact_mech.scoring import GEN_EXTRA_TOKENS

GB = 1e9
BASELINE_BYTES = int(0.55 * GB)  # RSS of `import unpact_mech` + torch + transformers + TransformerLens (CPU, measured)
TOKENIZER_ENTRY_BYTES = 1300  # resident bytes per vocabulary entry of a loaded fast tokenizer (988-1,288 measured)
LIN_COPIES = 12  # (d + f)-wide per-token buffers alive at a forward's peak, allocator slack included (measured)
SCORE_COPIES = 2.5  # float32 score-sized buffers alive at eager attention's peak (scores, mask sum, softmax; measured)
LOGIT_BYTES = 16  # per unembedded logit beyond the model dtype: the float64 log-softmax and its exp


@dataclass(frozen=True)
class Step:
    """One kind of work in a run: its passes, token positions computed, FLOPs, the weight copies alive and the
    activations of its largest batch (bytes)."""

    what: str
    passes: int
    tokens: int
    flops: float
    copies: float
    activations: int
    generated: int = 0
    disk: int = 0
    scores: float = 0.0  # attention score elements computed, all layers and heads (eager softmax, mask, scale)
    forwards: int = 0  # model calls (each pays a fixed per-layer overhead)

    def seconds(self, rates: Rates) -> float:
        """FLOPs at the matmul rate + score elements at the elementwise rate + a fixed cost per model call."""
        return self.flops / rates.matmul + self.scores * rates.score_seconds + self.forwards * rates.call_seconds

    def peak(self, weight_bytes: int) -> int:
        return int(self.copies * weight_bytes + self.activations)


def activations(shape: ModelShape, dtype: str, rows: int, new: int, keys: int, unembedded: int = 0,
                cached: int = 0) -> int:
    """A: the activation bytes of one forward (module docstring)."""
    b = dtype_bytes(dtype)
    lin = rows * new * LIN_COPIES * (shape.d_model + shape.d_mlp) * b
    scores = SCORE_COPIES * rows * shape.n_heads * new * keys * 4
    logits = unembedded * shape.vocab * (b + LOGIT_BYTES)
    return int(lin + scores + logits + cached * shape.kv_bytes_per_token(dtype))


@dataclass(frozen=True)
class Length:
    """A tokenized probe's lengths: ``prompt`` positions (``attributable`` of them can be deleted, from
    ``first`` on) and ``answer`` positions."""

    prompt: int
    answer: int
    attributable: int
    first: int = 0
    id: str = ""

    @property
    def total(self) -> int:
        return self.prompt + self.answer

    @classmethod
    def of(cls, tp: Any) -> Length:
        """The lengths of a :class:`~unpact_mech.probes.TokenizedProbe`."""
        att = tuple(tp.attributable)
        return cls(tp.prompt_len, tp.n_answer, len(att), min(att) if att else tp.prompt_len, str(tp.probe.id))


def load_step(shape: ModelShape, dtype: str, file_dtype: str | None = None) -> Step:
    """Loading the weights: safetensors are mapped, so a checkpoint stored in the dtype asked for costs one copy;
    one stored in another dtype is held (its pages mapped) while its converted copy is made: 1 + b_file / b."""
    stored = (file_dtype or "").replace("torch.", "")
    extra = dtype_bytes(stored) / dtype_bytes(dtype) if stored in DTYPE_BYTES and stored != dtype else 0.0
    return Step("load", 0, 0, 0.0, 1 + extra, 0)


def _scores(shape: ModelShape, rows: int, new: int, keys: int) -> float:
    return float(shape.n_layers * shape.n_heads * rows * new * keys)


def beyond_window(shape: ModelShape, length: int) -> bool:
    """Whether sequences this long outgrow the model's sliding attention window, where scoring and generation take
    the exact path through the backend (``model.backends.fast_path``): logits at every position, and generation
    recomputing the whole sequence for each new token."""
    return bool(shape.sliding_window) and length > shape.sliding_window


def score_step(shape: ModelShape, dtype: str, lengths: Sequence[Length], copies: float = 1,
               batch_tokens: int = 4096, what: str = "scoring", repeat: int = 1) -> Step:
    """Teacher-forced scoring of every probe ``repeat`` times (batches of at most ``batch_tokens`` tokens)."""
    longest = max(x.total for x in lengths)
    exact = beyond_window(shape, longest)
    rows = max(1, min(len(lengths) * repeat, batch_tokens // longest))
    flops = repeat * sum(shape.forward_flops(x.total, unembedded=x.total if exact else x.answer) for x in lengths)
    act = activations(shape, dtype, rows, longest, longest, rows * max(x.answer for x in lengths))
    if exact:  # the backend's forward returns logits at every position
        act += rows * longest * shape.vocab * dtype_bytes(dtype)
    return Step(what, len(lengths) * repeat, repeat * sum(x.total for x in lengths), flops, copies, act,
                scores=repeat * sum(_scores(shape, 1, x.total, x.total) for x in lengths),
                forwards=-(-len(lengths) * repeat // rows))


def loo_step(shape: ModelShape, dtype: str, lengths: Sequence[Length], copies: float = 1,
             batch_tokens: int = 4096) -> Step:
    """Leave-one-out as :mod:`unpact_mech.attribution.loo` runs it. Probes with fewer than ``LONG_SPAN``
    attributable tokens run together: every probe and its deletions, remainders after the shared prefix, in
    batches of ``batch_tokens // longest`` rows on copies of the prefix's cache. A longer probe reuses the
    original's cache before each chunk of ``REUSE_CHUNK`` deletions and runs ``QUERY_CHUNK`` positions at a time."""
    passes = tokens = forwards = 0
    flops = scores = 0.0
    act = 0
    short = [x for x in lengths if x.attributable < LONG_SPAN]
    if short:
        width = max(x.total for x in short)
        first = min(x.first for x in short)
        seqs = sum(x.attributable + 1 for x in short)
        rows = min(seqs, max(1, batch_tokens // width))
        for x in short:
            n, w = x.attributable + 1, x.total - x.first
            passes += n
            tokens += n * w
            flops += n * shape.forward_flops(w, keys=x.total, unembedded=x.answer)
            scores += _scores(shape, n, w, x.total)
        forwards += -(-seqs // rows) + 1
        act = activations(shape, dtype, rows, width - first, width, rows * max(x.answer for x in short),
                          cached=first * (rows + 1))
    for x in (x for x in lengths if x.attributable >= LONG_SPAN):
        t, m = x.total, x.answer
        passes += x.attributable + 1
        rows = max(1, min(REUSE_CHUNK, batch_tokens // max(1, t)))
        for g in range(x.first, x.first + x.attributable, rows):  # each group recomputes from its first position
            n, w = min(rows, x.first + x.attributable - g), t - g - 1
            tokens += n * w
            flops += n * shape.forward_flops(w, keys=t, unembedded=m)
            scores += _scores(shape, n, w, t)
            forwards += -(-w // QUERY_CHUNK) + 1
        tokens += t
        flops += shape.forward_flops(t, keys=t, unembedded=m)
        scores += _scores(shape, 1, t, t)
        forwards += -(-t // QUERY_CHUNK)
        q = min(QUERY_CHUNK, t)
        act = max(act, activations(shape, dtype, rows, q, t, rows * m, cached=t * (rows + 1)))
    return Step("leave-one-out", passes, tokens, flops, copies, act, scores=scores, forwards=forwards)


def generate_step(shape: ModelShape, dtype: str, lengths: Sequence[Length], new_tokens: int | None = None,
                  copies: float = 1, repeat: int = 1) -> Step:
    """Greedy generation on a KV cache, ``repeat`` times per probe: the prompt's prefill, then one position per
    new token (default: the gold answer's length + ``GEN_EXTRA_TOKENS``)."""
    flops = scores = 0.0
    act = gen = tokens = forwards = 0
    news = [x.answer + GEN_EXTRA_TOKENS if new_tokens is None else new_tokens for x in lengths]
    exact = beyond_window(shape, max(x.prompt + n for x, n in zip(lengths, news)))
    for x, n in zip(lengths, news):
        gen += n
        if exact:  # the exact loop: every new token reruns the whole sequence, no cache
            tokens += sum(x.prompt + i for i in range(n))
            forwards += n
            flops += sum(shape.forward_flops(x.prompt + i, unembedded=x.prompt + i) for i in range(n))
            scores += sum(_scores(shape, 1, x.prompt + i, x.prompt + i) for i in range(n))
            act = max(act, activations(shape, dtype, 1, x.prompt + n, x.prompt + n, 0)
                      + (x.prompt + n) * shape.vocab * dtype_bytes(dtype))
            continue
        tokens += x.prompt + n
        forwards += 1 + n
        flops += shape.forward_flops(x.prompt, unembedded=1)
        flops += sum(shape.forward_flops(1, keys=x.prompt + i, unembedded=1) for i in range(n))
        scores += _scores(shape, 1, x.prompt, x.prompt) + _scores(shape, 1, n, x.prompt + n)
        act = max(act, activations(shape, dtype, 1, x.prompt, x.prompt, 1, cached=x.prompt + n))
    return Step("generation", len(lengths) * repeat, repeat * tokens, repeat * flops, copies, act,
                generated=repeat * gen, scores=repeat * scores, forwards=repeat * forwards)


SAVED_LIN = 3  # (d + f)-wide values per token and layer kept for a backward (measured with the score copies)
SAVED_SCORES = 2  # score-sized float32 buffers per layer kept for a backward (the softmax's input and output)


def _saved(shape: ModelShape, dtype: str, rows: int, t: int) -> int:
    """What a backward needs kept from the forward, all layers: SAVED_LIN (d + f) b T + SAVED_SCORES H T^2 4."""
    per_layer = rows * t * SAVED_LIN * (shape.d_model + shape.d_mlp) * dtype_bytes(dtype)
    return int(shape.n_layers * (per_layer + SAVED_SCORES * rows * shape.n_heads * t * t * 4))


def backward_step(shape: ModelShape, dtype: str, lengths: Sequence[Length], passes_per_probe: int = 1,
                  copies: float = 1, what: str = "gradients") -> Step:
    """Forward and backward passes to the inputs (the weights are frozen, so the backward computes no weight
    gradients: 2x a forward's FLOPs, twice its score elements), the forward's saved activations held for it."""
    longest = max(x.total for x in lengths)
    flops = sum(2 * shape.forward_flops(x.total, unembedded=x.answer) for x in lengths) * passes_per_probe
    act = _saved(shape, dtype, 1, longest) + activations(shape, dtype, 1, longest, longest,
                                                        max(x.answer for x in lengths))
    n = len(lengths) * passes_per_probe
    return Step(what, n, sum(x.total for x in lengths) * passes_per_probe, flops, copies, act,
                scores=2 * passes_per_probe * sum(_scores(shape, 1, x.total, x.total) for x in lengths), forwards=2 * n)


def cache_step(shape: ModelShape, dtype: str, lengths: Sequence[Length], copies: float = 1,
               what: str = "activation cache") -> Step:
    """One forward with every layer's activations cached (direct logit attribution, paths, patching): per layer
    the residual stream, attention and MLP outputs (6 d), q, k, v, z (4 H e), MLP pre and post (2 f) and the
    pattern and scores (2 H T) per position."""
    b = dtype_bytes(dtype)
    longest = max(x.total for x in lengths)
    per_pos = 6 * shape.d_model + 4 * shape.n_heads * shape.head_dim + 2 * shape.d_mlp + 2 * shape.n_heads * longest
    cached = shape.n_layers * longest * per_pos * b
    flops = sum(shape.forward_flops(x.total, unembedded=x.answer) for x in lengths)
    act = cached + activations(shape, dtype, 1, longest, longest, max(x.answer for x in lengths))
    return Step(what, len(lengths), sum(x.total for x in lengths), flops, copies, act,
                scores=sum(_scores(shape, 1, x.total, x.total) for x in lengths), forwards=len(lengths))


def train_step(shape: ModelShape, dtype: str, lengths: Sequence[Length], steps: int, batch_size: int,
               reference_copy: bool, master_weights: bool = False, trainable: float = 1.0,
               what: str = "unlearning", held: int = 1, checkpoint: bool = True) -> Step:
    """Unlearning (or relearning) with AdamW: the ``held`` models loaded beside it (unlearning: the base;
    relearning: base and unlearned), the trainable copy, a reference copy where the method needs the starting
    weights (``reference_copy``), gradients and two AdamW states per trainable weight (float32 masters: three
    float32 values per trainable weight instead of two in the model's dtype), and a batch's saved activations.
    With ``checkpoint`` the result is written once, in the model's dtype."""
    b = dtype_bytes(dtype)
    optim = (3 * 4 / b) if master_weights and b < 4 else 2.0
    copies = held + 1 + (1 if reference_copy else 0) + trainable * (1 + optim)
    longest, m = max(x.total for x in lengths), max(x.answer for x in lengths)
    act = _saved(shape, dtype, batch_size, longest) + activations(shape, dtype, batch_size, longest, longest,
                                                                  batch_size * m)
    flops = 3.0 * steps * batch_size * shape.forward_flops(longest, unembedded=m)
    return Step(what, steps, steps * batch_size * longest, flops, copies, act,
                disk=shape.weight_bytes(dtype) if checkpoint else 0,
                scores=2 * steps * _scores(shape, batch_size, longest, longest), forwards=2 * steps)


@dataclass
class Plan:
    """The steps of a run on one model shape: peak memory, FLOPs, disk, and time at a matmul rate."""

    command: str
    shape: ModelShape
    dtype: str
    steps: list[Step] = field(default_factory=list)
    libraries: int = BASELINE_BYTES

    @property
    def baseline(self) -> int:
        """What the process holds before any weights: the libraries and one tokenizer."""
        return self.libraries + TOKENIZER_ENTRY_BYTES * self.shape.vocab

    @property
    def weight_bytes(self) -> int:
        return self.shape.weight_bytes(self.dtype)

    @property
    def peak(self) -> int:
        return self.baseline + max((s.peak(self.weight_bytes) for s in self.steps), default=0)

    @property
    def worst(self) -> Step:
        return max(self.steps, key=lambda s: s.peak(self.weight_bytes))

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.steps)

    def seconds(self, rates: Rates) -> float:
        return sum(s.seconds(rates) for s in self.steps)

    def table(self, rates: Rates | None = None) -> pd.DataFrame:
        """One row per step: passes, tokens, generated tokens, weight copies, activations, peak, FLOPs, disk and
        seconds at ``rates``."""
        w = self.weight_bytes
        rows = [{"step": s.what, "passes": s.passes, "tokens": s.tokens, "generated": s.generated,
                 "weight_copies": round(s.copies, 2), "activations_gb": round(s.activations / GB, 3),
                 "peak_gb": round((self.baseline + s.peak(w)) / GB, 3), "tflops": round(s.flops / 1e12, 4),
                 "disk_gb": round(s.disk / GB, 3),
                 "seconds": round(s.seconds(rates), 1) if rates else None} for s in self.steps]
        return pd.DataFrame(rows)

    def describe(self) -> str:
        s = self.worst
        return (f"{self.peak / GB:.1f} GB at its peak ({s.what}: {s.copies:g} weight copies of "
                f"{self.weight_bytes / GB:.2f} GB in {self.dtype}, {s.activations / GB:.2f} GB of activations, "
                f"{self.baseline / GB:.2f} GB of libraries and tokenizer)")


def available_memory(device: str | None = None, max_memory: dict[Any, str] | None = None) -> tuple[int, str] | None:
    """The memory a run may use and where that figure comes from: ``--max-memory``'s entries summed, the free
    memory of a CUDA device, or the CPU's MemAvailable plus this process's own resident memory (less, where an
    address-space limit leaves less). None where it cannot be read."""
    if max_memory:
        return sum(convert_file_size_to_int(v) for v in max_memory.values()), "--max-memory"
    if device and str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free on {device}"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        got = int(info["MemAvailable"].split()[0]) * 1024 + rss_bytes(), "available on this machine"
    except (OSError, KeyError, ValueError):
        return None
    cap = _address_space_cap()
    return cap if cap is not None and cap[0] < got[0] else got


def _address_space_cap() -> tuple[int, str] | None:
    """The resident memory an address-space limit (``ulimit -v``, ``setrlimit(RLIMIT_AS)``) leaves: the limit less
    what is mapped but not resident now (libraries, reserved arenas); None without a limit."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = mapped_bytes()
    if mapped is None:
        return None
    return max(0, soft - (mapped[0] - mapped[1])), "the address-space limit (ulimit -v) leaves"


def check_fits(plan: Plan, limit: tuple[int, str] | None, fixes: str) -> None:
    """Refuse, before any model loads, a run whose planned peak exceeds the memory it may use."""
    if limit is None or plan.peak <= limit[0]:
        return
    raise UnpactError(f"this run needs about {plan.describe()}, more than the {limit[0] / GB:.1f} GB {limit[1]}. "
                      f"{fixes}; --plan prints the cost of each step, and --skip-memory-check runs it anyway")
