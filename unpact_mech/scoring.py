"""Teacher-forced answer log-probs, top-1 checks and greedy answers.

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

from unpact_mech.backends.kernel import AnswerIndex, answer_logprobs
from unpact_mech.errors import NonFiniteError, UnpactError
from unpact_mech.models import Subject
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


def score_sequences(
    subject: Subject,
    seqs: Sequence[tuple[Sequence[int], int]],
    hooks: HookSource = (),
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool | str = False,
) -> list[SeqScore]:
    """Score many (ids, answer_start) sequences: answer tokens are ids[answer_start:].

    Sequences are sorted by length and cut into right-padded chunks of at most ``batch_tokens`` tokens.
    ``hooks`` may be a function of the chunk (the sequence indices of the batch rows) for per-row
    interventions. Without hooks, a subject with a ``memo`` dict (see ``Subject.memoize``) reuses earlier scores.
    """
    for ids, start in seqs:
        if not 0 < start < len(ids):
            raise UnpactError(f"answer start {start} outside a sequence of length {len(ids)}")
    memo = memo_of(subject, hooks)
    keys = [("score", tuple(ids), start) for ids, start in seqs] if memo is not None else []
    out: list[SeqScore | None] = [memo.get(k) for k in keys] if memo is not None else [None] * len(seqs)
    todo = [i for i, s in enumerate(out) if s is None]
    pad = pad_token_id(subject.tokenizer)
    chunks = [[todo[j] for j in c] for c in chunk_by_tokens([len(seqs[i][0]) for i in todo], batch_tokens)]
    desc = progress if isinstance(progress, str) else "scoring"
    bar = tqdm(chunks, desc=desc, disable=not progress or len(chunks) < 2, leave=False)
    for chunk in bar:
        batch = right_pad([seqs[i][0] for i in chunk], pad, subject.device)
        logits = forward_logits(subject, batch, hooks(chunk) if callable(hooks) else hooks)
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
) -> list[SeqScore]:
    """Teacher-forced answer scores for tokenised probes (refuses non-finite scores, naming model and probe)."""
    scores = score_sequences(subject, [(tp.ids, tp.prompt_len) for tp in tprobes], hooks, batch_tokens, progress)
    for tp, sc in zip(tprobes, scores):
        check_finite(subject, tp, sc.logprobs, "answer log-prob")
    return scores


def check_finite(subject: Subject, tp: TokenizedProbe, values: Tensor, what: str) -> None:
    """One clear error when a model's numbers for a probe are NaN or infinite."""
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(
            f"model '{subject.name}' gives a non-finite {what} for probe '{tp.probe.id}': its weights or the "
            "intervention applied are broken (NaN/inf); re-create the checkpoint with a lower learning rate or "
            "use finite emphasis factors"
        )


def answer_lp(subject: Subject, tprobes: Sequence[TokenizedProbe], **kw: Any) -> Float[Tensor, " n_probes"]:
    """LP(x, y): mean teacher-forced log-prob of the answer tokens, one value per probe."""
    return torch.tensor([s.lp for s in score_probes(subject, tprobes, **kw)])


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


def greedy_ids(
    subject: Subject,
    prompt_ids: Sequence[int],
    max_new_tokens: int = 32,
    hooks: Sequence[Hook] = (),
    stop_ids: Sequence[int] | None = None,
) -> list[int]:
    """Greedy continuation through the backend (full recompute each step, so hooks apply to every step)."""
    if stop_ids is None:
        stop_ids = [i for i in (subject.tokenizer.eos_token_id,) if i is not None]
    ids = list(prompt_ids)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = forward_logits(subject, torch.tensor([ids], device=subject.device), hooks)
        nxt = int(logits[0, -1].argmax())
        if nxt in stop_ids:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def greedy_answer(subject: Subject, tp: TokenizedProbe, max_new_tokens: int = 32, hooks: Sequence[Hook] = ()) -> str:
    """The model's greedy answer to a tokenised probe, as text."""
    return subject.tokenizer.decode(greedy_ids(subject, tp.prompt_ids, max_new_tokens, hooks))
