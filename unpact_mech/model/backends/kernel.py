"""The one answer-log-prob kernel: answer positions -> the model's output transform -> log_softmax -> gather.

Teacher forcing: the token at position t is predicted by the output at position t - 1, so the answer
ids[start:] is read from outputs at positions start-1 .. len-2. Every caller (scoring, leave-one-out, logit
lens, unlearning losses and calibration) builds an :class:`AnswerIndex` and calls :func:`answer_logprobs`;
all index tensors live on the device of the model outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class OutputTransform:
    """What a model does to its LM-head output before the softmax, read from its HF config.

    logits' = cap * tanh(z / cap) if final_logit_softcapping (Gemma 2/3), z * logit_scale (Cohere),
    z / logits_scaling (Granite); identity otherwise.
    """

    softcap: float | None = None
    scale: float = 1.0

    @classmethod
    def from_config(cls, config: Any) -> OutputTransform:
        cap = getattr(config, "final_logit_softcapping", None)
        scale = float(getattr(config, "logit_scale", None) or 1.0)
        granite = getattr(config, "logits_scaling", None)
        if granite:
            scale = scale / float(granite)
        return cls(float(cap) if cap else None, scale)

    @property
    def identity(self) -> bool:
        return self.softcap is None and self.scale == 1.0

    def __call__(self, logits: Float[Tensor, "*n vocab"]) -> Float[Tensor, "*n vocab"]:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


@dataclass(frozen=True)
class AnswerIndex:
    """Where the answers of a batch are read: output (row, col) predicts ``target``; ``owner`` is the sequence."""

    rows: Int[Tensor, " n"]
    cols: Int[Tensor, " n"]
    targets: Int[Tensor, " n"]
    owner: Int[Tensor, " n"]

    @classmethod
    def build(
        cls, seqs: Sequence[tuple[Sequence[int], int]], device: Any, owners: Sequence[int] | None = None
    ) -> AnswerIndex:
        """Index for row r = ``seqs[r]`` = (ids, answer_start); ``owners[r]`` labels the row (default r)."""
        rows: list[int] = []
        cols: list[int] = []
        targets: list[int] = []
        owner: list[int] = []
        for r, (ids, start) in enumerate(seqs):
            n = len(ids) - start
            rows += [r] * n
            cols += range(start - 1, len(ids) - 1)
            targets += list(ids[start:])
            owner += [owners[r] if owners is not None else r] * n

        def t(x: list[int]) -> Tensor:
            return torch.tensor(x, dtype=torch.long, device=device)

        return cls(t(rows), t(cols), t(targets), t(owner))

    @classmethod
    def from_labels(cls, labels: Int[Tensor, "batch pos"], ignore: int = -100) -> AnswerIndex:
        """Index of an HF-style label tensor: output (r, c) predicts labels[r, c + 1] where it is not ``ignore``."""
        nxt = labels[:, 1:]
        rows, cols = torch.nonzero(nxt != ignore, as_tuple=True)
        return cls(rows, cols, nxt[rows, cols], rows)

    def gather(self, out: Float[Tensor, "batch pos *d"]) -> Float[Tensor, " n *d"]:
        """The outputs (logits or hidden states) at the answer-predicting positions."""
        return out[self.rows, self.cols]


def answer_logprobs(
    logits: Float[Tensor, "n vocab"], targets: Int[Tensor, " n"]
) -> tuple[Float[Tensor, " n"], Bool[Tensor, " n"]]:
    """log p(target) = log_softmax(logits)[target] in float64, and whether the target is the top-1 token.

    ``logits`` are the model's final logits (output transform already applied): use :func:`unembed` on
    hidden states. Gradients flow through (the unlearning losses use it).
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    lp = logp.gather(1, targets[:, None].to(logp.device))[:, 0]
    top1 = logits.argmax(-1) == targets.to(logits.device)
    return lp, top1


def logprob_moments(logits: Float[Tensor, "n vocab"]) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Mean and variance of log p(v) under the model's own next-token distribution, per row, in float64:
    mu = sum_v p(v) log p(v), var = sum_v p(v) log^2 p(v) - mu^2 (Min-K%++'s normalisers)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    return mu, (p * logp.square()).sum(-1) - mu.square()


def unembed(
    head: Callable[[Tensor], Tensor], hidden: Float[Tensor, "n d_model"], transform: OutputTransform
) -> Float[Tensor, "n vocab"]:
    """Final logits from final hidden states: the model's LM head, then its output transform."""
    return transform(head(hidden))


def per_sequence(values: Float[Tensor, " n"], owner: Int[Tensor, " n"], n_seqs: int) -> Float[Tensor, " n_seqs"]:
    """Sum of per-token values per owning sequence (differentiable)."""
    out = torch.zeros(n_seqs, dtype=values.dtype, device=values.device)
    return out.index_add(0, owner.to(values.device), values)
