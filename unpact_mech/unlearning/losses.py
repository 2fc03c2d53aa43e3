"""Unlearning losses on padded batches (``input_ids``, ``attention_mask``, ``labels`` with -100 = ignored).

Per-sequence NLL = sum of the NLL of the labelled tokens (answer tokens for QA, all tokens for raw text).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

Batch = dict[str, Tensor]


def _shifted(model: Any, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    return logits, labels.clamp(min=0), mask


def sequence_nll(model: Any, batch: Batch) -> Float[Tensor, " batch"]:
    """Sum of labelled-token NLL per sequence."""
    logits, labels, mask = _shifted(model, batch)
    nll = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    return (nll * mask).sum(-1)


def n_labelled(batch: Batch) -> Tensor:
    return (batch["labels"][:, 1:] != -100).sum(-1).clamp(min=1)


def ga(model: Any, forget: Batch) -> Tensor:
    """Gradient ascent: -NLL on the forget batch."""
    return -sequence_nll(model, forget).mean()


def npo(model: Any, ref: Any, forget: Batch, beta: float) -> Tensor:
    """NPO (NLL form, as open-unlearning): -(2/beta) log sigmoid(-beta (log pi - log pi_ref))."""
    nll = sequence_nll(model, forget)
    with torch.no_grad():
        nll_ref = sequence_nll(ref, forget)
    # log pi - log pi_ref = nll_ref - nll
    return -(2.0 / beta) * F.logsigmoid(-beta * (nll_ref - nll)).mean()


def simnpo(model: Any, forget: Batch, beta: float, delta: float) -> Tensor:
    """SimNPO: length-normalised NLL with margin delta, no reference model."""
    nll = sequence_nll(model, forget) / n_labelled(forget)
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - delta)).mean()


def dpo(model: Any, ref: Any, preferred: Batch, rejected: Batch, beta: float) -> Tensor:
    """DPO of preferred over rejected answers (IdkDPO: refusals preferred, forget answers rejected)."""
    win, lose = -sequence_nll(model, preferred), -sequence_nll(model, rejected)
    with torch.no_grad():
        win_ref, lose_ref = -sequence_nll(ref, preferred), -sequence_nll(ref, rejected)
    return -(2.0 / beta) * F.logsigmoid(beta * ((win - win_ref) - (lose - lose_ref))).mean()


def gdr(model: Any, retain: Batch) -> Tensor:
    """Gradient-descent retain term: NLL on the retain batch."""
    return sequence_nll(model, retain).mean()


def klr(model: Any, ref: Any, retain: Batch) -> Tensor:
    """KL(pi_theta || pi_ref) over the labelled retain tokens (mean per token)."""
    logits, _, mask = _shifted(model, retain)
    with torch.no_grad():
        ref_logits, _, _ = _shifted(ref, retain)
    logp = F.log_softmax(logits, -1)
    kl = (logp.exp() * (logp - F.log_softmax(ref_logits, -1))).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def hidden_at(model: Any, batch: Batch, layer: int) -> Tensor:
    """Residual stream after decoder layer ``layer`` (HF ``hidden_states[layer + 1]``)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[layer + 1]


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    m = mask[..., None].to(a.dtype)
    return (((a - b) ** 2) * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1)


def rmu(model: Any, ref: Any, forget: Batch, retain: Batch, layer: int, control: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """RMU: MSE(h(x_f), c*u) and alpha * MSE(h(x_r), h_ref(x_r)) at ``layer`` (c*u = ``control``)."""
    hf = hidden_at(model, forget, layer)
    f = masked_mse(hf, control.expand_as(hf), forget["attention_mask"])
    hr = hidden_at(model, retain, layer)
    with torch.no_grad():
        hr_ref = hidden_at(ref, retain, layer)
    return f, alpha * masked_mse(hr, hr_ref, retain["attention_mask"])
