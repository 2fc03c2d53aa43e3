"""The nnsight backend: an nnsight ``LanguageModel``, local or on NDIF (``remote=True``).

It honours the hooks whose TransformerLens names map to a module output of the HF model:
``hook_embed`` (the input embedding's output) and ``blocks.{l}.hook_resid_post`` (decoder layer l's output).
A hook function ``fn(act) -> act`` from :mod:`unpact_mech.hooks` is applied to that output inside the trace,
so emphasis and patching hooks are the same objects on every backend. ``remote=True`` is passed to every
``trace`` (an NDIF API key configured for nnsight is needed; nothing contacts NDIF by default). A local model
also offers the KV-cache fast path over its own HF module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from unpact_mech.core.errors import UnpactError
from unpact_mech.model.backends import HOOKS, KV_PREFIX, REMOTE, Hook, first_param, hook_iter, n_layers
from unpact_mech.model.backends.hf import HFBackend

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def _module_path(root: Any, module: Any) -> str:
    for name, mod in root.named_modules():
        if mod is module:
            return name
    raise ValueError("module not found in the model")


def _envoy(model: Any, path: str) -> Any:
    env = model
    for part in path.split("."):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


def _layers_path(hf: Any) -> str:
    """Path of the decoder layer list (the ModuleList with num_hidden_layers entries)."""
    n = n_layers(hf.config)
    for name, mod in hf.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return name
    raise ValueError("could not find the decoder layer list of this model")


class NNsightBackend:
    """An nnsight ``LanguageModel``; hooks run as interventions inside ``trace``."""

    name = "nnsight"

    def __init__(self, lm: Any, remote: bool = False) -> None:
        self.lm = lm
        self.remote = remote
        self._attached: list[Hook] = []
        self._kv: HFBackend | None = None

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({HOOKS, REMOTE} if self.remote else {HOOKS, KV_PREFIX})

    @property
    def hf(self) -> Any:
        """The wrapped torch module (meta-initialised when remote)."""
        return self.lm._module

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.remote else first_param(self.hf).device

    @property
    def dtype(self) -> torch.dtype:
        return first_param(self.hf).dtype

    def module_path(self, hook_name: str) -> str | None:
        """The HF module whose output a TransformerLens hook name stands for (None: not available here)."""
        if hook_name == "hook_embed":
            return _module_path(self.hf, self.hf.get_input_embeddings())
        m = _RESID_POST.match(hook_name)
        if m and int(m.group(1)) < n_layers(self.config):
            return f"{_layers_path(self.hf)}.{m.group(1)}"
        return None

    def supports_hook(self, name: str) -> bool:
        return self.module_path(name) is not None

    def _ordered(self, hooks: Sequence[Hook]) -> list[tuple[str, Hook]]:
        out = []
        for name, fn in hook_iter(hooks):
            path = self.module_path(name)
            if path is None:
                raise UnpactError(f"hook '{name}' is not available on the nnsight backend: it offers hook_embed "
                                 "and blocks.{l}.hook_resid_post")
            out.append((path, (name, fn)))
        # interventions must touch modules in execution order: embedding first, then layers by index
        return sorted(out, key=lambda x: -1 if x[1][0] == "hook_embed" else int(x[1][0].split(".")[1]))

    @torch.no_grad()
    def forward(self, ids: Int[Tensor, "batch pos"], hooks: Sequence[Hook] = ()) -> Float[Tensor, "batch pos vocab"]:
        todo = self._ordered([*self._attached, *hooks])
        with self.lm.trace(ids, remote=self.remote):
            for path, (_, fn) in todo:
                env = _envoy(self.lm, path)
                out = env.output
                if isinstance(out, tuple):
                    env.output = (fn(out[0]), *out[1:])
                else:
                    env.output = fn(out)
            logits = self.lm.output.logits.save()
        return logits

    @torch.no_grad()
    def layer_output(self, ids: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream after decoder layer ``layer`` (the source of a layer-output patch)."""
        path = self.module_path(f"blocks.{layer}.hook_resid_post")
        if path is None:
            raise UnpactError(f"layer {layer} out of range for {n_layers(self.config)} layers")
        with self.lm.trace(ids, remote=self.remote):
            out = _envoy(self.lm, path).output.save()
        return out[0] if isinstance(out, tuple) else out

    @contextmanager
    def attached(self, hooks: Sequence[Hook]) -> Iterator[Any]:
        self._ordered(hooks)  # refuse unknown hook names now, not at the next forward
        n = len(self._attached)
        self._attached.extend(hooks)
        try:
            yield self
        finally:
            del self._attached[n:]

    def attached_hooks(self) -> int:
        return len(self._attached)

    def hf_view(self) -> HFBackend:
        if self.remote:
            raise UnpactError("a remote nnsight model has no local weights for the KV-cache fast path")
        if self._kv is None:
            self._kv = HFBackend(self.hf)
        return self._kv
