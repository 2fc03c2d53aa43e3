"""How fast this machine runs the three kinds of work a forward is made of, timed on the spot (about 0.8 s): matrix
products in the run's dtype, eager attention's elementwise score work, and a fixed cost per model call. The plan
(:mod:`unpact_mech.runtime.plan`) turns its FLOPs and score elements into seconds with them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from unpact_mech.model.shape import ModelShape


@dataclass(frozen=True)
class Rates:
    """How fast this machine runs the three kinds of work a forward is made of (:func:`measure_rates`)."""

    matmul: float  # FLOP/s of float32 matrix products the size of the model's MLP
    score_seconds: float  # seconds per attention score element (scale, mask, softmax: memory-bound)
    call_seconds: float  # fixed seconds per model call (per-layer Python and kernel overhead)


CALL_SECONDS_PER_LAYER = 1e-3  # a model call's fixed cost per layer on a CPU (measured in bench_plan.py)
# A model's own matmuls run at about MATMUL_EFFICIENCY of the rate of one MLP-sized product, and eager attention
# costs SCORE_FACTOR times the timed scale-mask-softmax per score element (its QK and AV products at head width
# are slow batched matmuls). Least squares over seven kinds of work on SmolLM2 in float32 (bench_plan.py: predicted
# over measured time 0.83..1.24 after the fit), then checked, not fitted, on a random 1B Llama and in bfloat16.
MATMUL_EFFICIENCY = 0.87
SCORE_FACTOR = 1.35
_RATE: dict[str, float] = {}


def _best_seconds(work: Callable[[], Any], repeats: int = 3, seconds: float = 0.1) -> float:
    """The fastest seconds per call of ``work()`` over ``repeats`` timed windows of about ``seconds`` each, after
    one untimed call (first-touch page faults and lazy initialisation are not this machine's speed)."""
    work()
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            work()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def matmul_rate(shape: ModelShape, dtype: str = "float32") -> float:
    """FLOP/s of matrix products the size of the model's MLP (``256 x d @ d x f``) in ``dtype`` on this CPU (a
    CPU with bfloat16 matrix units multiplies bfloat16 several times faster than float32)."""
    key = f"{shape.d_model}x{shape.d_mlp}x{dtype}x{torch.get_num_threads()}"
    if key not in _RATE:
        t, d, f = 256, min(shape.d_model, 4096), min(shape.d_mlp, 16384)
        tdt = getattr(torch, dtype)
        a, b = torch.randn(t, d, dtype=tdt), torch.randn(d, f, dtype=tdt)
        _RATE[key] = 2.0 * t * d * f / _best_seconds(lambda: a @ b)
    return _RATE[key]


def score_seconds() -> float:
    """Seconds per element of eager attention's elementwise work (scale, add the mask, softmax in float32, as
    transformers' eager attention runs it in every dtype), on a 16M-element score tensor on this CPU."""
    key = f"scores{torch.get_num_threads()}"
    if key not in _RATE:
        x, mask = torch.randn(16, 1024, 1024), torch.zeros(1, 1024, 1024)  # 64 MB: mapped afresh, as long prompts are
        _RATE[key] = _best_seconds(lambda: torch.softmax(x * 0.125 + mask, dim=-1)) / x.numel()
    return _RATE[key]


def measure_rates(shape: ModelShape, dtype: str = "float32") -> Rates:
    """This CPU's :class:`Rates` for ``shape`` in ``dtype`` (about 0.8 s of timing, once per process)."""
    return Rates(MATMUL_EFFICIENCY * matmul_rate(shape, dtype), SCORE_FACTOR * score_seconds(),
                 CALL_SECONDS_PER_LAYER * shape.n_layers)

