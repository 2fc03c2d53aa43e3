"""Backends: one protocol for every way of running a model, with declared capabilities.

A :class:`Backend` runs token ids to final logits, optionally under ``(hook_name, fn)`` hooks named as
TransformerLens names them (``hook_embed``, ``blocks.{l}.hook_resid_post``, ...). Callers ask for a capability
(:func:`require`), never for a backend by name:

* ``hooks``: ``forward(ids, hooks)`` and ``attached(hooks)`` honour hooks (:meth:`Backend.supports_hook` says which);
* ``run_with_cache``: TransformerLens internals (``bridge``: caches, W_U, W_O) for DLA, paths, patching;
* ``kv_prefix``: a plain HF causal LM over the *same* weights (:meth:`Backend.hf_view`): the KV-cache fast path,
  the unembedding of hidden states, gradients and the unlearning trainer's reference outputs;
* ``remote``: runs happen elsewhere (NDIF); no local weights.

:func:`fast_path` is the one decision of when that view may stand in for the backend. Implementations: :class:`~unpact_mech.model.backends.bridge.BridgeBackend` (TransformerLens),
:class:`~unpact_mech.model.backends.hf.HFBackend` (plain HF) and
:class:`~unpact_mech.model.backends.nnsight.NNsightBackend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unpact_mech.core.errors import UnpactError

HOOKS = "hooks"
RUN_WITH_CACHE = "run_with_cache"
KV_PREFIX = "kv_prefix"
REMOTE = "remote"
CAPABILITIES = (HOOKS, RUN_WITH_CACHE, KV_PREFIX, REMOTE)

Hook = tuple[str, Callable[..., Any]]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackendCapabilityError(UnpactError):
    """A computation needs a capability that the subject's backend does not declare."""


@runtime_checkable
class Backend(Protocol):
    """How a model runs. ``forward`` returns the model's final logits (its output transform applied)."""

    name: str

    @property
    def capabilities(self) -> frozenset[str]: ...

    @property
    def config(self) -> Any: ...  # the HF config

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def forward(self, ids: Int[Tensor, "batch pos"], hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch pos vocab"]: ...

    def supports_hook(self, name: str) -> bool: ...

    def attached(self, hooks: Sequence[Hook]) -> AbstractContextManager[Any]: ...

    def attached_hooks(self) -> int: ...

    def hf_view(self) -> Any: ...  # an HFBackend over the same weights (capability kv_prefix)


def require(backend: Backend, capability: str, what: str) -> Backend:
    """``backend`` if it declares ``capability``, else one clear error naming what needed it."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: {CAPABILITIES}")
    if capability not in backend.capabilities:
        raise BackendCapabilityError(
            f"{what} needs the backend capability '{capability}', which the {backend.name} backend does not "
            f"have (it has: {sorted(backend.capabilities)}); load the model with load_model() for TransformerLens"
        )
    return backend


def fast_path(backend: Backend, hooks: Any = (), longest: int | None = None) -> Any | None:
    """The plain HF view over the backend's own weights (:meth:`Backend.hf_view`) when it computes exactly what
    the backend computes, else None (take the exact path through the backend).

    Taken only when no hooks are given (a list, or a function of the batch rows) and none are attached, and the
    backend declares ``kv_prefix``. ``longest``: the caller builds its own attention mask over sequences this
    long, which is refused beyond the model's sliding attention window (HF's own cache handles the window)."""
    if callable(hooks) or hooks or KV_PREFIX not in backend.capabilities or backend.attached_hooks():
        return None
    window = getattr(backend.config, "sliding_window", None) or 0
    if longest is not None and window and longest > window:
        return None
    return backend.hf_view()


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (or a torch dtype) as a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise UnpactError(f"dtype {dtype} is not supported; use one of {sorted(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise UnpactError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def context_length(config: Any) -> int:
    """The model's context window from its HF config (2048 when the config does not say)."""
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        val = getattr(config, attr, None)
        if val:
            return int(val)
    return 2048


def n_layers(config: Any) -> int:
    """Number of decoder layers from an HF config."""
    for attr in ("num_hidden_layers", "n_layer"):
        val = getattr(config, attr, None)
        if val:
            return int(val)
    raise UnpactError("the model config names no layer count (num_hidden_layers)")


def first_param(module: Any) -> Tensor:
    return next(iter(module.parameters()))


def frozen(module: Any) -> Any:
    """``module`` in eval mode with no gradient on its weights (analysis and reference models); returned."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def hook_iter(hooks: Sequence[Hook]) -> Iterator[Hook]:
    for h in hooks:
        if not (isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and callable(h[1])):
            raise TypeError(f"a hook is a (hook_name, fn) pair, got {h!r}")
        yield h


__all__ = [
    "CAPABILITIES",
    "HOOKS",
    "KV_PREFIX",
    "REMOTE",
    "RUN_WITH_CACHE",
    "Backend",
    "BackendCapabilityError",
    "Hook",
    "context_length",
    "fast_path",
    "n_layers",
    "require",
    "resolve_dtype",
]
