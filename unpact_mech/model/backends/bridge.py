"""The TransformerLens backend: a ``TransformerBridge`` in compatibility mode (legacy hook names), weights as loaded.

Capabilities: ``hooks`` (every TransformerLens hook point), ``run_with_cache`` (the bridge itself for DLA,
paths and patching) and ``kv_prefix`` (a plain HF view over the bridge's own tensors, no second copy).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from unpact_mech.hooks import active_hook_count, applied
from unpact_mech.model.backends import HOOKS, KV_PREFIX, RUN_WITH_CACHE, Hook, first_param, frozen, hook_iter
from unpact_mech.model.backends.hf import HFBackend, shared_view


def boot_bridge(hf_model: Any, tokenizer: Any, source: str) -> Any:
    """Wrap an HF causal LM in a TransformerBridge (compatibility mode, eval, frozen). Modifies it in place."""
    frozen(hf_model)
    if getattr(hf_model.config, "_attn_implementation", "eager") != "eager":
        hf_model.config._attn_implementation = "eager"
    bridge = TransformerBridge.boot_transformers(
        source, hf_model=hf_model, tokenizer=tokenizer, device=str(first_param(hf_model).device)
    )
    # legacy hook names without TransformerLens's weight processing: processing would hold a second, folded copy
    # of the weights (and peak at ~3.5x them while folding); DLA applies the final norm itself instead
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return frozen(bridge)  # analysis only: train on Subject.load_hf_model()


class BridgeBackend:
    """TransformerLens ``TransformerBridge`` (compatibility mode)."""

    name = "transformer_lens"
    capabilities = frozenset({HOOKS, RUN_WITH_CACHE, KV_PREFIX})

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        self._kv: HFBackend | None = None

    @property
    def config(self) -> Any:
        return self.bridge.original_model.config

    @property
    def device(self) -> torch.device:
        return first_param(self.bridge).device

    @property
    def dtype(self) -> torch.dtype:
        return first_param(self.bridge).dtype

    def supports_hook(self, name: str) -> bool:
        return name in self.bridge.hook_dict

    @torch.no_grad()
    def forward(self, ids: Int[Tensor, "batch pos"], hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch pos vocab"]:
        if hooks:
            return self.bridge.run_with_hooks(ids, fwd_hooks=list(hook_iter(hooks)))
        return self.bridge(ids)

    @contextmanager
    def attached(self, hooks: Sequence[Hook]) -> Iterator[Any]:
        """Hooks attached for a ``with`` block, removed on exit (also after an error)."""
        with applied(self.bridge, list(hook_iter(hooks))) as bridge:
            yield bridge

    def attached_hooks(self) -> int:
        return active_hook_count(self.bridge)

    def hf_view(self) -> HFBackend:
        """The KV-cache fast path over the bridge's own tensors (built once, shares every weight)."""
        if self._kv is None:
            self._kv = HFBackend(shared_view(self.bridge.original_model, self.config))
        return self._kv
