"""Unlearning losses on padded batches (``input_ids``, ``attention_mask``, ``labels`` with -100 = ignored).

Per-sequence NLL = sum of the NLL of the labelled tokens (answer tokens for QA, all tokens for raw text).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from unpact_mech.backends.kernel import AnswerIndex, OutputTransform, answer_logprobs, per_sequence, unembed

Batch = dict[str, Tensor]


def labelled_logits(model: Any, batch: Batch) -> tuple[Float[Tensor, "n vocab"], Tensor, Tensor]:
    """Final logits at the positions that predict labelled tokens only, with those labels and their row index.

    The LM head runs on the labelled positions alone (the answer, for QA), which saves its cost on the prompt;
    the model's own output transform (final-logit soft-capping, logit scaling) is applied (``unembed``).
    """
    h = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    idx = AnswerIndex.from_labels(batch["labels"])
    logits = unembed(model.get_output_embeddings(), idx.gather(h), OutputTransform.from_config(model.config))
    return logits, idx.targets, idx.owner


def sequence_nll(model: Any, batch: Batch) -> Float[Tensor, " batch"]:
    """Sum of labelled-token NLL per sequence (float64, from the answer-log-prob kernel)."""
    logits, labels, rows = labelled_logits(model, batch)
    lp, _ = answer_logprobs(logits, labels)
    return -per_sequence(lp, rows, batch["input_ids"].shape[0])


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
    logits, _, _ = labelled_logits(model, retain)
    with torch.no_grad():
        ref_logits, _, _ = labelled_logits(ref, retain)
    logp = F.log_softmax(logits, -1)
    kl = (logp.exp() * (logp - F.log_softmax(ref_logits, -1))).sum(-1)
    return kl.sum() / max(kl.numel(), 1)


class _StopForward(Exception):
    pass


def hidden_at(model: Any, batch: Batch, layer: int) -> Float[Tensor, "batch pos d_model"]:
    """Residual stream after decoder layer ``layer``; the forward stops there (later layers never run)."""
    box: dict[str, Tensor] = {}

    def grab(module: Any, inputs: Any, output: Any) -> None:
        box["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = model.model.layers[layer].register_forward_hook(grab)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    except _StopForward:
        pass
    finally:
        handle.remove()
    return box["h"]


def masked_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    m = mask[..., None].to(a.dtype)
    return (((a - b) ** 2) * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1)


def rmu(model: Any, ref: Any, forget: Batch, retain: Batch, layer: int, control: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """RMU: MSE(h(x_f), c*u) on the forget examples' own tokens (``content_mask``: question and answer, not the
    chat template they share with retain examples), and alpha * MSE(h(x_r), h_ref(x_r)) on all retain tokens."""
    hf = hidden_at(model, forget, layer)
    f = masked_mse(hf, control.expand_as(hf), forget["content_mask"])
    hr = hidden_at(model, retain, layer)
    with torch.no_grad():
        hr_ref = hidden_at(ref, retain, layer)
    return f, alpha * masked_mse(hr, hr_ref, retain["attention_mask"])
