"""The import paths from before the layers became folders, kept for one release with a ``DeprecationWarning``.

``import unpact_mech.models`` (say) gives the very module object of its new home, ``unpact_mech.model.loading``,
so state and monkeypatching are shared; new code imports the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

# old module path -> new module path
MOVED: dict[str, str] = {
    "unpact_mech.errors": "unpact_mech.core.errors",
    "unpact_mech.registry": "unpact_mech.core.registry",
    "unpact_mech.log": "unpact_mech.core.log",
    "unpact_mech.io": "unpact_mech.core.io",
    "unpact_mech.options": "unpact_mech.core.options",
    "unpact_mech.meter": "unpact_mech.core.meter",
    "unpact_mech.stats": "unpact_mech.core.stats",
    "unpact_mech.display": "unpact_mech.core.display",
    "unpact_mech.tables": "unpact_mech.attribution.table",
    "unpact_mech.words": "unpact_mech.probes.words",
    "unpact_mech.keytokens": "unpact_mech.probes.keytokens",
    "unpact_mech.power": "unpact_mech.findings.power",
    "unpact_mech.subject": "unpact_mech.model.subject",
    "unpact_mech.backends": "unpact_mech.model.backends",
    "unpact_mech.backends.bridge": "unpact_mech.model.backends.bridge",
    "unpact_mech.backends.hf": "unpact_mech.model.backends.hf",
    "unpact_mech.backends.kernel": "unpact_mech.model.backends.kernel",
    "unpact_mech.backends.nnsight": "unpact_mech.model.backends.nnsight",
    "unpact_mech.models": "unpact_mech.model.loading",
    "unpact_mech.models.builtin": "unpact_mech.model.builtin",
    "unpact_mech.models.checkpoints": "unpact_mech.model.checkpoints",
    "unpact_mech.data": "unpact_mech.evals.loaders",
    "unpact_mech.data.fictitious": "unpact_mech.evals.loaders.fictitious",
    "unpact_mech.data.hub": "unpact_mech.evals.loaders.hub",
    "unpact_mech.tasks": "unpact_mech.evals.tasks",
    "unpact_mech.metrics": "unpact_mech.evals.metrics",
    "unpact_mech.ou_metrics": "unpact_mech.evals.ou_metrics",
    "unpact_mech.multiple_choice": "unpact_mech.evals.multiple_choice",
    "unpact_mech.criteria": "unpact_mech.evals.criteria",
    "unpact_mech.patch_views": "unpact_mech.patching.views",
    "unpact_mech.compare": "unpact_mech.analysis.compare",
    "unpact_mech.localise": "unpact_mech.analysis.localise",
    "unpact_mech.emphasis": "unpact_mech.analysis.emphasis",
    "unpact_mech.planted": "unpact_mech.findings.planted",
    "unpact_mech.frontier": "unpact_mech.routes.frontier",
    "unpact_mech.pipeline": "unpact_mech.runtime.pipeline",
    "unpact_mech.sharding": "unpact_mech.runtime.sharding",
    "unpact_mech.executors": "unpact_mech.runtime.executors",
    "unpact_mech.experiments": "unpact_mech.study",
    "unpact_mech.experiments.base": "unpact_mech.study.base",
    "unpact_mech.experiments.data": "unpact_mech.study.prepare",
    "unpact_mech.experiments.dilemma": "unpact_mech.study.dilemma",
    "unpact_mech.experiments.findings": "unpact_mech.study.measure",
    "unpact_mech.experiments.finetune": "unpact_mech.study.finetune",
    "unpact_mech.experiments.routes": "unpact_mech.study.recover",
    "unpact_mech.experiments.settings": "unpact_mech.study.settings",
    "unpact_mech.experiments.study": "unpact_mech.study.config",
    "unpact_mech.experiments.unlearn": "unpact_mech.study.unlearn",
    "unpact_mech.tutorial": "unpact_mech.study.tutorial",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds each old path and loads it as the module at its new path."""

    def __init__(self) -> None:
        self._real: dict[str, Any] = {}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path is removed in the next release",
                      DeprecationWarning, stacklevel=2)  # warn() skips the import system's frames: this is the importer's line
        module = importlib.import_module(new)
        if not hasattr(module, "__path__") and any(k.startswith(spec.name + ".") for k in MOVED):
            module.__path__ = []  # the old path was a package (unpact_mech.models): its old submodules resolve here
        self._real[spec.name] = module.__spec__  # the import system sets __spec__ to the alias; exec_module undoes it
        return module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.name in self._real:
            module.__spec__ = self._real.pop(spec.name)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Moved) for f in sys.meta_path):
        sys.meta_path.insert(0, _Moved())
