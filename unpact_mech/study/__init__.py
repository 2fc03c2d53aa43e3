"""Experiments: the dilemma study as stamped stages (``dilemma.run_demo``) and its settings (``settings``)."""

from unpact_mech.study.base import LazyBase
from unpact_mech.study.dilemma import run_demo
from unpact_mech.study.prepare import data_stage, keytoken_stage
from unpact_mech.study.settings import (
    BUDGET,
    FACTORS,
    PAPER_METHODS,
    PER_SPLIT,
    ROUTE_BUDGET,
    SETTINGS,
    Budget,
    FrontierBudget,
    RouteBudget,
    add_run_arguments,
    budget_order,
    control_candidates,
    method_settings,
)
from unpact_mech.study.unlearn import unlearn_stage

__all__ = ["BUDGET", "FACTORS", "PAPER_METHODS", "PER_SPLIT", "Budget", "FrontierBudget", "RouteBudget", "ROUTE_BUDGET", "SETTINGS", "LazyBase", "add_run_arguments",
           "budget_order", "control_candidates", "data_stage", "keytoken_stage", "method_settings", "run_demo",
           "unlearn_stage"]
