"""Teacher-forced answer log-probs, top-1 checks and greedy answers, with or without an emphasis.

LP(x, y) is the mean log-prob of the answer tokens given the prompt (paper eq.1). Sequences of different
lengths are batched with *right* padding: under a causal mask real tokens never attend to the padding that
follows them and positions start at 0 in every row, so a batched score equals the unbatched one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from unpact_mech.core.errors import NonFiniteError, UnpactError
from unpact_mech.core.log import say
from unpact_mech.hooks import EMPHASIS_MODES, Emphasis
from unpact_mech.model.backends import fast_path
from unpact_mech.model.backends.kernel import AnswerIndex, answer_logprobs, logprob_moments
from unpact_mech.model.subject import Subject
from unpact_mech.probes import TokenizedProbe

Hook = tuple[Any, Callable[..., Any]]
# hooks for every chunk, or a function of a chunk's sequence indices (row r of the batch = chunk[r])
HookSource = Sequence[Hook] | Callable[[list[int]], Sequence[Hook]]
DEFAULT_BATCH_TOKENS = 4096


@dataclass(frozen=True)
class SeqScore:
    """Per answer token: log-prob of the gold token and whether it is the model's top-1."""

    logprobs: Float[Tensor, " n_answer"]
    top1: Bool[Tensor, " n_answer"]

    @property
    def lp(self) -> float:
        return float(self.logprobs.mean())


def pad_token_id(tokenizer: Any) -> int:
    """The one pad-id rule: the tokenizer's pad token, else EOS, else UNK, else 0 (padding is never attended to,
    so any id is exact; these keep embeddings of real tokens)."""
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        val = getattr(tokenizer, attr, None)
        if val is not None:
            return int(val)
    return 0


def forward_logits(
    subject: Subject, ids: Int[Tensor, "batch pos"], hooks: Sequence[Hook] = ()
) -> Float[Tensor, "batch pos vocab"]:
    """One forward pass through the subject's backend, with optional (hook_name, fn) hooks."""
    return subject.backend.forward(ids, hooks)


def memo_of(subject: Subject, hooks: Any = ()) -> dict[Any, Any] | None:
    """The subject's result memo when it may be used (no hooks given or attached), else None."""
    fn = getattr(subject, "memo_for", None)
    return fn(hooks) if fn is not None else None


