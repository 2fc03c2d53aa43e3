"""The model under study: a :class:`Subject` (a backend, its tokenizer, a name and provenance), and the one
way to build one around an HF causal LM in memory (:func:`wrap`).

``unpact_mech.model.loading.load_model`` loads a spec from disk or the hub and calls :func:`wrap`; checkpoints,
snapshots along an unlearning trajectory, quantised copies and relearned models are wrapped the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from unpact_mech.core.errors import UnpactError
from unpact_mech.model.backends import RUN_WITH_CACHE, Backend, context_length, frozen, n_layers, require
from unpact_mech.model.backends.bridge import BridgeBackend, boot_bridge
from unpact_mech.model.backends.hf import HFBackend


class TokenizerMismatch(UnpactError):
    """Two subjects whose token ids do not mean the same thing."""


@dataclass
class Subject:
    """A model under study: a :class:`~unpact_mech.model.backends.Backend`, tokenizer, name and provenance.

    The TransformerLens backend runs the weights as loaded (compatibility mode without weight processing), so
    every backend computes the same function. ``load_hf_model`` gives a fresh copy of the weights in
    ``source`` to train on (only for subjects loaded from it: ``from_source``).
    """

    name: str
    backend: Backend
    tokenizer: Any
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)
    memo: dict[Any, Any] | None = field(default=None, init=False, repr=False)
    # how ``source`` was loaded (trust/pickle opt-ins, placement), reused by load_hf_model
    load_options: dict[str, Any] = field(default_factory=dict, repr=False)
    # True when the weights are exactly ``source``'s (load_model); False for a wrapped in-memory model
    from_source: bool = False
    # ``loader(source, dtype=..., **load_options)`` -> a fresh HF model; set by ``unpact_mech.model.loading``
    loader: Callable[..., Any] | None = field(default=None, repr=False)

    def memoize(self, on: bool = True) -> Subject:
        """Reuse unhooked scores, leave-one-out results, decompositions and logit lenses of this subject.

        For subjects whose weights stay fixed (e.g. the base model across a demo's methods); off by default.
        """
        self.memo = {} if on else None
        return self

    def memo_for(self, hooks: Any = ()) -> dict[Any, Any] | None:
        """The memo, unless intervention hooks are passed or attached to the backend (their results differ)."""
        if self.memo is None or hooks:
            return None
        return None if self.backend.attached_hooks() else self.memo

    def has(self, capability: str) -> bool:
        return capability in self.backend.capabilities

    @property
    def bridge(self) -> Any:
        """The TransformerLens bridge (capability ``run_with_cache``)."""
        backend = require(self.backend, RUN_WITH_CACHE, "this computation")
        return getattr(backend, "bridge")  # noqa: B009  (run_with_cache promises a ``bridge``; not in the protocol)

    @property
    def cfg(self) -> Any:
        """The TransformerLens config (n_layers, n_heads, ...; capability ``run_with_cache``)."""
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return n_layers(self.backend.config)

    @property
    def n_ctx(self) -> int:
        return context_length(self.backend.config)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    def load_hf_model(self, dtype: str | torch.dtype | None = None) -> Any:
        """A fresh HF causal LM with the weights in ``source`` (e.g. to train on), in this subject's dtype."""
        if self.loader is None:
            raise UnpactError(f"subject '{self.name}' was built around an in-memory model; it has no source to load a "
                              "fresh copy from (save it with save_checkpoint() and load_model() that directory)")
        return self.loader(self.source, dtype=self.dtype if dtype is None else dtype, **self.load_options)

    def tokenizer_fingerprint(self) -> str:
        """A hash of the vocabulary: equal fingerprints mean token ids mean the same thing."""
        return vocab_fingerprint(self.tokenizer)


def vocab_fingerprint(tokenizer: Any) -> str:
    """sha256 of the sorted (token, id) pairs, 16 hex digits: equal fingerprints mean token ids mean the same thing."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def check_same_tokenizer(a: Subject, b: Subject) -> None:
    """Refuse to compare subjects with different vocabularies."""
    if a.tokenizer_fingerprint() != b.tokenizer_fingerprint():
        raise TokenizerMismatch(
            f"models '{a.name}' and '{b.name}' use different tokenizers; token-level comparison needs the "
            "same vocabulary (compare an unlearned model with the base it was made from)"
        )


BACKEND_KINDS = ("transformer_lens", "hf")


def wrap(hf_model: Any, tokenizer: Any, name: str, source: str, backend: str | Backend = "transformer_lens",
         provenance: dict[str, Any] | None = None) -> Subject:
    """A Subject around an HF causal LM in memory (frozen, eval mode), with the backend ``backend``:

    * ``"transformer_lens"``: the TransformerLens bridge (hooks, caches, DLA; modifies ``hf_model`` in place);
    * ``"hf"``: the plain HF backend (scoring and generation only; cheaper than booting TransformerLens);
    * a ready :class:`~unpact_mech.model.backends.Backend` (e.g. nnsight's).

    Every computation on the subject, the KV-cache fast path included, uses these in-memory weights.
    """
    if isinstance(backend, str):
        if backend not in BACKEND_KINDS:
            raise UnpactError(f"unknown backend {backend!r}: use one of {BACKEND_KINDS}")
        backend = (BridgeBackend(boot_bridge(hf_model, tokenizer, source)) if backend == "transformer_lens"
                   else HFBackend(frozen(hf_model)))
    return Subject(name, backend, tokenizer, source, provenance or {})
