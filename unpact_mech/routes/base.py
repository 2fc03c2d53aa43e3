"""What every recovery route shares: its typed options, the context it is run with, the registry, and the one
table row (recovered k/n against a control k/n, Newcombe's interval on the excess)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from unpact_mech.analysis import Analysis
from unpact_mech.core.errors import UnpactError
from unpact_mech.core.options import dataclass_from
from unpact_mech.core.registry import Registry
from unpact_mech.core.stats import newcombe, rate_columns, wilson
from unpact_mech.findings import CRITERIA, judge
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, TokenizedProbe


@dataclass(frozen=True)
class RouteOptions:
    """Options every route has. ``criteria``: the criteria it is judged by (None: every criterion of the run)."""

    criteria: tuple[str, ...] | None = None

    @classmethod
    def of(cls, given: RouteOptions | Mapping[str, Any] | None, route: str) -> RouteOptions:
        """``given`` as this route's options: an instance as it is, a mapping by field name (sequences become
        tuples), None as the defaults. An unknown name is refused with the known ones."""
        if given is None:
            return cls()
        if isinstance(given, RouteOptions):
            if not isinstance(given, cls):
                raise UnpactError(f"the {route} route takes {cls.__name__}, not {type(given).__name__}")
            return given
        return dataclass_from(cls, given, f"the {route} route's options")


OptionsT = TypeVar("OptionsT", bound=RouteOptions)


@dataclass
class RouteContext:
    """What every route gets: the base :class:`Analysis`, the unlearned model, the forget probes, the control
    facts (``unknown``: candidates the base model does not know), disjoint data for relearning and few-shot
    prompts, the criteria, each route's options and a cache shared across calls (e.g. the quantised base)."""

    analysis: Analysis
    unlearned: Subject
    forget: list[TokenizedProbe]
    unknown: list[TokenizedProbe]
    retain: list[Probe]
    shots: list[Probe]
    criteria: tuple[str, ...] = CRITERIA
    options: dict[str, RouteOptions] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)
    collateral: list[TokenizedProbe] = field(default_factory=list)

    def opts(self, route: str, kind: type[OptionsT]) -> OptionsT:
        """The route's options (its defaults where none were given)."""
        return kind.of(self.options.get(route), route)  # type: ignore[return-value]

    def route_criteria(self, route: str) -> tuple[str, ...]:
        """The criteria a route is judged by: its option ``criteria``, else all of ``criteria``."""
        chosen = self.options[route].criteria if route in self.options else None
        return tuple(c for c in (self.criteria if chosen is None else chosen) if c in self.criteria)

    def eligible(self, criterion: str) -> tuple[list[TokenizedProbe], list[TokenizedProbe]]:
        """(forget probes the base answers and the unlearned model does not, control facts neither answers)."""
        key = ("eligible", criterion, self.unlearned.name)
        if key not in self.cache:
            b = list(judge(self.analysis, self.forget, criterion).correct)
            u = list(judge(self.unlearned, self.forget, criterion).correct)
            ub = list(judge(self.analysis.base, self.unknown, criterion).correct) if self.unknown else []
            uu = list(judge(self.unlearned, self.unknown, criterion).correct) if self.unknown else []
            self.cache[key] = ([tp for tp, x, y in zip(self.forget, b, u) if x and not y],
                               [tp for tp, x, y in zip(self.unknown, ub, uu) if not x and not y])
        return self.cache[key]

    def collateral_lost(self, criterion: str) -> list[TokenizedProbe]:
        """Collateral-damage probes: ``collateral`` facts the base answers and the unlearned model does not."""
        key = ("collateral", criterion, self.unlearned.name)
        if key not in self.cache:
            b = flags(self.analysis.base, self.collateral, criterion)
            u = flags(self.unlearned, self.collateral, criterion)
            self.cache[key] = [tp for tp, x, y in zip(self.collateral, b, u) if x and not y]
        return self.cache[key]


RouteFn = Callable[[RouteContext], list[dict[str, Any]]]
RECOVERY_ROUTES: Registry[RouteFn] = Registry("recovery route")
ROUTE_OPTIONS: dict[str, type[RouteOptions]] = {}  # route name -> its options dataclass


def register_route(name: str, options: type[RouteOptions] = RouteOptions) -> Callable[[RouteFn], RouteFn]:
    """Register a recovery route under ``name``: ``fn(ctx) -> rows`` built with :func:`route_row`; ``options``
    is its options dataclass (a subclass of :class:`RouteOptions`, holding its defaults)."""
    def deco(fn: RouteFn) -> RouteFn:
        RECOVERY_ROUTES.register(name, fn)
        ROUTE_OPTIONS[name] = options
        return fn

    return deco


def route_options(given: Mapping[str, RouteOptions | Mapping[str, Any]] | None,
                  routes: Sequence[str]) -> dict[str, RouteOptions]:
    """Typed options for every route in ``routes`` (defaults where none given). Options of an unregistered route
    or an unknown option name are refused; those of a registered route that is not run are left unused."""
    given = dict(given or {})
    extra = sorted(set(given) - set(RECOVERY_ROUTES))
    if extra:
        raise UnpactError(f"options given for unknown route(s) {extra}; routes: {', '.join(RECOVERY_ROUTES)}")
    return {r: ROUTE_OPTIONS.get(r, RouteOptions).of(given.get(r), r) for r in routes}


def route_row(route: str, treatment: str, criterion: str, recovered: Sequence[bool], control_kind: str,
              control: Sequence[bool], base_kept: Sequence[bool] | None = None) -> dict[str, Any]:
    """One table row from per-probe flags: recovered (eligible forget probes), control (unknown facts), base."""
    rec, ctl = wilson(sum(map(bool, recovered)), len(recovered)), wilson(sum(map(bool, control)), len(control))
    d, lo, hi = newcombe(rec, ctl) if rec.n and ctl.n else (float("nan"),) * 3
    row = {"route": route, "treatment": treatment, "criterion": criterion, "n": rec.n, **rate_columns("recovered", rec),
           "control_kind": control_kind, **rate_columns("control", ctl), "excess": d, "excess_low": lo,
           "excess_high": hi}
    kept = wilson(sum(map(bool, base_kept)), len(base_kept)) if base_kept is not None else None
    row.update(rate_columns("base_kept", kept))
    return row


def flags(subject: Subject, tps: Sequence[TokenizedProbe], criterion: str) -> list[bool]:
    """Per probe: does ``subject`` answer it under ``criterion``."""
    return list(judge(subject, tps, criterion).correct) if tps else []
