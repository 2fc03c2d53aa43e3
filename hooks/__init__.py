"""Intervention hooks, installed as ``unpact_mech.hooks``.

Every factory returns a list of ``(hook_name, fn)`` pairs usable with ``bridge.run_with_hooks(fwd_hooks=...)``
or with :func:`applied`, a context manager that guarantees removal (also after an exception). A hook's return
value replaces the activation (TransformerLens ``HookPoint`` semantics). Positions index the sequence; a
flat list applies to every row of a batch, while :func:`scale_embedding` and :func:`steer_attention` also take
one list per batch row (so a batch of different prompts can each be emphasised at their own KeyTokens).

About embedding scaling on pre-norm models (SmolLM2, Llama): the first layer reads ``RMSNorm(x)``, which is
invariant to scaling x, so a scaled embedding does *not* change what layer 0's attention and MLP read at that
position. It changes the residual stream's balance: later layers' writes are smaller relative to the scaled
embedding, so later norms see more of the token itself, and keys/values read from that position in layers
>= 1 shift towards the token's identity. The effect is real but indirect; attention steering
(:func:`steer_attention`) acts on the attention itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from unpact_mech.errors import UnknownNameError, UnpactError, check_finite_factor

HookFn = Callable[..., Tensor]
Hooks = list[tuple[str, HookFn]]


def _positions(positions: Sequence[int] | int) -> list[int]:
    pos = [positions] if isinstance(positions, int) else [int(p) for p in positions]
    if not pos:
        raise UnpactError("no positions given")
    return pos


def _is_per_row(positions: Any) -> bool:
    return not isinstance(positions, int) and len(positions) > 0 and not isinstance(positions[0], int)


def row_mask(rows: Sequence[Sequence[int]], batch: int, n: int, device: Any = "cpu") -> Tensor:
    """``[batch, n]`` boolean mask with ``rows[r]``'s positions set in row r (a batch must match the rows)."""
    if len(rows) != batch:
        raise UnpactError(f"{len(rows)} position lists for a batch of {batch} rows")
    m = torch.zeros(batch, n, dtype=torch.bool)
    for r, ps in enumerate(rows):
        if ps:
            m[r, list(ps)] = True
    return m.to(device)


