"""Unlearning losses on padded batches (``input_ids``, ``attention_mask``, ``labels`` with -100 = ignored).

Per-sequence NLL = sum of the NLL of the labelled tokens (for QA: the answer, plus the template's closing tokens and
EOS under ``open_unlearning``, see ``unpact_mech.unlearning.data``; raw text: all tokens). A sequence with no
labelled token is refused (:func:`n_labelled`): open-unlearning's per-sequence means divide by its zero count
(NaN), and a clamp to 1 would silently shift a batch mean.

Two loss conventions (``UnlearnConfig.loss_convention``, registry ``CONVENTIONS``):

* ``"open_unlearning"`` (default), as open-unlearning and MUSE compute them, on open-unlearning's labels (answer,
  closing template tokens, EOS):
  GA = -NLL and GD = NLL as the **per-token mean** over the batch's labelled tokens (``outputs.loss``);
  KL retain = **KL(pi_ref || pi_theta)** summed over the vocabulary and averaged over the batch's positions
  (``F.kl_div(current_logp, ref_logp, log_target=True, reduction="batchmean")`` on the flattened logits).
  Positions are the ones the attention mask keeps; open-unlearning's flattening also averages over padding
  positions, which makes the loss depend on how a batch happens to be padded, so we leave those out
  (identical on unpadded batches).
* ``"unpact_v1"`` (this toolkit's first forms, kept to reproduce old runs; answer tokens labelled): GA/GD = mean over sequences of the
  **summed** answer NLL; KL retain = KL(pi_theta || pi_ref) per labelled answer token.

NPO, DPO/IdkDPO and SimNPO use per-sequence sums (SimNPO: divided by the answer length) in both, as
open-unlearning does (``compute_batch_nll``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from unpact_mech.model.backends.kernel import (
    AnswerIndex,
    OutputTransform,
    answer_logprobs,
    per_sequence,
    unembed,
)
from unpact_mech.unlearning.config import UnlearningError

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
    n_labelled(batch)
    logits, labels, rows = labelled_logits(model, batch)
    lp, _ = answer_logprobs(logits, labels)
    return -per_sequence(lp, rows, batch["input_ids"].shape[0])


def n_labelled(batch: Batch) -> Tensor:
    """Labelled target tokens per sequence (labels after the first); a sequence with none is one clear error."""
    n = (batch["labels"][:, 1:] != -100).sum(-1)
    if bool((n == 0).any()):
        rows = (n == 0).nonzero().flatten().tolist()
        raise UnlearningError(f"batch row(s) {rows} have no labelled token (every label after the first is -100): "
                              "their loss is undefined; give each example at least one answer token")
    return n


CONVENTIONS: tuple[str, ...] = ("open_unlearning", "unpact_v1")


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown loss convention {convention!r}; use one of {CONVENTIONS}")


def nll(model: Any, batch: Batch, convention: str = "open_unlearning") -> Tensor:
    """The NLL of GA/GD: per-token mean over all labelled tokens of the batch (``open_unlearning``:
    sum_{r,t} nll_{r,t} / #labelled), or the mean over sequences of each sequence's sum (``unpact_v1``)."""
    check_convention(convention)
    seq = sequence_nll(model, batch)
    if convention == "unpact_v1":
        return seq.mean()
    return seq.sum() / n_labelled(batch).sum()


def ga(model: Any, forget: Batch, convention: str = "open_unlearning") -> Tensor:
    """Gradient ascent: -NLL on the forget batch (reduction per ``convention``)."""
    return -nll(model, forget, convention)


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


def gdr(model: Any, retain: Batch, convention: str = "open_unlearning") -> Tensor:
    """Gradient-descent retain term: NLL on the retain batch (reduction per ``convention``)."""
    return nll(model, retain, convention)


def klr(model: Any, ref: Any, retain: Batch, convention: str = "open_unlearning") -> Tensor:
    """KL retain term. ``open_unlearning``: mean over unmasked positions of
    sum_v p_ref(v) (log p_ref(v) - log p_theta(v)); ``unpact_v1``: mean over labelled answer tokens of
    sum_v p_theta(v) (log p_theta(v) - log p_ref(v))."""
    check_convention(convention)
    if convention == "unpact_v1":
        logits, _, _ = labelled_logits(model, retain)
        with torch.no_grad():
            ref_logits, _, _ = labelled_logits(ref, retain)
        logp = F.log_softmax(logits, -1)
        kl = (logp.exp() * (logp - F.log_softmax(ref_logits, -1))).sum(-1)
        return kl.sum() / max(kl.numel(), 1)
    cur = _position_logits(model, retain)
    with torch.no_grad():
        ref_lp = F.log_softmax(_position_logits(ref, retain).float(), -1)
    return F.kl_div(F.log_softmax(cur.float(), -1), ref_lp, log_target=True, reduction="batchmean")


def _position_logits(model: Any, batch: Batch) -> Float[Tensor, "n vocab"]:
    """Logits at every position the attention mask keeps (row-major), with the model's output transform."""
    h = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return unembed(model.get_output_embeddings(), h[batch["attention_mask"].bool()],
                   OutputTransform.from_config(model.config))


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
    """Pooled: sum over masked positions and features of (a - b)^2 / (#masked positions * d)."""
    m = mask[..., None].to(a.dtype)
    return (((a - b) ** 2) * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1)


def sequence_mse(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Per sequence, then averaged: mean_r [ sum_{t in mask_r} mean_d (a - b)^2 / |mask_r| ] (open-unlearning's
    ``RMU.compute_activation_loss``, ``src/trainer/unlearn/rmu.py``)."""
    m = mask.to(a.dtype)
    per_pos = ((a - b) ** 2).mean(-1) * m
    n = m.sum(-1)
    if bool((n == 0).any()):
        raise UnlearningError("RMU: a sequence has no position to average over (no labelled token)")
    return (per_pos.sum(-1) / n).mean()


RMU_FORMS: tuple[str, ...] = ("wmdp", "open_unlearning")


def rmu(model: Any, ref: Any, forget: Batch, retain: Batch, layer: int, control: Tensor, alpha: float,
        form: str = "wmdp") -> tuple[Tensor, Tensor]:
    """RMU's two terms, forget MSE(h(x_f), c*u) and alpha * MSE(h(x_r), h_ref(x_r)), in one of two forms:

    * ``"wmdp"`` (default): WMDP's pooled ``F.mse_loss`` (centerforaisafety/wmdp, ``rmu/unlearn.py``), a mean over
      every token and feature of the batch: the forget term on each forget example's own tokens
      (``content_mask``: question and answer, not the chat template it shares with retain examples), the retain
      term on every attention-mask token (padding left out);
    * ``"open_unlearning"``: open-unlearning's per-sequence mean over the labelled positions (``labels != -100``,
      unshifted) of both batches, averaged over sequences (``src/trainer/unlearn/rmu.py``,
      ``compute_activation_loss`` with ``retain_loss_type: EMBED_DIFF``).
    """
    if form not in RMU_FORMS:
        raise UnlearningError(f"unknown RMU form {form!r}; use one of {RMU_FORMS}")
    hf = hidden_at(model, forget, layer)
    hr = hidden_at(model, retain, layer)
    with torch.no_grad():
        hr_ref = hidden_at(ref, retain, layer)
    if form == "open_unlearning":
        f = sequence_mse(hf, control.expand_as(hf), forget["labels"] != -100)
        return f, alpha * sequence_mse(hr, hr_ref, retain["labels"] != -100)
    f = masked_mse(hf, control.expand_as(hf), forget["content_mask"])
    return f, alpha * masked_mse(hr, hr_ref, retain["attention_mask"])
