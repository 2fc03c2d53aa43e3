"""Intervention hooks, installed as ``unpact_mech.hooks``: hook names, the emphasis specification, hook factories.

:func:`act_name` is the one place hook names are spelt (TransformerLens's ``get_act_name`` in spirit).
:class:`Emphasis` is the one specification of keyword emphasis (finding 2): its mode (``embed``: scale the
input embeddings at the positions by the factor; ``attention``: add log(factor) to every head's attention score
on those keys), its positions per batch row and its factor. :meth:`Emphasis.hooks` derives the TransformerLens
hooks from it; the KV-cache backend derives its scaled embeddings or additive attention mask from the same
object (``unpact_mech.model.backends.hf.HFBackend.emphasis_prefill``), and the two are tested equal.

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
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from unpact_mech.core.errors import UnknownNameError, UnpactError, check_finite_factor

HookFn = Callable[..., Tensor]
Hooks = list[tuple[str, HookFn]]

# short name -> hook name; "{l}" is the layer
_ACT_NAMES = {
    "embed": "hook_embed", "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre", "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out", "mlp_out": "blocks.{l}.hook_mlp_out",
    "z": "blocks.{l}.attn.hook_z", "v": "blocks.{l}.attn.hook_v", "pattern": "blocks.{l}.attn.hook_pattern",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "ln1_post_scale": "blocks.{l}.ln1_post.hook_scale", "ln1_post_normalized": "blocks.{l}.ln1_post.hook_normalized",
    "ln_final_scale": "ln_final.hook_scale", "ln_final_normalized": "ln_final.hook_normalized",
    "ln_final_out": "ln_final.hook_out",
}


def act_name(name: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of an activation: ``act_name("resid_pre", 3)`` is
    ``blocks.3.hook_resid_pre``; layer-free names (``embed``, ``ln_final_scale``) take no layer."""
    if name not in _ACT_NAMES:
        raise UnknownNameError(f"unknown activation {name!r}; known: {sorted(_ACT_NAMES)}")
    pattern = _ACT_NAMES[name]
    if ("{l}" in pattern) != (layer is not None):
        raise UnpactError(f"activation {name!r} {'needs' if '{l}' in pattern else 'takes no'} layer")
    return pattern.format(l=layer)


EMPHASIS_MODES: tuple[str, ...] = ("embed", "attention")


@dataclass(frozen=True)
class Emphasis:
    """Keyword emphasis of prompt positions: ``mode`` (``embed`` | ``attention``), the positions of each batch
    row (``positions[r]``) and one finite ``factor`` > 0 (1 is no emphasis)."""

    mode: str
    positions: tuple[tuple[int, ...], ...]
    factor: float

    def __post_init__(self) -> None:
        if self.mode not in EMPHASIS_MODES:
            raise UnpactError(f"unknown emphasis route {self.mode!r}: use one of {EMPHASIS_MODES} (or prompt_emphasis "
                              "for prompt edits)")
        check_finite_factor(self.factor)

    @classmethod
    def of(cls, mode: str, positions: Sequence[Sequence[int]], factor: float) -> Emphasis:
        return cls(mode, tuple(tuple(int(p) for p in row) for row in positions), float(factor))

    def rows(self, index: Sequence[int]) -> Emphasis:
        """The emphasis of the batch rows ``index`` (in that order)."""
        return Emphasis(self.mode, tuple(self.positions[i] for i in index), self.factor)

    @property
    def log_factor(self) -> float:
        """log(factor), the attention-score bias (float64 log, as the hooks and the KV-cache mask use it)."""
        return float(torch.log(torch.tensor(self.factor, dtype=torch.float64)))

    def hooks(self, n_layers: int) -> Hooks:
        """The TransformerLens hooks of this emphasis (per-row positions)."""
        rows = [list(r) for r in self.positions]
        if self.mode == "embed":
            return scale_embedding(rows, self.factor)
        return steer_attention(rows, self.factor, n_layers)

    def hook_names(self, n_layers: int) -> list[str]:
        """The hook points this mode needs (to check a backend supports them)."""
        return [act_name("embed")] if self.mode == "embed" else [act_name("attn_scores", layer)
                                                                  for layer in range(n_layers)]


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

        return [(act_name("embed"), fn_rows)]
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

    return [(act_name("embed"), fn)]


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

    return [(act_name("attn_scores", layer), fn) for layer in (range(n_layers) if layers is None else layers)]


