"""The study as one config object: ``Study(StudyConfig(...)).run()``.

A :class:`StudyConfig` holds every option of a study run that a file can state (model, methods or given
checkpoints, probes, task, steps, target, KeyToken parameters, finetune, on_change, dtype, device, and the
budgets: ``budget``, ``route_budget`` and the emphasis ``factors``). A run writes
it to ``OUT/study.json`` once it finishes: ``unpact study --config OUT/study.json`` reruns exactly that study
(every stage is then reused from its stamp, which is built from the same values). Config files are JSON, or
YAML by their suffix (``.yaml``/``.yml``).

The report's settings section shows the config it ran under.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write_text
from unpact_mech.core.options import dataclass_from
from unpact_mech.evals.loaders import load_probe_spec
from unpact_mech.model import loading as models
from unpact_mech.model.chat import ChatArgs
from unpact_mech.probes.keytokens import KeyTokenParams
from unpact_mech.routes import RECOVERY_ROUTES
from unpact_mech.runtime.results import MethodResult, StudyResult
from unpact_mech.study import settings as defaults
from unpact_mech.study.dilemma import run_demo
from unpact_mech.study.settings import Budget, FrontierBudget, RouteBudget

CONFIG_FILE = "study.json"  # what every run writes into its OUT
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study run depends on that a file can state (see the module docstring).

    ``unlearned``: (name, checkpoint spec) pairs analysed as they are, instead of training ``methods``.
    ``probes``: probe specs (:func:`unpact_mech.evals.loaders.load_probe_spec`), concatenated.
    ``per_split``: known probes per split (None: all).
    ``budget``, ``route_budget``, ``factors``: what each method spends (:mod:`unpact_mech.study.settings`).
    """

    model: str = "smollm2-135m"
    methods: tuple[str, ...] = defaults.PAPER_METHODS
    unlearned: tuple[tuple[str, str], ...] = ()
    probes: tuple[str, ...] = ("facts",)
    task: str | None = None
    out: str = "unpact_out/study"
    steps: int | None = None
    target: float = 0.25
    patch: bool = True
    per_split: int | None = defaults.PER_SPLIT
    known_only: bool = True
    keytokens: KeyTokenParams = field(default_factory=KeyTokenParams)
    finetune: bool = False
    finetune_steps: int | None = None
    retain_model: str | None = None
    on_change: str = "recompute"
    dtype: str = "float32"
    device: str | None = None
    system_prompt: str | None = None  # the chat prompts' system turn and date string (ChatArgs)
    date_string: str | None = None
    budget: Budget = defaults.BUDGET
    route_budget: RouteBudget = defaults.ROUTE_BUDGET
    factors: tuple[float, ...] = defaults.FACTORS

    def __post_init__(self) -> None:
        # checked before any work (run_demo checks the rest: methods, task, steps, target, on_change)
        if not self.probes:
            raise UnpactError("a study needs probes: give at least one probe spec (e.g. 'facts')")
        ChatArgs(self.system_prompt, self.date_string)  # checked here, before any work
        if self.dtype not in DTYPES:
            raise UnpactError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.finetune_steps is not None and not self.finetune:
            raise UnpactError("finetune_steps (--finetune-steps) sets the teaching of finetune: add --finetune "
                              "(finetune: true in a config), or drop it")
        _check_budgets(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists, ``unlearned`` as a mapping)."""
        d = dataclasses.asdict(self)
        d["unlearned"] = dict(self.unlearned)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyConfig:
        """The config of ``d`` (as :meth:`to_dict` writes it); an unknown key is refused, naming the known ones.
        Lists become tuples (the config is frozen and hashable), ``unlearned`` may be a mapping."""
        d = dict(d)
        for key in ("methods", "probes", "factors"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        if "unlearned" in d:
            pairs = d["unlearned"].items() if isinstance(d["unlearned"], Mapping) else d["unlearned"] or ()
            d["unlearned"] = tuple((str(n), str(s)) for n, s in pairs)
        if "budget" in d:
            d["budget"] = dataclass_from(Budget, d["budget"], "budget", {"frontier": FrontierBudget})
        if "route_budget" in d:
            d["route_budget"] = dataclass_from(RouteBudget, d["route_budget"], "route_budget")
        if isinstance(d.get("keytokens"), Mapping):
            d["keytokens"] = dataclass_from(KeyTokenParams, d["keytokens"], "keytokens")
        return dataclass_from(cls, d, "study config")

    def dump(self, path: str | Path) -> Path:
        """Write the config to ``path`` (JSON, or YAML for ``.yaml``/``.yml``), atomically."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StudyConfig:
        """The config in ``path`` (JSON, or YAML by suffix)."""
        path = Path(path)
        if not path.is_file():
            raise UnpactError(f"study config {str(path)!r} does not exist (a study writes OUT/{CONFIG_FILE})")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise UnpactError(f"study config {str(path)!r} is not valid YAML: {e}") from None
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise UnpactError(f"study config {str(path)!r} is not valid JSON ({e}); YAML files end in .yaml") from None
        if not isinstance(d, Mapping):
            raise UnpactError(f"study config {str(path)!r} must hold a mapping of options, got {type(d).__name__}")
        return cls.from_dict(d)


