"""Leave-one-out contributions, paper eq.1-2: C(x_i, y) = LP(x, y) - LP(x without x_i, y).

All n variants of a probe (and of many probes) go through :func:`score_sequences` as right-padded chunks, so
the cost is about one batched forward of the variants. ``variant="delete"`` removes the token (the paper);
``variant="replace"`` substitutes a baseline token (what captum's FeatureAblation does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from unpact_mech.attribution import register
from unpact_mech.probes import TokenizedProbe
from unpact_mech.scoring import DEFAULT_BATCH_TOKENS, memo_of, score_sequences
from unpact_mech.tables import make_table

Variant = Literal["delete", "replace"]


@dataclass(frozen=True)
class LooResult:
    """Per probe: LP of the full prompt and the contribution of each attributable position."""

    tprobe: TokenizedProbe
    lp: float
    contributions: Float[Tensor, " n_attributable"]

    @property
    def positions(self) -> tuple[int, ...]:
        return self.tprobe.attributable


def baseline_token_id(tokenizer: Any, baseline: int | str | None = None) -> int:
    """Replacement token for ``variant='replace'``: given id/string, else unk, pad or eos."""
    if isinstance(baseline, int):
        return baseline
    if isinstance(baseline, str):
        ids = tokenizer(baseline, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"baseline token {baseline!r} is {len(ids)} tokens; give a single-token string")
        return ids[0]
    for attr in ("unk_token_id", "pad_token_id", "eos_token_id"):
        val = getattr(tokenizer, attr, None)
        if val is not None:
            return int(val)
    raise ValueError("tokenizer has no unk/pad/eos token; pass baseline_token explicitly")


def loo_variants(tp: TokenizedProbe, variant: Variant = "delete", baseline_id: int = 0) -> list[tuple[list[int], int]]:
    """The (ids, answer_start) sequences for each attributable position of a probe."""
    ids = list(tp.ids)
    out = []
    for i in tp.attributable:
        if variant == "delete":
            out.append((ids[:i] + ids[i + 1 :], tp.prompt_len - 1))
        elif variant == "replace":
            out.append((ids[:i] + [baseline_id] + ids[i + 1 :], tp.prompt_len))
        else:
            raise ValueError(f"unknown leave-one-out variant {variant!r}: use 'delete' or 'replace'")
    return out


def _hf_causal_lm(subject: Any) -> Any | None:
    """A plain HF causal LM of the subject with a KV cache (the bridge's wrapped attention has none)."""
    get = getattr(subject, "plain_model", None)
    hf = get() if get is not None else None
    return hf if hf is not None and hasattr(hf, "model") and hasattr(hf, "lm_head") else None


def _cache_kw(hf: Any) -> str:
    """Name of the KV-cache argument (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(hf.model.forward).parameters else "past_key_values"


def _answer_logprobs(hf: Any, hidden: Tensor, rows: Tensor, cols: Tensor, targets: Tensor) -> Tensor:
    logits = hf.lm_head(hidden[rows, cols]).double()
    return torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]


def _loo_prefix_cached(
    hf: Any, tp: TokenizedProbe, variant: Variant, baseline_id: int, batch_tokens: int
) -> tuple[float, Tensor]:
    """LOO for one probe, reusing the KV cache of the prefix shared by all variants.

    Every variant equals the original up to the first attributable position p0 (template, system prompt), so
    that prefix is run once; each variant's remainder runs on a copy of its cache, and only the answer
    positions go through the unembedding.
    """
    from transformers import DynamicCache

    ids = torch.tensor([tp.ids])
    L, P = len(tp.ids), tp.prompt_len
    p0 = min(tp.attributable)
    with torch.no_grad():
        cache = DynamicCache(config=hf.config)
        kw = _cache_kw(hf)
        out = hf.model(input_ids=ids, use_cache=True, **{kw: cache})
        q = torch.arange(P - 1, L - 1)
        full = float(_answer_logprobs(hf, out.last_hidden_state, torch.zeros_like(q), q, torch.tensor(tp.answer_ids)).mean())
        variants = loo_variants(tp, variant, baseline_id)
        rem_len = len(variants[0][0]) - p0
        start = variants[0][1]
        step = max(1, batch_tokens // max(1, rem_len + p0))
        lps = []
        for c0 in range(0, len(variants), step):
            chunk = variants[c0 : c0 + step]
            n = len(chunk)
            rem = torch.tensor([v[0][p0:] for v in chunk])
            kv = DynamicCache(config=hf.config)
            for layer, lay in enumerate(cache.layers):
                kv.update(lay.keys[:, :, :p0].expand(n, -1, -1, -1).contiguous(),
                          lay.values[:, :, :p0].expand(n, -1, -1, -1).contiguous(), layer)
            pos = torch.arange(p0, p0 + rem_len)[None].expand(n, -1)
            h = hf.model(input_ids=rem, position_ids=pos, use_cache=True, **{kw: kv}).last_hidden_state
            qv = torch.arange(start - 1, start - 1 + tp.n_answer) - p0
            rows = torch.arange(n).repeat_interleave(len(qv))
            cols = qv.repeat(n)
            tg = torch.tensor(tp.answer_ids).repeat(n)
            lps.append(_answer_logprobs(hf, h, rows, cols, tg).view(n, -1).mean(1))
    return full, full - torch.cat(lps)


def loo_contributions(
    subject: Any,
    tprobes: Sequence[TokenizedProbe],
    variant: Variant = "delete",
    baseline_token: int | str | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    hooks: Sequence[Any] = (),
    progress: bool = False,
    prefix_cache: bool = True,
) -> list[LooResult]:
    """Leave-one-out contributions for many probes.

    Default: per probe, the prefix shared by all variants is computed once (KV cache) and the variants'
    remainders run as one batch. With ``hooks`` (or ``prefix_cache=False``) every variant of every probe
    runs in full through the bridge as right-padded chunks of at most ``batch_tokens`` tokens.
    """
    base_id = baseline_token_id(subject.tokenizer, baseline_token) if variant == "replace" else 0
    if variant not in ("delete", "replace"):
        raise ValueError(f"unknown leave-one-out variant {variant!r}: use 'delete' or 'replace'")
    memo = memo_of(subject, hooks)
    if memo is not None:
        keys = [("loo", variant, base_id, tuple(tp.ids), tp.prompt_len, tuple(tp.attributable)) for tp in tprobes]
        todo = {k: tp for tp, k in zip(tprobes, keys) if k not in memo}
        if todo:
            memo.update(zip(todo, _loo(subject, list(todo.values()), variant, base_id, batch_tokens, hooks, progress,
                                       prefix_cache)))
        return [LooResult(tp, memo[k].lp, memo[k].contributions) for tp, k in zip(tprobes, keys)]
    return _loo(subject, tprobes, variant, base_id, batch_tokens, hooks, progress, prefix_cache)


def _loo(subject: Any, tprobes: Sequence[TokenizedProbe], variant: str, base_id: int, batch_tokens: int,
         hooks: Sequence[Any], progress: bool, prefix_cache: bool) -> list[LooResult]:
    hf = _hf_causal_lm(subject) if not hooks and prefix_cache else None
    if hf is not None:
        from tqdm.auto import tqdm

        results = []
        for tp in tqdm(tprobes, desc="leave-one-out", disable=not progress or len(tprobes) < 2, leave=False):
            full, contrib = _loo_prefix_cached(hf, tp, variant, base_id, batch_tokens)
            results.append(LooResult(tp, full, contrib.double()))
        return results
    seqs: list[tuple[list[int], int]] = []
    spans = []
    for tp in tprobes:
        start = len(seqs)
        seqs.append((list(tp.ids), tp.prompt_len))
        seqs += loo_variants(tp, variant, base_id)
        spans.append((start, len(seqs)))
    scores = score_sequences(subject, seqs, hooks, batch_tokens, progress="leave-one-out" if progress else False)
    results = []
    for tp, (a, b) in zip(tprobes, spans):
        full = scores[a].lp
        contrib = torch.tensor([full - s.lp for s in scores[a + 1 : b]], dtype=torch.float64)
        results.append(LooResult(tp, full, contrib))
    return results


def loo_table(results: Sequence[LooResult], model: str, method: str) -> pd.DataFrame:
    """Tidy table of leave-one-out results (one row per attributable position)."""
    rows = [
        {
            "probe_id": r.tprobe.probe.id,
            "model": model,
            "method": method,
            "position": pos,
            "token": r.tprobe.tokens[pos],
            "score": float(c),
        }
        for r in results
        for pos, c in zip(r.positions, r.contributions.tolist())
    ]
    return make_table(rows)


@register("loo")
def loo(subject: Any, tprobes: Sequence[TokenizedProbe], **kw: Any) -> pd.DataFrame:
    """Paper eq.1-2 by deletion."""
    return loo_table(loo_contributions(subject, tprobes, "delete", **kw), subject.name, "loo")


@register("loo_replace")
def loo_replace(subject: Any, tprobes: Sequence[TokenizedProbe], **kw: Any) -> pd.DataFrame:
    """Leave-one-out by replacing each token with a baseline token."""
    return loo_table(loo_contributions(subject, tprobes, "replace", **kw), subject.name, "loo_replace")
