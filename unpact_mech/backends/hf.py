"""The plain Hugging Face backend: a causal LM with a KV cache (the leave-one-out fast path).

:func:`shared_view` builds an unwrapped HF causal LM whose parameters and buffers *are* another module's
tensors (for example the TransformerLens bridge's, after compatibility mode folded the norms into the
weights: folding keeps the function, so the view computes the bridge's log-probs with no second copy).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unpact_mech.backends import HOOKS, KV_PREFIX, Hook, first_param
from unpact_mech.backends.kernel import OutputTransform, unembed


def _strip(name: str) -> str:
    return name.replace("._original_component", "")


def shared_view(wrapped: Any, config: Any) -> Any:
    """An HF causal LM built on the meta device whose tensors are ``wrapped``'s own (names matched after
    removing TransformerLens's ``._original_component``). Nothing is copied; read-only use."""
    from transformers import AutoModelForCausalLM

    tensors = {_strip(k): v for k, v in wrapped.named_parameters(remove_duplicate=False)}
    tensors.update({_strip(k): v for k, v in wrapped.named_buffers(remove_duplicate=False)})
    with torch.device("meta"):
        view = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    names = [k for k, _ in view.named_parameters(remove_duplicate=False)]
    names += [k for k, _ in view.named_buffers(remove_duplicate=False)]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise RuntimeError(f"cannot build a shared HF view: tensors {missing[:4]} not found in the wrapped model")
    for n in names:
        mod_name, _, leaf = n.rpartition(".")
        mod = view.get_submodule(mod_name)
        t = tensors[n]
        if leaf in mod._parameters:
            mod._parameters[leaf] = t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t, requires_grad=False)
        else:
            mod._buffers[leaf] = t
    return view.eval()


class HFBackend:
    """A plain HF causal LM: full forwards, and hidden states with a KV cache (capability ``kv_prefix``)."""

    name = "hf"

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.transform = OutputTransform.from_config(model.config)
        self.capabilities = frozenset({KV_PREFIX})
        self.body = model.base_model  # the decoder without its LM head (``model`` or ``transformer``)
        self._cache_kw = "cache" if "cache" in inspect.signature(self.body.forward).parameters else "past_key_values"

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return first_param(self.model).device

    @property
    def dtype(self) -> torch.dtype:
        return first_param(self.model).dtype

    def supports_hook(self, name: str) -> bool:
        return False

    @contextmanager
    def attached(self, hooks: Sequence[Hook]) -> Iterator[Any]:
        if hooks:
            raise ValueError(f"the {self.name} backend runs no hooks (capability '{HOOKS}')")
        yield self

    def attached_hooks(self) -> int:
        return 0

    def kv(self) -> HFBackend:
        return self

    @torch.no_grad()
    def forward(self, ids: Int[Tensor, "batch pos"], hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch pos vocab"]:
        if hooks:
            raise ValueError(f"the {self.name} backend runs no hooks (capability '{HOOKS}')")
        return self.model(input_ids=ids).logits

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    @torch.no_grad()
    def hidden(
        self, ids: Int[Tensor, "batch pos"], cache: Any, position_ids: Int[Tensor, "batch pos"] | None = None
    ) -> Float[Tensor, "batch pos d_model"]:
        """Final hidden states (after the final norm), extending ``cache`` in place."""
        kw: dict[str, Any] = {self._cache_kw: cache}
        if position_ids is not None:
            kw["position_ids"] = position_ids
        return self.body(input_ids=ids, use_cache=True, **kw).last_hidden_state

    def logits(self, hidden: Float[Tensor, "n d_model"]) -> Float[Tensor, "n vocab"]:
        """The model's final logits from final hidden states (LM head, then its output transform)."""
        return unembed(self.model.get_output_embeddings(), hidden, self.transform)


def expand_cache(cache: Any, n: int) -> Any:
    """A copy of a one-row ``cache`` repeated for ``n`` rows (the cache's own bookkeeping, sliding windows
    included, is kept: nothing is sliced by hand)."""
    import copy

    kv = copy.deepcopy(cache)
    kv.batch_repeat_interleave(n)
    return kv