def patch_from_cache(
    cache: Any, hook_names: Sequence[str] | str, positions: Sequence[int] | Sequence[Sequence[int]] | None = None,
    heads: Sequence[int] | Sequence[Sequence[int]] | None = None,
) -> Hooks:
    """Overwrite activations with another run's cached ones (at ``positions``, and ``heads`` for per-head hooks).

    ``positions`` and ``heads`` are one list for every row, or one list per batch row (row r patches
    ``positions[r]`` / ``heads[r]``: many single-site patches in one batch); None means all. A source of batch 1
    serves every row."""
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    for n in names:
        if n not in cache:
            raise UnknownNameError(f"hook '{n}' is not in the source cache; cache it (names_filter) before patching")
    pos_rows = _is_per_row(positions) if positions is not None else False
    head_rows = _is_per_row(heads) if heads is not None else False

    def sel(spec: Any, per_row: bool, r: int) -> Any:
        if spec is None:
            return slice(None)
        return list(cast(Sequence[Sequence[int]], spec)[r]) if per_row else list(cast(Sequence[int], spec))

    def make(name: str) -> HookFn:
        src = cache[name]

        def fn(act: Tensor, hook: Any = None) -> Tensor:
            if src.shape[1:] != act.shape[1:]:
                raise UnpactError(f"cannot patch {name}: source shape {tuple(src.shape)} vs target {tuple(act.shape)}")
            act = act.clone()
            s = src.to(act.dtype)
            n_rows = act.shape[0]  # a shared patch applies to every row; per-row specs to their rows
            for spec, per_row in ((positions, pos_rows), (heads, head_rows)):
                if per_row:
                    n_rows = min(n_rows, len(cast(Sequence[Any], spec)))
            for r in range(n_rows):
                sr = s[0 if s.shape[0] == 1 else r]
                pos, hsel = sel(positions, pos_rows, r), sel(heads, head_rows, r)
                if heads is None:
                    act[r, pos] = sr[pos]
                else:
                    a_sub = act[r, pos]
                    a_sub[:, hsel] = sr[pos][:, hsel]
                    act[r, pos] = a_sub
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

    return [(act_name("z", layer), fn)]


def active_hook_count(bridge: Any) -> int:
    """Number of forward hooks currently attached to a TransformerLens bridge's hook points."""
    unique = {id(hp): hp for hp in bridge.hook_dict.values()}  # aliases name the same HookPoint
    return sum(len(hp.fwd_hooks) for hp in unique.values())


@contextmanager
def applied(subject_or_bridge: Any, hooks: Hooks) -> Iterator[Any]:
    """Attach hooks to a subject's backend (or a bare TransformerLens bridge) for a ``with`` block; removed on
    exit, also after an error. Every computation on the subject inside the block runs under them (no fast path
    skips them)."""
    backend = getattr(subject_or_bridge, "backend", None)
    if backend is not None:
        with backend.attached(hooks) as handle:
            yield handle
        return
    bridge = subject_or_bridge
    before = active_hook_count(bridge)
    try:
        with bridge.hooks(fwd_hooks=list(hooks)):
            yield bridge
    finally:
        if active_hook_count(bridge) != before:
            bridge.reset_hooks(including_permanent=False)


__all__ = [
    "EMPHASIS_MODES",
    "Emphasis",
    "ablate_heads",
    "act_name",
    "active_hook_count",
    "applied",
    "patch_from_cache",
    "scale_embedding",
    "steer_attention",
]