def scale_embedding(positions: Sequence[int] | Sequence[Sequence[int]], factor: float | Sequence[float]) -> Hooks:
    """Multiply the token embeddings at ``positions`` by one factor or one factor per position.

    ``positions`` may be one list per batch row (then ``factor`` is one number; rows with no positions are
    left unchanged).
    """
    if _is_per_row(positions):
        rows = [list(map(int, cast(Sequence[int], r))) for r in positions]
        if not isinstance(factor, (int, float)):
            raise UnpactError("per-row positions take a single factor")
        factor = check_finite_factor(factor, "embedding scale factor")

        def fn_rows(act: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
            m = row_mask(rows, act.shape[0], act.shape[1], act.device)
            return act * torch.where(m, float(factor), 1.0).to(act.dtype)[..., None]

        return [("hook_embed", fn_rows)]
    pos = _positions(cast(Sequence[int], positions))
    factors = [check_finite_factor(f, "embedding scale factor")
               for f in ([factor] * len(pos) if isinstance(factor, (int, float)) else factor)]
    if len(factors) != len(pos):
        raise UnpactError(f"{len(factors)} factors for {len(pos)} positions")

    def fn(act: Float[Tensor, "batch pos d_model"], hook: Any = None) -> Tensor:
        f = torch.tensor(factors, dtype=act.dtype, device=act.device)
        act = act.clone()
        act[:, pos] = act[:, pos] * f[None, :, None]
        return act

    return [("hook_embed", fn)]


def add_direction(hook_name: str, direction: Float[Tensor, " d_model"], positions: Sequence[int], coeff: float = 1.0) -> Hooks:
    """Add ``coeff * direction`` to an activation at ``positions``."""
    pos = _positions(positions)

    def fn(act: Tensor, hook: Any = None) -> Tensor:
        act = act.clone()
        act[:, pos] = act[:, pos] + coeff * direction.to(act.dtype)
        return act

    return [(hook_name, fn)]


def steer_attention(
    key_positions: Sequence[int] | Sequence[Sequence[int]],
    factor: float,
    n_layers: int,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Hooks:
    """PASTA-style steering: add log(factor) to the attention scores of ``key_positions`` before the softmax.

    Multiplies the unnormalised attention weight of those keys by ``factor`` in the chosen layers/heads (all by
    default); queries that cannot see a key (causal mask, score -inf) are unaffected. ``key_positions`` may be
    one list per batch row.
    """
    factor = check_finite_factor(factor, "attention steering factor")
    per_row = _is_per_row(key_positions)
    rows = [list(map(int, cast(Sequence[int], r))) for r in key_positions] if per_row else None
    keys = None if per_row else _positions(cast(Sequence[int], key_positions))
    bump = math.log(factor)
    head_idx = None if heads is None else list(heads)

    def fn(scores: Float[Tensor, "batch head q k"], hook: Any = None) -> Tensor:
        if rows is not None:
            m = row_mask(rows, scores.shape[0], scores.shape[-1], scores.device)[:, None, None, :]
            add = torch.where(m, bump, 0.0).to(scores.dtype)  # [batch, 1, 1, k]
            if head_idx is None:
                return scores + add
            scores = scores.clone()
            scores[:, head_idx] = scores[:, head_idx] + add
            return scores
        scores = scores.clone()
        if head_idx is None:
            scores[:, :, :, keys] += bump
        else:
            sub = scores[:, head_idx]
            sub[:, :, :, keys] += bump
            scores[:, head_idx] = sub
        return scores

    return [(f"blocks.{layer}.attn.hook_attn_scores", fn) for layer in (range(n_layers) if layers is None else layers)]


def patch_from_cache(
    cache: Any, hook_names: Sequence[str] | str, positions: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> Hooks:
    """Overwrite activations with another run's cached ones (at ``positions``, and ``heads`` for per-head hooks)."""
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    for n in names:
        if n not in cache:
            raise UnknownNameError(f"hook '{n}' is not in the source cache; cache it (names_filter) before patching")

    def make(name: str) -> HookFn:
        src = cache[name]

        def fn(act: Tensor, hook: Any = None) -> Tensor:
            if src.shape[1:] != act.shape[1:]:
                raise UnpactError(f"cannot patch {name}: source shape {tuple(src.shape)} vs target {tuple(act.shape)}")
            act = act.clone()
            s = src.to(act.dtype).expand_as(act) if src.shape[0] == 1 else src
            pos = slice(None) if positions is None else list(positions)
            if heads is None:
                act[:, pos] = s[:, pos]
            else:
                hsel = list(heads)
                a_sub = act[:, pos]
                a_sub[:, :, hsel] = s[:, pos][:, :, hsel]
                act[:, pos] = a_sub
            return act

        return fn

    return [(n, make(n)) for n in names]


def ablate_heads(layer: int, heads: Sequence[int], mode: str = "zero", mean_z: Tensor | None = None) -> Hooks:
    """Zero- or mean-ablate heads' outputs (``hook_z``) in one layer; ``mean_z`` is [head, d_head]."""
    hsel = list(heads)
    if mode not in ("zero", "mean"):
        raise UnpactError(f"unknown ablation mode {mode!r}: use 'zero' or 'mean'")
    if mode == "mean" and mean_z is None:
        raise UnpactError("mean ablation needs mean_z (mean hook_z over a reference set, shape [head, d_head])")

    def fn(z: Float[Tensor, "batch pos head d_head"], hook: Any = None) -> Tensor:
        z = z.clone()
        if mode == "zero":
            z[:, :, hsel] = 0.0
        else:
            assert mean_z is not None  # checked when the hook was made
            z[:, :, hsel] = mean_z[hsel].to(z.dtype)
        return z

    return [(f"blocks.{layer}.attn.hook_z", fn)]


@contextmanager
def applied(subject_or_bridge: Any, hooks: Hooks) -> Iterator[Any]:
    """Attach hooks to a subject's backend (or a bare bridge) for a ``with`` block; removed on exit, also after
    an error. Every computation on the subject inside the block runs under them (no fast path skips them)."""
    from unpact_mech.backends.bridge import BridgeBackend

    backend = getattr(subject_or_bridge, "backend", None) or BridgeBackend(subject_or_bridge)
    with backend.attached(hooks) as handle:
        yield handle


from unpact_mech.backends.bridge import active_hook_count  # noqa: E402  (one home; re-exported)

__all__ = [
    "ablate_heads",
    "active_hook_count",
    "add_direction",
    "applied",
    "patch_from_cache",
    "scale_embedding",
    "steer_attention",
]
