"""unpact_mech: look inside unlearned language models (unPact, arXiv 2509.24675), mechanistically.

The public API, from one import (each name is loaded on first use, so ``import unpact_mech`` and the CLI start
fast)::

    import unpact_mech as um

    base = um.load_model("smollm2-135m")
    unl = um.load_model("path/to/unlearned")
    probes = um.load_benchmark("facts", split="forget")[:8]
    an = um.Analysis(base, probes)             # the base side once: KeyTokens, scores, contributions
    um.compare(an, unl).summary()              # finding 1: KeyTokens and focus before / after
    um.recovery(an, unl).rates                 # finding 2: emphasis on KeyTokens against random tokens
    um.destruction(an, unl)[1]                 # finding 3: destructive rate per split

``list_models()``, ``list_benchmarks()``, ``list_methods()`` and the other ``list_*`` functions name what is
registered (see ``docs/extending.md`` to add your own).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from unpact_mech import _compat

__version__ = "0.1.0"
_compat.install()  # the old import paths, for one release

# public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    "UnpactError": ("unpact_mech.core.errors", "UnpactError"),
    "load_model": ("unpact_mech.model.loading", "load_model"),
    "load_nnsight": ("unpact_mech.model.loading", "load_nnsight"),
    "read_shape": ("unpact_mech.model.shape", "read_shape"),
    "save_checkpoint": ("unpact_mech.model.loading", "save_checkpoint"),
    "Subject": ("unpact_mech.model.subject", "Subject"),
    "Probe": ("unpact_mech.probes", "Probe"),
    "TokenizedProbe": ("unpact_mech.probes", "TokenizedProbe"),
    "load_probes": ("unpact_mech.probes", "load_probes"),
    "tokenize_probe": ("unpact_mech.probes", "tokenize_probe"),
    "tokenize_probes": ("unpact_mech.probes", "tokenize_probes"),
    "KeyTokenParams": ("unpact_mech.probes.keytokens", "KeyTokenParams"),
    "select_keytokens": ("unpact_mech.probes.keytokens", "select_keytokens"),
    "load_benchmark": ("unpact_mech.evals.loaders", "load_benchmark"),
    "Passage": ("unpact_mech.evals.loaders", "Passage"),
    "ChatArgs": ("unpact_mech.model.chat", "ChatArgs"),
    "filter_known": ("unpact_mech.evals.loaders", "filter_known"),
    "Analysis": ("unpact_mech.analysis", "Analysis"),
    "attribute": ("unpact_mech.attribution", "attribute"),
    "compare": ("unpact_mech.analysis.compare", "compare"),
    "localise": ("unpact_mech.analysis.localise", "localise"),
    "recovery": ("unpact_mech.findings", "recovery"),
    "destruction": ("unpact_mech.findings", "destruction"),
    "emphasize": ("unpact_mech.analysis.emphasis", "emphasize"),
    "patch": ("unpact_mech.patching", "patch"),
    "recover": ("unpact_mech.routes", "recover"),
    "unlearn": ("unpact_mech.unlearning", "unlearn"),
    "evaluate": ("unpact_mech.evals.tasks", "evaluate"),
    "Study": ("unpact_mech.study.config", "Study"),
    "StudyConfig": ("unpact_mech.study.config", "StudyConfig"),
    "StudyResult": ("unpact_mech.runtime.results", "StudyResult"),
    "MethodResult": ("unpact_mech.runtime.results", "MethodResult"),
}

# registry kind -> (module, registry): list_<kind>() names what is registered
_REGISTRIES: dict[str, tuple[str, str]] = {
    "models": ("unpact_mech.model.loading", "BUILTIN_MODELS"),
    "benchmarks": ("unpact_mech.evals.loaders", "BENCHMARKS"),
    "tasks": ("unpact_mech.evals.tasks", "TASKS"),
    "methods": ("unpact_mech.unlearning", "METHODS"),
    "attribution_methods": ("unpact_mech.attribution", "ATTRIBUTION_METHODS"),
    "criteria": ("unpact_mech.evals.criteria", "CRITERIA"),
    "routes": ("unpact_mech.routes", "RECOVERY_ROUTES"),
    "metrics": ("unpact_mech.evals.ou_metrics", "OU_METRICS"),
}


def _lister(kind: str) -> Any:
    module, name = _REGISTRIES[kind]

    def list_registered() -> list[str]:
        return getattr(importlib.import_module(module), name).names()

    list_registered.__name__ = list_registered.__qualname__ = f"list_{kind}"
    list_registered.__doc__ = f"The registered {kind.replace('_', ' ')}, sorted."
    return list_registered


_LISTERS = {f"list_{kind}": _lister(kind) for kind in _REGISTRIES}
globals().update(_LISTERS)

# every public name (checked against _API and the listers in tests/test_api.py)
__all__ = [
    "Analysis", "ChatArgs", "KeyTokenParams", "MethodResult", "Passage", "Probe", "Study", "StudyConfig",
    "StudyResult", "Subject", "TokenizedProbe", "UnpactError",
    "attribute", "compare", "destruction", "emphasize", "evaluate", "filter_known", "list_attribution_methods",
    "list_benchmarks", "list_criteria", "list_methods", "list_metrics", "list_models", "list_routes", "list_tasks",
    "load_benchmark", "load_model", "load_nnsight", "load_probes", "localise", "patch", "read_shape", "recover",
    "recovery", "save_checkpoint", "select_keytokens", "tokenize_probe", "tokenize_probes", "unlearn",
]


def _resolve(name: str) -> Any:
    module, attr = _API[name]
    return getattr(importlib.import_module(module), attr)


class _Package(types.ModuleType):
    """The package module: a public function named like a submodule (``compare``, ``localise``) stays the
    function after the submodule is imported (the import system would otherwise rebind the name to it)."""

    def __getattribute__(self, name: str) -> Any:
        if name in _SHADOWED:
            return _resolve(name)
        return super().__getattribute__(name)


_SHADOWED = frozenset(name for name, (module, _) in _API.items() if module == f"{__name__}.{name}")
sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _API:
        value = _resolve(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and editors see; at run time each name loads on first use
    from unpact_mech.analysis import Analysis
    from unpact_mech.analysis.compare import compare
    from unpact_mech.analysis.emphasis import emphasize
    from unpact_mech.analysis.localise import localise
    from unpact_mech.attribution import attribute
    from unpact_mech.core.errors import UnpactError
    from unpact_mech.evals.loaders import Passage, filter_known, load_benchmark
    from unpact_mech.evals.tasks import evaluate
    from unpact_mech.findings import destruction, recovery
    from unpact_mech.model.chat import ChatArgs
    from unpact_mech.model.loading import load_model, load_nnsight, save_checkpoint
    from unpact_mech.model.shape import read_shape
    from unpact_mech.model.subject import Subject
    from unpact_mech.patching import patch
    from unpact_mech.probes import Probe, TokenizedProbe, load_probes, tokenize_probe, tokenize_probes
    from unpact_mech.probes.keytokens import KeyTokenParams, select_keytokens
    from unpact_mech.routes import recover
    from unpact_mech.runtime.results import MethodResult, StudyResult
    from unpact_mech.study.config import Study, StudyConfig
    from unpact_mech.unlearning import unlearn

    def list_models() -> list[str]: ...
    def list_benchmarks() -> list[str]: ...
    def list_tasks() -> list[str]: ...
    def list_methods() -> list[str]: ...
    def list_attribution_methods() -> list[str]: ...
    def list_criteria() -> list[str]: ...
    def list_routes() -> list[str]: ...
    def list_metrics() -> list[str]: ...
