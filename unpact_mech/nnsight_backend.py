"""A second backend on nnsight ``LanguageModel``: the quantities that need no TransformerLens internals.

An :class:`NNsightSubject` goes wherever a Subject goes for answer LP (``scoring``), leave-one-out
(``attribution.loo``), embedding-scaling emphasis (``emphasis.emphasize(route="embed")``) and layer-output
patching (:func:`patch_layer_output`). Its interventions are functions of the nnsight model applied inside the
trace. ``remote=True`` is passed to every ``trace`` call, so the same code runs on NDIF for models far larger than
one machine (an NDIF API key configured for nnsight is needed; nothing here contacts NDIF by default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

Intervention = Callable[[Any], None]


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
    n = hf.config.num_hidden_layers
    for name, mod in hf.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return name
    raise ValueError("could not find the decoder layer list of this model")


@dataclass
class NNsightSubject:
    """A model under study through nnsight (backend ``"nnsight"``)."""

    name: str
    model: Any  # nnsight LanguageModel
    tokenizer: Any
    source: str
    remote: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    backend: str = "nnsight"

    @property
    def hf(self) -> Any:
        """The wrapped torch module (meta-initialised when remote)."""
        return self.model._module

    @property
    def n_ctx(self) -> int:
        cfg = self.hf.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.remote else next(self.hf.parameters()).device

    @property
    def n_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    def plain_model(self) -> None:
        """No local KV-cache fast path: every forward goes through an nnsight trace."""
        return None

    def tokenizer_fingerprint(self) -> str:
        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]

    def embed_path(self) -> str:
        return _module_path(self.hf, self.hf.get_input_embeddings())

    def layer_path(self, layer: int) -> str:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range for {self.n_layers} layers")
        return f"{_layers_path(self.hf)}.{layer}"

    def forward_logits(
        self, ids: Int[Tensor, "batch pos"], hooks: Sequence[Intervention] = ()
    ) -> Float[Tensor, "batch pos vocab"]:
        """One traced forward with interventions; returns the logits."""
        with torch.no_grad(), self.model.trace(ids, remote=self.remote):
            for fn in hooks:
                fn(self.model)
            logits = self.model.output.logits.save()
        return logits

    def layer_output(self, ids: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream after a decoder layer."""
        with torch.no_grad(), self.model.trace(ids, remote=self.remote):
            out = _envoy(self.model, self.layer_path(layer)).output.save()
        return out[0] if isinstance(out, tuple) else out


def load_nnsight(spec: str, remote: bool = False, name: str | None = None) -> NNsightSubject:
    """Load a model spec for the nnsight backend (``remote=True``: hub id run on NDIF, no local weights)."""
    from nnsight import LanguageModel

    from unpact_mech.models import _load_hf, _load_tokenizer, _resolve

    model_name, source = _resolve(spec)
    tok = _load_tokenizer(source)
    lm = LanguageModel(source, tokenizer=tok) if remote else LanguageModel(_load_hf(source), tokenizer=tok)
    return NNsightSubject(name or model_name, lm, tok, source, remote)


def scale_embedding(
    subject: NNsightSubject, positions: Sequence[int] | Sequence[Sequence[int]], factor: float
) -> list[Intervention]:
    """nnsight twin of ``unpact_mech.hooks.scale_embedding`` (flat positions, or one list per batch row)."""
    path = subject.embed_path()
    per_row = len(positions) > 0 and not isinstance(positions[0], int)

    def fn(model: Any) -> None:
        out = _envoy(model, path).output
        if per_row:
            for r, ps in enumerate(positions):
                if ps:
                    out[r, list(ps)] *= factor  # type: ignore[arg-type]
        else:
            out[:, list(positions)] *= factor  # type: ignore[arg-type]

    return [fn]


def patch_layer_output(subject: NNsightSubject, layer: int, source: Tensor, positions: Sequence[int] | None = None) -> list[Intervention]:
    """Overwrite a decoder layer's output with ``source`` (another run's output) at ``positions`` (all)."""
    path = subject.layer_path(layer)
    pos = slice(None) if positions is None else list(positions)

    def fn(model: Any) -> None:
        out = _envoy(model, path).output
        target = out[0] if isinstance(out, tuple) else out
        target[:, pos] = source[:, pos]

    return [fn]