def _check_budgets(c: StudyConfig) -> None:
    """The budgets' values, before any work: positive counts, known routes, factors in (0, 1000]."""
    b, rb, fr = c.budget, c.route_budget, c.budget.frontier
    if not (isinstance(b, Budget) and isinstance(rb, RouteBudget) and isinstance(fr, FrontierBudget)):
        raise UnpactError("budget, route_budget (and budget.frontier) must be Budget, RouteBudget (FrontierBudget) "
                          "or, in a config file, mappings of their fields")
    for name, v in (("budget.candidates", b.candidates), ("budget.n_draws", b.n_draws),
                    ("budget.frontier.n_draws", fr.n_draws), ("budget.frontier.every", fr.every),
                    ("route_budget.group_size", rb.group_size), ("route_budget.shots", rb.shots),
                    ("route_budget.n_control", rb.n_control)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UnpactError(f"{name} must be a positive integer, got {v!r}")
    unknown = [r for r in rb.routes if r not in RECOVERY_ROUTES]
    if unknown:
        raise UnpactError(f"route_budget.routes: unknown route(s) {unknown}; routes are {', '.join(RECOVERY_ROUTES)}")
    for name, fs in (("factors", c.factors), ("budget.gen_factors", b.gen_factors), ("budget.frontier.factors",
                                                                                   fr.factors)):
        if not fs or any(not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1000 for f in fs):
            raise UnpactError(f"{name} must be a non-empty list of emphasis factors in (0, 1000], got {list(fs)!r}")


class Study:
    """One study run from its config: ``Study(config).run()`` returns a :class:`StudyResult` (the summary table,
    each method's results, the report) and writes ``OUT/report.html``, the stages' caches and ``OUT/study.json``."""

    def __init__(self, config: StudyConfig | Mapping[str, Any]) -> None:
        """``config``: a StudyConfig, or a mapping of its options (as a config file holds them)."""
        self.config = config if isinstance(config, StudyConfig) else StudyConfig.from_dict(config)

    def run(self, model: Any = None, on_keytokens: Callable[[pd.DataFrame], None] | None = None,
            keytoken_probes: Sequence[Any] | None = None) -> StudyResult:
        """Run (or resume) the study. ``model``: an already loaded Subject of ``config.model`` (e.g. loaded with
        options a file cannot state, such as ``max_memory``); default: loaded from the config. ``on_keytokens``
        receives the base model's KeyToken table of ``keytoken_probes`` first (``unpact demo`` prints it)."""
        c = self.config
        probes = [p for spec in c.probes for p in load_probe_spec(spec)]
        if model is None:
            model = c.model
            chat = ChatArgs(c.system_prompt, c.date_string)
            if c.dtype != "float32" or c.device is not None or chat != ChatArgs():
                model = models.load_model(c.model, verbose=True, dtype=c.dtype, device=c.device, chat=chat)
        table = run_demo(model, c.methods, c.out, steps=c.steps, target=c.target, patch=c.patch,
                         per_split=c.per_split, probes=probes, known_only=c.known_only, params=c.keytokens,
                         on_change=c.on_change, unlearned=dict(c.unlearned), task_name=c.task, finetune=c.finetune,
                         finetune_settings=None if c.finetune_steps is None else {"steps": c.finetune_steps},
                         retain_model=c.retain_model, on_keytokens=on_keytokens, keytoken_probes=keytoken_probes,
                         budget=c.budget, route_budget=c.route_budget, factors=c.factors, config=c.to_dict())
        c.dump(Path(c.out) / CONFIG_FILE)
        out = Path(c.out)
        methods = list(dict(c.unlearned)) or list(c.methods)
        return StudyResult(out, table, {m: MethodResult.load(out, m) for m in methods}, out / "report.html")
