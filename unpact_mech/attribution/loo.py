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
from tqdm.auto import tqdm

from unpact_mech.attribution.registry import register
from unpact_mech.attribution.table import make_table
from unpact_mech.core.display import loo_block, nb_html
from unpact_mech.core.errors import UnpactError
from unpact_mech.core.log import say
from unpact_mech.model.backends import fast_path
from unpact_mech.model.backends.hf import HFBackend, expand_cache
from unpact_mech.model.backends.kernel import AnswerIndex, answer_logprobs, per_sequence
from unpact_mech.model.subject import Subject
from unpact_mech.probes import TokenizedProbe
from unpact_mech.probes.keytokens import select_keytokens
from unpact_mech.scoring import DEFAULT_BATCH_TOKENS, check_finite, memo_of, right_pad, score_sequences

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

    def _repr_html_(self) -> str:
        """Notebook display: the question's tokens coloured by C, each score printed, KeyTokens (default
        parameters) outlined."""
        keys = {self.positions[i] for i in select_keytokens(self.contributions)}
        return nb_html(loo_block(self.tprobe, self.contributions.tolist(), keys, self.lp),
                       "<div class='sc'>leave-one-out C(x_i, y) = LP(x, y) - LP(x without x_i, y); red supports the "
                       "answer; outlined = KeyTokens (default alpha, beta)</div>")


