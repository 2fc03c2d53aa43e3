"""Gradient token attributions of LP(x, y), the mean teacher-forced log-prob of the answer tokens.

With e_i the input embedding of prompt token i (after the model's own embedding scaling, e.g. Gemma's sqrt(d)):

* gradient x input:      A_i = e_i . dLP/de_i                                  (one forward + backward)
* integrated gradients:  A_i = (e_i - b_i) . int_0^1 dLP/de_i (b + a (e - b)) da

Integrated gradients moves only the attributable positions along the straight path from the baseline b
(``"zero"``: the zero vector; ``"token"``: the embedding of ``loo_replace``'s baseline token, unk else pad
else eos) to e; every
other position keeps its embedding. The integral uses ``steps``-point Gauss-Legendre quadrature on [0, 1]
(captum's default rule), so completeness holds up to the quadrature error:
sum_i A_i = LP(x) - LP(x with attributable embeddings = b). Each result table records that error. On SmolLM2
(zero baseline, LP gap ~2.5 nats) the median error is ~0.15 nats at 32 points, ~0.02 at 64 (the default) and
~0.006 at 128 (measured on four built-in facts); over 40 known facts (``analyses/gradient_vs_loo.py``) the 64-point
error has median 0.045 and maximum 0.26 nats, so check the table's column before trusting small attributions, and
raise ``steps`` where it is large. From the ``"token"`` baseline 64 points are too few on SmolLM2: median error
0.25 nats, maximum 1.13 on the same 40 facts.
The cost is ``steps`` forward + backward passes, against n forwards for leave-one-out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from unpact_mech.attribution.loo import baseline_token_id
from unpact_mech.attribution.registry import register
from unpact_mech.attribution.table import make_table
from unpact_mech.core.errors import UnpactError
from unpact_mech.model.backends import KV_PREFIX, fast_path, require
from unpact_mech.model.backends.kernel import AnswerIndex, answer_logprobs, per_sequence
from unpact_mech.model.subject import Subject
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import DEFAULT_BATCH_TOKENS

BASELINES: tuple[str, ...] = ("zero", "token")


def _plain_model(subject: Subject) -> Any:
    """The subject's plain HF backend (shares its weights); hooks attached to the subject would be bypassed, so
    they are refused."""
    view = fast_path(require(subject.backend, KV_PREFIX, "gradient attribution"))
    if view is None:
        raise UnpactError("gradient attributions run the plain model; detach the intervention hooks first")
    return view


def embed_lp(kvb: Any, embeds: Float[Tensor, "batch pos d_model"], tp: TokenizedProbe) -> Float[Tensor, " batch"]:
    """LP(x, y) of every row of ``embeds`` (each row is one version of ``tp``'s input embeddings); differentiable."""
    hidden = kvb.body(inputs_embeds=embeds).last_hidden_state
    n = embeds.shape[0]
    idx = AnswerIndex.build([(tp.ids, tp.prompt_len)] * n, embeds.device)
    lp, _ = answer_logprobs(kvb.logits(idx.gather(hidden)), idx.targets)
    return per_sequence(lp, idx.owner, n) / len(tp.answer_ids)


def input_embeddings(kvb: Any, tp: TokenizedProbe) -> Float[Tensor, "pos d_model"]:
    """The embeddings the model feeds its first block for ``tp``'s ids (its own embedding module, any scaling)."""
    with torch.no_grad():
        return kvb.model.get_input_embeddings()(torch.tensor([list(tp.ids)], device=kvb.device))[0]


def baseline_embedding(kvb: Any, tokenizer: Any, baseline: str) -> Float[Tensor, " d_model"]:
    """b: the zero vector, or the embedding of the baseline token (unk, else pad, else eos)."""
    if baseline not in BASELINES:
        raise UnpactError(f"unknown integrated-gradients baseline {baseline!r}: use one of {BASELINES}")
    emb = kvb.model.get_input_embeddings()
    d = emb.weight.shape[1]
    if baseline == "zero":
        return torch.zeros(d, device=kvb.device, dtype=kvb.dtype)
    with torch.no_grad():
        return emb(torch.tensor([[baseline_token_id(tokenizer)]], device=kvb.device))[0, 0]


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``steps``-point Gauss-Legendre rule on [0, 1]."""
    if steps < 1:
        raise UnpactError(f"integrated gradients needs steps >= 1, got {steps}")
    x, w = np.polynomial.legendre.leggauss(steps)
    return (x + 1) / 2, w / 2


def grad_x_input_scores(subject: Subject, tp: TokenizedProbe) -> Float[Tensor, " n_attributable"]:
    """e_i . dLP/de_i for each attributable position of one probe."""
    kvb = _plain_model(subject)
    pos = list(tp.attributable)
    e = input_embeddings(kvb, tp)[None].clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(embed_lp(kvb, e, tp).sum(), e)
    return (e[0, pos].double() * g[0, pos].double()).sum(-1).detach()


def integrated_gradients_scores(
    subject: Subject, tp: TokenizedProbe, steps: int = 64, baseline: str = "zero", batch_tokens: int = DEFAULT_BATCH_TOKENS
) -> tuple[Float[Tensor, " n_attributable"], float, float]:
    """(A, LP(x), LP(baseline)) for one probe; see the module docstring. Steps are batched by ``batch_tokens``."""
    kvb = _plain_model(subject)
    alphas, weights = gauss_legendre(steps)
    pos = torch.tensor(list(tp.attributable), device=kvb.device)
    e = input_embeddings(kvb, tp)
    b = baseline_embedding(kvb, subject.tokenizer, baseline)
    diff = torch.zeros_like(e)
    diff[pos] = e[pos] - b
    start = e - diff  # the baseline input: attributable rows = b, the others unchanged
    total = torch.zeros(len(pos), device=kvb.device, dtype=torch.float64)
    rows = max(1, batch_tokens // len(tp.ids))
    for c in range(0, steps, rows):
        a = torch.tensor(alphas[c : c + rows], device=kvb.device, dtype=e.dtype)
        w = torch.tensor(weights[c : c + rows], device=kvb.device, dtype=torch.float64)
        x = (start[None] + a[:, None, None] * diff[None]).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(embed_lp(kvb, x, tp).sum(), x)
        total += (w[:, None, None] * g[:, pos].double()).sum(0).mul(diff[pos].double()).sum(-1)
    with torch.no_grad():
        ends = embed_lp(kvb, torch.stack([e, start]), tp)
    return total, float(ends[0]), float(ends[1])


def _table(tp: TokenizedProbe, model: str, method: str, scores: Tensor, **extra: Any) -> list[dict[str, Any]]:
    return [{"probe_id": tp.probe.id, "model": model, "method": method, "position": p, "token": tp.tokens[p],
             "score": float(s), **extra} for p, s in zip(tp.attributable, scores.tolist())]


def _progress(tprobes: Sequence[TokenizedProbe], desc: str, progress: bool) -> Any:
    return tqdm(tprobes, desc=desc, unit="probe", disable=not progress)


@register("grad_x_input")
def grad_x_input(subject: Subject, tprobes: Sequence[TokenizedProbe], progress: bool = False) -> pd.DataFrame:
    """Gradient x input per attributable token: one forward and one backward pass per probe."""
    rows = [r for tp in _progress(tprobes, "grad x input", progress)
            for r in _table(tp, subject.name, "grad_x_input", grad_x_input_scores(subject, tp))]
    return make_table(rows)


@register("integrated_gradients")
def integrated_gradients(subject: Subject, tprobes: Sequence[TokenizedProbe], steps: int = 64,
                         baseline: str = "zero", progress: bool = False) -> pd.DataFrame:
    """Integrated gradients per attributable token (``steps`` Gauss-Legendre points, ``baseline`` zero|token).

    Extra columns: ``lp`` = LP(x), ``lp_baseline``, and ``completeness_error`` = sum_i A_i - (lp - lp_baseline)
    (the same for every row of a probe); ``DataFrame.attrs`` records ``steps`` and ``baseline``.
    """
    rows = []
    for tp in _progress(tprobes, "integrated gradients", progress):
        a, lp, lp0 = integrated_gradients_scores(subject, tp, steps, baseline)
        rows += _table(tp, subject.name, "integrated_gradients", a, lp=lp, lp_baseline=lp0,
                       completeness_error=float(a.sum()) - (lp - lp0))
    df = make_table(rows)
    df.attrs.update({"steps": steps, "baseline": baseline})
    return df
