"""Keyword emphasis (paper finding 2, "FocusOnKey"): bring a forgotten answer back without touching weights.

Three ways on the same probes:
* mode ``embed``: scale the KeyTokens' input embeddings (``unpact_mech.hooks.scale_embedding``). On pre-RMSNorm
  models the first layer normalises the scale away; see the hooks module for what remains.
* mode ``attention``: add log(factor) to every head's attention score on the KeyTokens (PASTA-style steering).
* prompt edits (``prompt:repeat|mark|instruct``): the paper's edits (repeat the KeyTokens, mark them, or an
  instruction naming them).

Both modes are one :class:`unpact_mech.hooks.Emphasis` each; the sweep (:func:`emphasis_sweep`) scores every
(probe, condition, draw) of a mode and factor in one batch under any registered correctness criterion.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from unpact_mech.analysis import Analysis
from unpact_mech.core.errors import UnpactError, check_finite_factor, renamed
from unpact_mech.evals.criteria import criterion as get_criterion
from unpact_mech.hooks import EMPHASIS_MODES, Emphasis
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, TokenizedProbe, tokenize_probe
from unpact_mech.probes.keytokens import KeyTokenParams
from unpact_mech.scoring import check_emphasis, emphasis_hooks, fact_top1, score_probes

PROMPT_STYLES: tuple[str, ...] = ("repeat", "mark", "instruct")
# every emphasis a recovery table reports: the two modes, then the prompt edits
EMPHASIS_NAMES: tuple[str, ...] = (*EMPHASIS_MODES, *(f"prompt:{s}" for s in PROMPT_STYLES))


def check_positions(tp: TokenizedProbe, positions: Sequence[int]) -> None:
    """Emphasis acts on prompt tokens: every position must lie in [0, prompt length)."""
    bad = [p for p in positions if not isinstance(p, numbers.Integral) or not 0 <= p < tp.prompt_len]
    if bad:
        raise UnpactError(f"probe '{tp.probe.id}': position(s) {bad[:5]} outside its prompt (0..{tp.prompt_len - 1}); "
                          f"attributable positions are {list(tp.attributable)}")


def keytoken_positions(
    reference: Any, tprobes: Sequence[TokenizedProbe], params: KeyTokenParams | None = None
) -> list[list[int]]:
    """KeyToken positions of each probe under a reference model (usually the base model); for many findings on
    the same probes, build one :class:`~unpact_mech.analysis.Analysis` and use its ``keytoken_positions``."""
    return Analysis(reference, list(tprobes), params).keytoken_positions()


@dataclass(frozen=True)
class EmphasisResult:
    lp: float
    fact_top1: bool
    answer_top1: bool


def emphasize(
    subject: Subject,
    probe: Probe | TokenizedProbe,
    factor: float,
    positions: Sequence[int] | None = None,
    mode: str | None = None,
    reference: Subject | None = None,
    params: KeyTokenParams | None = None,
    route: str | None = None,
) -> EmphasisResult:
    """Score a probe with its KeyTokens emphasised by ``mode`` (``embed``, the default, or ``attention``;
    ``route=`` is its old name); positions default to ``reference``'s KeyTokens, else its own."""
    mode = renamed(mode, route, "mode", "route", "embed")
    tp = probe if isinstance(probe, TokenizedProbe) else tokenize_probe(subject.tokenizer, probe, max_len=subject.n_ctx)
    check_finite_factor(factor)
    if positions is None:
        positions = keytoken_positions(reference or subject, [tp], params)[0]
    check_positions(tp, positions)
    hooks = emphasis_hooks(subject, Emphasis.of(mode, [positions], factor))
    s = score_probes(subject, [tp], hooks if positions else [])[0]
    return EmphasisResult(s.lp, fact_top1(tp, s), bool(s.top1.all()))


