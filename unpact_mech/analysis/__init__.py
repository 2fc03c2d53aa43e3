"""The base side of every comparison, computed once, with the parameters that produced it.

``Analysis(base, probeset, params)`` (a :class:`~unpact_mech.probes.ProbeSet`, or probes to tokenise once): the base
model's teacher-forced scores (LP, fact top-1), leave-one-out contributions C(x_i, y) = LP(x, y) - LP(x without
x_i, y) and KeyTokens (eq. 3-4 under ``params``), each computed at most once per probe and reused by every
finding (compare, recovery, destruction, localisation, function-word penalisation). Every table a finding
derives from it carries the KeyToken parameters as columns (``alpha``, ``beta``, ``max_keytokens``) and in
``DataFrame.attrs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd

from unpact_mech.attribution.loo import LooResult, Variant, loo_contributions
from unpact_mech.core.display import loo_block, nb_html
from unpact_mech.core.errors import UnpactError
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Format, Probe, ProbeSet, TokenizedProbe
from unpact_mech.probes.keytokens import KeyTokenParams, select_keytokens
from unpact_mech.scoring import probe_table


class Analysis:
    """The base model's scores, leave-one-out contributions and KeyTokens on a probe set, each computed once."""

    def __init__(self, base: Subject, probes: ProbeSet | Sequence[Probe | TokenizedProbe],
                 params: KeyTokenParams | None = None, fmt: Format = "auto", variant: Variant = "delete") -> None:
        self.base = base
        self.probes = probes if isinstance(probes, ProbeSet) else ProbeSet.build(base, probes, fmt)
        if self.probes.fingerprint != base.tokenizer_fingerprint():
            raise UnpactError("the probe set was tokenised with another tokenizer than the base model's")
        self.params = params or KeyTokenParams()
        self.variant = variant
        self._loo: dict[str, LooResult] = {}
        self._scores: pd.DataFrame | None = None

    def add(self, probes: Sequence[Probe | TokenizedProbe]) -> list[TokenizedProbe]:
        """The tokenised probes, tokenising (once) any probe the set does not hold yet."""
        new = [p for p in probes if (p.probe.id if isinstance(p, TokenizedProbe) else p.id) not in self.probes.ids]
        if new:
            extra = ProbeSet.build(self.base, new, self.probes.fmt)
            self.probes = ProbeSet([*self.probes.tprobes, *extra.tprobes], self.probes.fingerprint, self.probes.fmt)
        return self.probes.select(list(probes))

    def loo(self, tprobes: Sequence[TokenizedProbe] | None = None, progress: bool = False) -> list[LooResult]:
        """Leave-one-out of the base model (computed once per probe, in one batched call for the missing ones)."""
        tps = self.probes.select(tprobes)
        todo = [tp for tp in tps if tp.probe.id not in self._loo]
        if todo:
            for r in loo_contributions(self.base, todo, self.variant, progress=progress):
                self._loo[r.tprobe.probe.id] = r
        return [self._loo[tp.probe.id] for tp in tps]

    def keytokens(self, tprobes: Sequence[TokenizedProbe] | None = None) -> list[list[int]]:
        """Per probe, the KeyTokens' indices into its leave-one-out contributions (largest first)."""
        return [select_keytokens(r.contributions, self.params) for r in self.loo(tprobes)]

    def keytoken_positions(self, tprobes: Sequence[TokenizedProbe] | None = None) -> list[list[int]]:
        """Per probe, the KeyTokens' positions in its token ids."""
        return [[r.positions[i] for i in keys] for r, keys in zip(self.loo(tprobes), self.keytokens(tprobes))]

    def scores(self, tprobes: Sequence[TokenizedProbe] | None = None) -> pd.DataFrame:
        """The base model's LP, fact top-1 and answer top-1 per probe (indexed by probe id)."""
        tps = self.probes.select(tprobes)
        have = set() if self._scores is None else set(self._scores.index)
        todo = [tp for tp in tps if tp.probe.id not in have]
        if todo:
            new = probe_table(self.base, todo).set_index("probe_id")
            self._scores = new if self._scores is None else pd.concat([self._scores, new])
        assert self._scores is not None
        return self._scores.loc[[tp.probe.id for tp in tps]]

    def annotate(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with the KeyToken parameters as columns and in ``attrs`` (they travel with the table)."""
        return annotate(df, self.params, variant=self.variant)

    def _repr_html_(self, max_probes: int = 5) -> str:
        """Notebook display: what the analysis holds; leave-one-out heatmaps of the probes computed so far (it
        computes nothing itself)."""
        head = (f"<div class='hd'><b>Analysis</b> of <b>{self.base.name}</b>: {len(self.probes)} probes "
                f"({self.probes.fmt} format), KeyTokens alpha = {self.params.alpha}, beta = {self.params.beta}, "
                f"leave-one-out by {self.variant}; {len(self._loo)} probes attributed so far</div>")
        done = [self._loo[i] for i in self.probes.ids if i in self._loo][:max_probes]
        blocks = [loo_block(r.tprobe, r.contributions.tolist(),
                            {r.positions[i] for i in select_keytokens(r.contributions, self.params)}, r.lp)
                  for r in done]
        hint = "" if done else "<div class='sc'>call .loo() to compute the base model's contributions</div>"
        return nb_html(head, *blocks, hint)


def annotate(df: pd.DataFrame, params: KeyTokenParams, **extra: Any) -> pd.DataFrame:
    """``df`` with the KeyToken parameters as columns, and with them (plus ``extra``) in ``attrs``."""
    for k, v in asdict(params).items():
        df[k] = v
    df.attrs["keytoken_params"] = {**asdict(params), **extra}
    return df


def as_analysis(base: Analysis | Subject, probes: Sequence[Probe | TokenizedProbe] | None, params: KeyTokenParams | None,
                fmt: Format = "auto") -> tuple[Analysis, list[TokenizedProbe]]:
    """An Analysis (given, or built on ``base``) and the tokenised ``probes`` (its whole set when None)."""
    if isinstance(base, Analysis):
        if params is not None and params != base.params:
            raise UnpactError(f"KeyToken parameters {params} differ from the analysis's {base.params}; build another "
                              "Analysis for other parameters")
        return base, (base.add(probes) if probes is not None else base.probes.select())
    if probes is None:
        raise UnpactError("give probes (or an Analysis that holds them)")
    an = Analysis(base, probes, params, fmt)
    return an, an.probes.select()