def baseline_token_id(tokenizer: Any, baseline: int | str | None = None) -> int:
    """Replacement token for ``variant='replace'``: given id/string, else unk, pad or eos."""
    if isinstance(baseline, int):
        return baseline
    if isinstance(baseline, str):
        ids = tokenizer(baseline, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UnpactError(f"baseline token {baseline!r} is {len(ids)} tokens; give a single-token string")
        return ids[0]
    for attr in ("unk_token_id", "pad_token_id", "eos_token_id"):
        val = getattr(tokenizer, attr, None)
        if val is not None:
            return int(val)
    raise UnpactError("tokenizer has no unk/pad/eos token; pass baseline_token explicitly")


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
            raise UnpactError(f"unknown leave-one-out variant {variant!r}: use 'delete' or 'replace'")
    return out


def _loo_prefix_cached(
    kvb: HFBackend, tprobes: Sequence[TokenizedProbe], variant: Variant, baseline_id: int, batch_tokens: int,
    progress: bool = False,
) -> list[tuple[float, Tensor]]:
    """LOO for probes that share one prefix, reusing its KV cache for every variant of every probe.

    Every variant equals its original up to the first attributable position p0 (template, system prompt), and
    probes in one chat template share that prefix too. The prefix runs once; the originals and all their
    variants run their remainders as right-padded batches on copies of its cache, and only the answer
    positions go through the unembedding.
    """
    dev = kvb.device
    p0 = min(tprobes[0].attributable)
    prefix = list(tprobes[0].ids[:p0])
    cache = kvb.new_cache()
    kvb.hidden(torch.tensor([prefix], device=dev), cache)
    seqs: list[tuple[list[int], int]] = []  # per probe: the full prompt, then its deletions
    for tp in tprobes:
        seqs += [(list(tp.ids), tp.prompt_len), *loo_variants(tp, variant, baseline_id)]
    width = max(len(ids) for ids, _ in seqs)
    step = max(1, batch_tokens // max(1, width))
    chunks = range(0, len(seqs), step)
    bar = long_job_bar(chunks, tprobes[0], len(seqs)) if len(tprobes) == 1 else chunks
    if progress and len(tprobes) > 1:
        bar = tqdm(chunks, desc="leave-one-out", unit="batch", leave=False)
    lps = []
    for c0 in bar:
        chunk = seqs[c0 : c0 + step]
        n, w = len(chunk), max(len(ids) for ids, _ in chunk) - p0
        rem = right_pad([ids[p0:] for ids, _ in chunk], 0, dev)  # right padding: never seen by the answer
        pos = torch.arange(p0, p0 + w, device=dev)[None].expand(n, -1)
        h = kvb.hidden(rem, expand_cache(cache, n), position_ids=pos)
        # an answer starting at ``start`` sits p0 positions earlier in the remainder
        idx = AnswerIndex.build([(ids[p0:], start - p0) for ids, start in chunk], dev)
        lp, _ = answer_logprobs(kvb.logits(idx.gather(h)), idx.targets)
        lps.append(per_sequence(lp, idx.owner, n))
    seq_lp = torch.cat(lps).cpu()  # summed answer log-prob per sequence
    out, i = [], 0
    for tp in tprobes:
        vals = seq_lp[i : i + len(tp.attributable) + 1] / tp.n_answer
        i += len(tp.attributable) + 1
        out.append((float(vals[0]), float(vals[0]) - vals[1:]))
    return out


LONG_SPAN = 24  # probes with at least this many attributable tokens take the per-deletion prefix reuse
REUSE_CHUNK = 8  # deletions per batch in the prefix reuse: a row recomputes at most REUSE_CHUNK - 1 positions
QUERY_CHUNK = 256  # query positions per forward of those rows (attention scores linear in the prompt's length)


def _loo_prefix_reuse(kvb: HFBackend, tp: TokenizedProbe, variant: Variant, baseline_id: int, batch_tokens: int,
                      chunk: int = REUSE_CHUNK) -> tuple[float, Tensor]:
    """LOO of one long probe where deletion i reuses the original run's KV cache of positions < i.

    Attributable positions are cut into chunks of ``chunk`` consecutive ones; the original runs once, in pieces
    cut at each chunk's first position m, extending one cache. At each cut the chunk's variants run on a copy of
    that cache: row i is ids[m:i] + ids[i+1:] (``replace``: ids[m:i] + [baseline] + ids[i+1:]) at positions m..,
    so no row is padded and each recomputes at most ``chunk - 1`` positions it shares with the original. Only the
    answer positions go through the unembedding.

    Memory: the original's cache once, plus one batch's copies (rows x prefix, bounded by ``batch_tokens``),
    freed before the next chunk; the rows' suffixes run ``QUERY_CHUNK`` positions at a time, so eager attention
    holds rows x heads x ``QUERY_CHUNK`` x length scores, not x length squared. Linear in the prompt's length.
    """
    dev, ids = kvb.device, list(tp.ids)
    span = sorted(tp.attributable)
    rows_max = max(1, batch_tokens // max(1, len(ids)))
    step = max(1, min(chunk, rows_max))
    groups = [span[i : i + step] for i in range(0, len(span), step)]
    cache, finals, done = kvb.new_cache(), [], 0

    def extend(to: int) -> None:  # the original run from position ``done`` to ``to``, on the one cache
        nonlocal done
        for a in range(done, to, QUERY_CHUNK):
            b = min(to, a + QUERY_CHUNK)
            pos = torch.arange(a, b, device=dev)[None]
            finals.append(kvb.hidden(torch.tensor([ids[a:b]], device=dev), cache, position_ids=pos))
        done = max(done, to)

    shift = 1 if variant == "delete" else 0  # a deletion moves the answer one position earlier
    lp_without: dict[int, float] = {}
    for gi in long_job_bar(range(len(groups)), tp, len(span) + 1):  # progress shown for a long probe
        g = groups[gi]
        m = g[0]
        extend(m)
        mid = [] if variant == "delete" else [baseline_id]
        seqs = [ids[m:i] + mid + ids[i + 1 :] for i in g]
        n, w = len(seqs), len(seqs[0])
        pos = torch.arange(m, m + w, device=dev)[None].expand(n, -1)
        rows, kv = torch.tensor(seqs, device=dev), expand_cache(cache, n)
        # the rows' suffixes run QUERY_CHUNK positions at a time on their growing cache, so the attention scores
        # held at once are rows x heads x QUERY_CHUNK x length: linear in the prompt, not quadratic
        h = torch.cat([kvb.hidden(rows[:, a : a + QUERY_CHUNK], kv, position_ids=pos[:, a : a + QUERY_CHUNK])
                       for a in range(0, w, QUERY_CHUNK)], 1)
        del kv
        start = tp.prompt_len - shift - m  # the answer's first token in suffix coordinates
        ix = AnswerIndex.build([(s, start) for s in seqs], dev)
        lp, _ = answer_logprobs(kvb.logits(ix.gather(h)), ix.targets)
        lp_without.update(zip(g, (per_sequence(lp, ix.owner, n) / tp.n_answer).tolist()))
    extend(len(ids))
    idx = AnswerIndex.build([(ids, tp.prompt_len)], dev)
    full = float(answer_logprobs(kvb.logits(idx.gather(torch.cat(finals, 1))), idx.targets)[0].sum()) / tp.n_answer
    return full, torch.tensor([full - lp_without[i] for i in tp.attributable], dtype=torch.float64)


LONG_JOB_TOKENS = 200_000  # about ten seconds of forward passes on 2 CPU cores for a 135M model


def long_job_bar(chunks: range, tp: TokenizedProbe, passes: int) -> Any:
    """The chunks of one probe, with a progress bar and the pass count announced when the probe is long."""
    if passes * len(tp.ids) < LONG_JOB_TOKENS:
        return chunks
    say(f"[unpact] leave-one-out of probe '{tp.probe.id}': {passes} forward passes of {len(tp.ids)} tokens "
        f"in {len(chunks)} batches", stderr=True)
    return tqdm(chunks, desc=f"leave-one-out {tp.probe.id}", unit="batch", leave=False)


def loo_contributions(
    subject: Subject,
    tprobes: Sequence[TokenizedProbe],
    variant: Variant = "delete",
    baseline_token: int | str | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    hooks: Sequence[Any] = (),
    progress: bool = False,
    prefix_cache: bool = True,
    prefix_reuse: bool = True,
) -> list[LooResult]:
    """Leave-one-out contributions for many probes.

    Default: per probe, the prefix shared by all variants is computed once (KV cache) and the variants'
    remainders run as one batch (:func:`unpact_mech.model.backends.fast_path`); a probe with at least ``LONG_SPAN``
    attributable tokens reuses, for deletion i, the original's cache of positions < i (:func:`_loo_prefix_reuse`;
    ``prefix_reuse=False`` turns that off). With hooks given or attached (``hooks.applied``), a
    backend without ``kv_prefix``, or ``prefix_cache=False``, every variant of every probe runs in full through
    the backend as right-padded chunks of at most ``batch_tokens`` tokens.
    """
    base_id = baseline_token_id(subject.tokenizer, baseline_token) if variant == "replace" else 0
    if variant not in ("delete", "replace"):
        raise UnpactError(f"unknown leave-one-out variant {variant!r}: use 'delete' or 'replace'")
    memo = memo_of(subject, hooks)
    if memo is not None:
        keys = [("loo", variant, base_id, tuple(tp.ids), tp.prompt_len, tuple(tp.attributable)) for tp in tprobes]
        todo = {k: tp for tp, k in zip(tprobes, keys) if k not in memo}
        if todo:
            memo.update(zip(todo, _loo(subject, list(todo.values()), variant, base_id, batch_tokens, hooks, progress,
                                       prefix_cache, prefix_reuse)))
        results = [LooResult(tp, memo[k].lp, memo[k].contributions) for tp, k in zip(tprobes, keys)]
    else:
        results = _loo(subject, tprobes, variant, base_id, batch_tokens, hooks, progress, prefix_cache, prefix_reuse)
    for r in results:
        check_finite(subject, r.tprobe, torch.cat([torch.tensor([r.lp]), r.contributions.double()]),
                     "leave-one-out log-prob")
    return results


def _loo(subject: Subject, tprobes: Sequence[TokenizedProbe], variant: Variant, base_id: int, batch_tokens: int,
         hooks: Sequence[Any], progress: bool, prefix_cache: bool, prefix_reuse: bool = True) -> list[LooResult]:
    kvb = fast_path(subject.backend, hooks) if prefix_cache else None
    if kvb is not None:

        groups: dict[tuple[int, ...], list[int]] = {}  # probes sharing the prefix before their first attributable token
        found: dict[int, LooResult] = {}
        for k, tp in enumerate(tprobes):
            if prefix_reuse and len(tp.attributable) >= LONG_SPAN:  # long prompts: each deletion reuses the cache before it
                full, contrib = _loo_prefix_reuse(kvb, tp, variant, base_id, batch_tokens)
                found[k] = LooResult(tp, full, contrib)
                continue
            groups.setdefault(tuple(tp.ids[: min(tp.attributable)]), []).append(k)
        for members in groups.values():
            tps = [tprobes[k] for k in members]
            for k, tp, (full, contrib) in zip(members, tps, _loo_prefix_cached(kvb, tps, variant, base_id,
                                                                              batch_tokens, progress)):
                found[k] = LooResult(tp, full, contrib.double())
        return [found[k] for k in range(len(tprobes))]
    seqs: list[tuple[list[int], int]] = []
    spans = []
    for tp in tprobes:
        start = len(seqs)
        seqs.append((list(tp.ids), tp.prompt_len))
        seqs += loo_variants(tp, variant, base_id)
        spans.append((start, len(seqs)))
    total = sum(len(ids) for ids, _ in seqs)
    if total >= LONG_JOB_TOKENS:
        say(f"[unpact] leave-one-out: {len(seqs)} forward passes, {total} tokens", stderr=True)
    scores = score_sequences(subject, seqs, hooks, batch_tokens,
                             progress="leave-one-out" if progress or total >= LONG_JOB_TOKENS else False)
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
def loo(subject: Subject, tprobes: Sequence[TokenizedProbe], **kw: Any) -> pd.DataFrame:
    """Paper eq.1-2 by deletion."""
    return loo_table(loo_contributions(subject, tprobes, "delete", **kw), subject.name, "loo")


@register("loo_replace")
def loo_replace(subject: Subject, tprobes: Sequence[TokenizedProbe], **kw: Any) -> pd.DataFrame:
    """Leave-one-out by replacing each token with a baseline token."""
    return loo_table(loo_contributions(subject, tprobes, "replace", **kw), subject.name, "loo_replace")