def memoized(subject: Subject, hooks: Any, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()``, or its memoized value for ``key`` when the subject's memo may be used."""
    memo = memo_of(subject, hooks)
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def chunk_by_tokens(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices (longest first) so each group's rows x max length stays within ``batch_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1) * longest > batch_tokens:
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> Int[Tensor, "batch pos"]:
    """Right-pad token id lists into one tensor on ``device``."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        out[r, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out.to(device)


def check_emphasis(subject: Subject, emphasis: Emphasis) -> None:
    """One clear error when the subject's backend lacks a hook point the emphasis mode needs."""
    missing = [n for n in emphasis.hook_names(subject.n_layers) if not subject.backend.supports_hook(n)]
    if missing:
        ok = [m for m in EMPHASIS_MODES
              if all(subject.backend.supports_hook(n) for n in Emphasis(m, (), 1.0).hook_names(subject.n_layers))]
        raise UnpactError(f"route {emphasis.mode!r} needs hook point {missing[0]}, which the {subject.backend.name} "
                          f"backend lacks; the {subject.backend.name} backend supports "
                          f"route={', '.join(map(repr, ok)) or 'none'}")


def emphasis_hooks(subject: Subject, emphasis: Emphasis) -> Sequence[Hook]:
    """The TransformerLens hooks of ``emphasis`` (checked against the subject's backend)."""
    check_emphasis(subject, emphasis)
    return emphasis.hooks(subject.n_layers)


def _kv_score(kvb: Any, seqs: Sequence[tuple[Sequence[int], int]], owners: list[int], emphasis: Emphasis | None,
              pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Answer log-probs, top-1 and owners of a chunk on the KV-cache backend (shared prefix run once)."""
    rows = [list(ids) for ids, _ in seqs]
    run = kvb.emphasis_prefill(rows, None if emphasis is None else emphasis.rows(owners), pad,
                               share_until=min(start for _, start in seqs) - 1)
    dev = run.hidden.device
    idx = AnswerIndex.build(seqs, dev, owners=owners)
    # row r's token j sits at column offsets[r] + j - prefix of the left-padded suffixes
    shift = torch.tensor([o - run.prefix for o in run.offsets], device=dev)
    idx = AnswerIndex(idx.rows, idx.cols + shift[idx.rows], idx.targets, idx.owner)
    lp, top = answer_logprobs(kvb.logits(idx.gather(run.hidden)), idx.targets)
    return lp.cpu(), top.cpu(), idx.owner.cpu()


def score_sequences(
    subject: Subject,
    seqs: Sequence[tuple[Sequence[int], int]],
    hooks: HookSource = (),
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool | str = False,
    emphasis: Emphasis | None = None,
) -> list[SeqScore]:
    """Score many (ids, answer_start) sequences: answer tokens are ids[answer_start:].

    Sequences are sorted by length and cut into chunks of at most ``batch_tokens`` tokens. ``hooks`` may be a
    function of the chunk (the sequence indices of the batch rows) for per-row interventions; ``emphasis``
    declares one instead (:class:`~unpact_mech.hooks.Emphasis`, positions per sequence). Without hooks given or attached, a
    ``kv_prefix`` backend scores on its KV cache with the chunk's shared prefix (the chat template) run once,
    emphasis included (:meth:`~unpact_mech.model.backends.hf.HFBackend.emphasis_prefill`); otherwise the backend's
    forward runs right-padded batches with the hooks. The two paths are tested equal. Without hooks or
    emphasis, a subject with a ``memo`` dict (see ``Subject.memoize``) reuses earlier scores.
    """
    if emphasis is not None and (callable(hooks) or hooks):
        raise UnpactError("give either hooks or an emphasis to score with, not both")
    if emphasis is not None:
        hooks = ()
        check_emphasis(subject, emphasis)
    for ids, start in seqs:
        if not 0 < start < len(ids):
            raise UnpactError(f"answer start {start} outside a sequence of length {len(ids)}")
    memo = memo_of(subject, hooks) if emphasis is None else None
    keys = [("score", tuple(ids), start) for ids, start in seqs] if memo is not None else []
    out: list[SeqScore | None] = [memo.get(k) for k in keys] if memo is not None else [None] * len(seqs)
    todo = [i for i, s in enumerate(out) if s is None]
    pad = pad_token_id(subject.tokenizer)
    chunks = [[todo[j] for j in c] for c in chunk_by_tokens([len(seqs[i][0]) for i in todo], batch_tokens)]
    desc = progress if isinstance(progress, str) else "scoring"
    bar = tqdm(chunks, desc=desc, disable=not progress or len(chunks) < 2, leave=False)
    kvb = fast_path(subject.backend, hooks, max(len(seqs[i][0]) for i in todo)) if todo else None
    for chunk in bar:
        if kvb is not None:
            lp, top, own = _kv_score(kvb, [seqs[i] for i in chunk], chunk, emphasis, pad)
        else:
            h = hooks(chunk) if callable(hooks) else hooks
            if emphasis is not None:
                h = emphasis.rows(chunk).hooks(subject.n_layers)
            batch = right_pad([seqs[i][0] for i in chunk], pad, subject.device)
            logits = forward_logits(subject, batch, h)
            idx = AnswerIndex.build([seqs[i] for i in chunk], logits.device, owners=chunk)
            lp, top = (t.cpu() for t in answer_logprobs(idx.gather(logits), idx.targets))
            own = idx.owner.cpu()
        for i in chunk:
            m = own == i
            out[i] = SeqScore(lp[m], top[m])
            if memo is not None:
                memo[keys[i]] = out[i]
    return [s for s in out if s is not None]


def score_probes(
    subject: Subject,
    tprobes: Sequence[TokenizedProbe],
    hooks: HookSource = (),
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool | str = False,
    emphasis: Emphasis | None = None,
) -> list[SeqScore]:
    """Teacher-forced answer scores for tokenised probes (refuses non-finite scores, naming model and probe)."""
    scores = score_sequences(subject, [(tp.ids, tp.prompt_len) for tp in tprobes], hooks, batch_tokens, progress,
                             emphasis)
    for tp, sc in zip(tprobes, scores):
        check_finite(subject, tp, sc.logprobs, "answer log-prob")
    return scores


@dataclass(frozen=True)
class TokenStats:
    """Per answer token: the gold token's log-prob, whether it is the top-1, and the mean and variance of log p
    over the vocabulary at that position (what open-unlearning's token-level metrics read)."""

    logprobs: Float[Tensor, " n_answer"]
    top1: Bool[Tensor, " n_answer"]
    mu: Float[Tensor, " n_answer"]
    var: Float[Tensor, " n_answer"]


def token_stats(subject: Subject, tprobes: Sequence[TokenizedProbe], batch_tokens: int = DEFAULT_BATCH_TOKENS,
                progress: bool | str = False) -> list[TokenStats]:
    """:class:`TokenStats` of each probe's answer, teacher forced (right-padded batches, no hooks)."""
    seqs = [(tp.ids, tp.prompt_len) for tp in tprobes]
    out: list[TokenStats | None] = [None] * len(seqs)
    pad = pad_token_id(subject.tokenizer)
    chunks = chunk_by_tokens([len(ids) for ids, _ in seqs], batch_tokens)
    for chunk in tqdm(chunks, desc=progress if isinstance(progress, str) else "token stats",
                      disable=not progress or len(chunks) < 2, leave=False):
        with torch.no_grad():
            logits = forward_logits(subject, right_pad([seqs[i][0] for i in chunk], pad, subject.device))
        idx = AnswerIndex.build([seqs[i] for i in chunk], logits.device)
        at = idx.gather(logits)
        lp, top = answer_logprobs(at, idx.targets)
        mu, var = logprob_moments(at)
        for r, i in enumerate(chunk):
            m = idx.owner == r
            out[i] = TokenStats(lp[m].cpu(), top[m].cpu(), mu[m].cpu(), var[m].cpu())
    for tp, st in zip(tprobes, out):
        assert st is not None
        check_finite(subject, tp, st.logprobs, "answer log-prob")
    return [s for s in out if s is not None]


def check_finite(subject: Subject, tp: TokenizedProbe, values: Tensor, what: str) -> None:
    """One clear error when a model's numbers for a probe are NaN or infinite."""
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(
            f"model '{subject.name}' gives a non-finite {what} for probe '{tp.probe.id}': its weights or the "
            "intervention applied are broken (NaN/inf); re-create the checkpoint with a lower learning rate or "
            "use finite emphasis factors"
        )


def fact_top1(tp: TokenizedProbe, score: SeqScore) -> bool:
    """True when every token of the probe's fact span is the model's top-1 under teacher forcing."""
    idx = [p - tp.prompt_len for p in tp.fact_positions]
    return bool(score.top1[idx].all())


def probe_table(subject: Subject, tprobes: Sequence[TokenizedProbe], hooks: Sequence[Hook] = (), **kw: Any) -> pd.DataFrame:
    """One row per probe: LP, fact top-1 and whole-answer top-1."""
    scores = score_probes(subject, tprobes, hooks, **kw)
    return pd.DataFrame(
        {
            "probe_id": [tp.probe.id for tp in tprobes],
            "split": [tp.probe.split for tp in tprobes],
            "model": subject.name,
            "lp": [s.lp for s in scores],
            "fact_top1": [fact_top1(tp, s) for tp, s in zip(tprobes, scores)],
            "answer_top1": [bool(s.top1.all()) for s in scores],
        }
    )


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end a generated answer: EOS and the chat template's end-of-turn token, if any."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        ids.add(tid)
    return sorted(i for i in ids if i is not None)


def greedy_batch(
    subject: Subject,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int] = 32,
    hooks: HookSource = (),
    stop_ids: Sequence[int] | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    emphasis: Emphasis | None = None,
    exact: bool = False,
) -> list[list[int]]:
    """Greedy continuations of many prompts, batched; a row stops at a stop token (not included) or after its
    ``max_new_tokens``.

    With no hooks given or attached and a ``kv_prefix`` backend (:func:`fast_path`), runs on its KV cache: one
    prefill, then one token per row per step, O(T) work per token (``emphasis`` as scaled input embeddings or
    an attention-score bias). Otherwise, or with ``exact=True``, the exact recompute loop: every step re-runs
    each unfinished row in full (right padding; row r's next token is the argmax at its own last position), so
    hooks act on the prompt and on every generated token, exactly as in scoring, at O(T^2) per answer.
    ``hooks`` may be a function of the rows' prompt indices, as in :func:`score_sequences`. The two paths are
    tested equal.
    """
    if emphasis is not None and (callable(hooks) or hooks):
        raise UnpactError("give either hooks or an emphasis to generate with, not both")
    stop = list(stop_token_ids(subject.tokenizer) if stop_ids is None else stop_ids)
    limit = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    lengths = [len(p) + m for p, m in zip(prompts, limit)]
    pad = pad_token_id(subject.tokenizer)
    long = max(limit, default=0) > LONG_GENERATION
    bar = tqdm(total=sum(limit), desc="greedy tokens", unit="tok", disable=not long, leave=False)
    new: list[list[int]] = [[] for _ in prompts]
    kvb = None if exact else fast_path(subject.backend, hooks, max(lengths, default=0))
    if kvb is not None:
        for chunk in chunk_by_tokens(lengths, batch_tokens):
            res = kvb.generate([prompts[i] for i in chunk], [limit[i] for i in chunk], stop,
                               None if emphasis is None else emphasis.rows(chunk), pad)
            for i, r in zip(chunk, res):
                new[i] = r
            bar.update(sum(limit[i] for i in chunk))
        bar.close()
        return new
    if emphasis is not None:
        def hooks(chunk: list[int]) -> Sequence[Hook]:  # noqa: F811  (the emphasis as per-row hooks)
            return emphasis.rows(chunk).hooks(subject.n_layers)
    stop_set = set(stop)
    seqs = [list(p) for p in prompts]
    for chunk in chunk_by_tokens(lengths, batch_tokens):
        active = [i for i in chunk if limit[i] > 0]
        while active:
            bar.update(len(active))
            batch = right_pad([seqs[i] for i in active], pad, subject.device)
            logits = forward_logits(subject, batch, hooks(active) if callable(hooks) else hooks)
            last = torch.tensor([len(seqs[i]) - 1 for i in active], device=logits.device)
            nxt = logits[torch.arange(len(active), device=logits.device), last].argmax(-1).tolist()
            still = []
            for i, t in zip(active, nxt):
                if t in stop_set:
                    continue
                seqs[i].append(t)
                new[i].append(t)
                if len(new[i]) < limit[i]:
                    still.append(i)
            active = still
    bar.close()
    return new


GEN_EXTRA_TOKENS = 8  # generation budget beyond the gold answer's length
LONG_GENERATION = 256  # answers longer than this are announced, with their cost, and show progress


def generate_answers(subject: Subject, tprobes: Sequence[TokenizedProbe], hooks: HookSource = (),
                     emphasis: Emphasis | None = None) -> list[list[int]]:
    """Greedy answer token ids per probe (at most its gold answer's length + ``GEN_EXTRA_TOKENS``, stopping at
    end of turn), with ``hooks`` or a declared ``emphasis`` active over the prompt and every generated token.

    With no hooks given or attached and a ``kv_prefix`` backend, runs on its KV cache (emphasis as scaled input
    embeddings or an attention-score bias); otherwise (and when a sequence would outgrow a sliding attention
    window) the exact recompute loop of :func:`greedy_batch` with the emphasis mode's hooks. The two are tested
    equal.
    """
    if emphasis is not None and (callable(hooks) or hooks):
        raise UnpactError("give either hooks or an emphasis to generate with, not both")
    prompts = [tp.prompt_ids for tp in tprobes]
    limits = [tp.n_answer + GEN_EXTRA_TOKENS for tp in tprobes]
    stops = stop_token_ids(subject.tokenizer)
    if max(limits, default=0) > LONG_GENERATION:
        longest = max(range(len(tprobes)), key=lambda i: limits[i])
        say(f"[unpact] generation: up to {sum(limits)} greedy tokens for {len(tprobes)} probe(s); probe "
            f"'{tprobes[longest].probe.id}' has a {tprobes[longest].n_answer}-token answer, and each generated token "
            "is one forward pass (progress shown)", stderr=True)
    if emphasis is not None:
        check_emphasis(subject, emphasis)
    return greedy_batch(subject, prompts, limits, hooks, stops, emphasis=emphasis)
