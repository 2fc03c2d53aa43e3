"""What every stage of a study shares: the base model, loaded only when a stage needs it, its Analysis (the base
side, built once), the candidate pool, the given checkpoints and the budgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unpact_mech.analysis import Analysis
from unpact_mech.model import loading as models
from unpact_mech.model.chat import ChatArgs, chat_args
from unpact_mech.study.settings import BUDGET, FACTORS, ROUTE_BUDGET, Budget, RouteBudget


class LazyBase:
    """The base model, loaded (and memoized) only when a stage needs it, and its Analysis (built once); with what
    every stage reads: ``pool`` (the candidate facts; the recovery routes draw their controls from it), ``given``
    (name -> spec of checkpoints analysed as they are), the ``budget``, ``route_budget`` and emphasis
    ``factors``."""

    def __init__(self, model: Any, pool: Sequence[Any] = (), given: Mapping[str, str] | None = None,
                 budget: Budget = BUDGET, route_budget: RouteBudget = ROUTE_BUDGET,
                 factors: Sequence[float] = FACTORS) -> None:
        self.spec = model if isinstance(model, str) else None
        self._subject = None if isinstance(model, str) else model.memoize() if model.memo is None else model
        self._analysis: Any = None
        self.route_cache: dict[Any, Any] = {}  # the quantised base, shared by every method's recovery routes
        self.pool: list[Any] = list(pool)
        self.given: dict[str, str] = dict(given or {})
        self.budget, self.route_budget, self.factors = budget, route_budget, tuple(factors)

    def analysis(self, probes: Sequence[Any], params: Any) -> Any:
        """The base side on ``probes`` under ``params``: scores, leave-one-out and KeyTokens, computed once."""
        if self._analysis is None or self._analysis.params != params:
            self._analysis = Analysis(self.get(), list(probes), params)
        return self._analysis

    def get(self) -> Any:
        if self._subject is None:
            assert self.spec is not None  # no Subject was given, so a spec was
            self._subject = models.load_model(self.spec, verbose=True).memoize()
        return self._subject

    @property
    def loaded(self) -> bool:
        return self._subject is not None

    @property
    def key(self) -> str:
        """What cached stages are stamped with: the spec, or the given Subject's name and the chat arguments its
        prompts are rendered with, where set (never loads the model)."""
        if self.spec is not None:
            return self.spec
        assert self._subject is not None
        chat = chat_args(self._subject.tokenizer)
        return str(self._subject.name) + ("" if chat == ChatArgs() else f" {chat}")
