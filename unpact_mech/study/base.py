"""The base model of a study, loaded only when a stage needs it, and its Analysis (the base side, built once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from unpact_mech.analysis import Analysis
from unpact_mech.model import loading as models


class LazyBase:
    """The base model, loaded (and memoized) only when a stage needs it, and its Analysis (built once)."""

    def __init__(self, model: Any) -> None:
        self.spec = model if isinstance(model, str) else None
        self._subject = None if isinstance(model, str) else model.memoize() if model.memo is None else model
        self._analysis: Any = None
        self.route_cache: dict[Any, Any] = {}  # the quantised base, shared by every method's recovery routes
        self.pool: list[Any] = []  # the demo's candidate facts (the recovery routes draw their controls from it)
        self.given: dict[str, str] = {}  # name -> spec of checkpoints analysed as they are (run_demo's ``unlearned``)

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
        """What cached stages are stamped with: the spec, or the given Subject's name (never loads the model)."""
        if self.spec is not None:
            return self.spec
        assert self._subject is not None
        return str(self._subject.name)