def sweep(
    subject: Subject,
    tprobes: Sequence[TokenizedProbe],
    positions: Sequence[Sequence[int]],
    factors: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
    modes: Sequence[str] | None = None,
    routes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Answer LP and fact top-1 per probe, emphasis mode and factor (factor 1 is the unemphasised model); the
    mode is the table's ``route`` column.

    Each (mode, factor) scores all probes in one batch (:func:`emphasis_sweep`), every row emphasised at its
    own KeyTokens. ``routes=`` is the old name of ``modes``.
    """
    routes = list(renamed(modes, routes, "modes", "routes", EMPHASIS_MODES))
    if len(positions) != len(tprobes):
        raise UnpactError(f"{len(positions)} KeyToken position lists for {len(tprobes)} probes")
    for f in factors:
        check_finite_factor(f)
    for tp, pos in zip(tprobes, positions):
        check_positions(tp, pos)
    units = [(tp, "keytokens", 0, list(pos)) for tp, pos in zip(tprobes, positions)]
    df = pd.DataFrame(emphasis_sweep(subject, units, factors, routes, (), "teacher_forced"))
    df = df.rename(columns={"correct": "fact_top1", "n_positions": "n_keytokens"})
    return df[["probe_id", "model", "route", "factor", "lp", "fact_top1", "n_keytokens"]]


def emphasis_sweep(subject: Subject, units: Sequence[tuple[TokenizedProbe, str, int, list[int]]],
                   factors: Sequence[float], modes: Sequence[str], styles: Sequence[str],
                   criterion: str) -> list[dict[str, Any]]:
    """Correctness of every unit (probe, condition, draw, positions) under each emphasis mode and factor, and
    under each prompt edit naming the positions' tokens: one batch per (mode, factor) and one for all prompt
    edits (factor 1 is the plain model), judged by the registered ``criterion`` (its extra column, e.g. the LP or
    the generated answer, is kept). A unit without positions is the plain model. Each batch runs on the KV
    cache with the shared prefix run once when the backend allows, else with the mode's hooks."""
    crit = get_criterion(criterion)
    tps = [u[0] for u in units]
    rows: list[dict[str, Any]] = []

    def add(route: str, factor: float, table: pd.DataFrame) -> None:
        rows.extend({"criterion": criterion, "condition": c, "draw": d, "probe_id": tp.probe.id,
                     "model": subject.name, "route": route, "factor": factor, "correct": bool(y), crit.extra: e,
                     "n_positions": len(pos)}
                    for (tp, c, d, pos), y, e in zip(units, table["correct"], table[crit.extra]))

    for mode in modes:
        for f in factors:
            emphasis = Emphasis.of(mode, [list(u[3]) for u in units], float(f))
            check_emphasis(subject, emphasis)  # the mode must exist on this backend
            add(mode, float(f), crit.table(subject, tps, None if f == 1.0 else emphasis))
    if styles:
        edited = [tokenize_probe(subject.tokenizer, prompt_emphasis(tp.probe, keyword_strings(tp, pos), style),
                                 tp.format, max_len=subject.n_ctx) for style in styles for tp, _, _, pos in units]
        table = crit.table(subject, edited)
        for i, style in enumerate(styles):
            add(f"prompt:{style}", float("nan"), table.iloc[i * len(units):(i + 1) * len(units)])
    return rows


def keyword_strings(tp: TokenizedProbe, positions: Sequence[int]) -> list[str]:
    """The KeyTokens' surface strings, in prompt order, without duplicates."""
    out: list[str] = []
    for p in sorted(positions):
        w = tp.tokens[p].strip()
        if w and w not in out:
            out.append(w)
    return out


def prompt_emphasis(probe: Probe, keywords: Sequence[str], style: str = "repeat") -> Probe:
    """A FocusOnKey prompt edit that keeps the question intact and only adds emphasis."""
    kws = [k for k in keywords if k]
    if not kws:
        return probe
    q = probe.prompt
    if style == "repeat":
        prompt = f"{q} ({', '.join(kws)})"
    elif style == "mark":
        prompt = q
        for k in sorted(kws, key=len, reverse=True):
            prompt = prompt.replace(k, f"**{k}**", 1)
    elif style == "instruct":
        prompt = f"Focus on the key words {', '.join(repr(k) for k in kws)}. {q}"
    else:
        raise UnpactError(f"unknown prompt emphasis style {style!r}: use one of {PROMPT_STYLES}")
    return Probe(probe.id, prompt, probe.answer, probe.split, probe.fact, probe.domain, tuple(kws),
                 {**probe.meta, "emphasis": style})
