"""Benchmarks and built-in data, registered by name: ``load_benchmark(name, subset, split, source)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.registry import Registry
from unpact_mech.model.subject import Subject
from unpact_mech.probes import Probe, load_probes, tokenize_probes
from unpact_mech.scoring import probe_table

Loader = Callable[..., list[Any]]  # probes, raw texts (MUSE's raw subset) or passages (its privleak subset)


@dataclass(frozen=True)
class Passage:
    """One text of a membership-inference set, scored whole: ``split`` is ``forget`` (seen in training, to be
    unlearned), ``holdout`` (never seen) or ``retain``."""

    id: str
    text: str
    split: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise UnpactError(f"passage {self.id!r}: empty text")
        if self.split not in ("forget", "holdout", "retain"):
            raise UnpactError(f"passage {self.id!r}: split must be forget, holdout or retain, got {self.split!r}")


BENCHMARKS: Registry[Loader] = Registry("benchmark")


def register_benchmark(name: str) -> Callable[[Loader], Loader]:
    """Register a loader ``fn(subset=None, split=None, source=None) -> list[Probe | str]``."""
    return BENCHMARKS.decorator(name)


def load_benchmark(name: str, subset: str | None = None, split: str | None = None, source: Any = None) -> list[Any]:
    """Load probes of a registered benchmark."""
    return BENCHMARKS[name](subset=subset, split=split, source=source)


def load_probe_spec(spec: str, split: str | None = None) -> list[Any]:
    """Probes named by one string (the CLI's ``--probes`` and a study config's ``probes``): a JSON-lines probe
    file, or a registered benchmark: ``facts[:SPLIT]`` (``facts:forget``), invented people
    ``fictitious:N[:seed[:F]]``, a hub benchmark ``NAME[:SUBSET[:SPLIT]]`` (``tofu:retain_perturbed``,
    ``wmdp:wmdp-bio``)."""
    name, _, sp = spec.partition(":")
    if name in BENCHMARKS and not Path(spec).exists():
        if name == "fictitious":
            return load_benchmark(name, subset=sp or None, split=split)
        if name == "facts":
            return load_benchmark(name, split=sp or split)
        subset, _, hub_split = sp.partition(":")
        return load_benchmark(name, subset=subset or None, split=hub_split or split)
    return load_probes(spec)


def builtin_path(filename: str) -> Any:
    """Path of a file shipped in ``unpact_mech/evals/loaders/builtin``."""
    return resources.files("unpact_mech.evals.loaders").joinpath("builtin", filename)


@register_benchmark("facts")
def builtin_facts(subset: str | None = None, split: str | None = None, source: Any = None) -> list[Probe]:
    """Our own short world-knowledge facts (splits forget / retain / general; ``subset`` = a domain)."""
    probes = load_probes(source or builtin_path("facts.jsonl"))
    splits = {p.split for p in probes}
    if split is not None and split not in splits:
        raise UnpactError(f"facts: no split '{split}'; splits are {sorted(splits)}")
    domains = {p.domain for p in probes}
    if subset is not None and subset not in domains:
        raise UnpactError(f"facts: no domain '{subset}'; domains are {sorted(d for d in domains if d)}")
    return [p for p in probes if (split is None or p.split == split) and (subset is None or p.domain == subset)]


def filter_known(subject: Subject, probes: list[Probe], fmt: str = "auto") -> tuple[list[Probe], Any]:
    """Keep the probes whose fact span the model gets top-1 (teacher forcing); report counts per split/domain."""
    table = probe_table(subject, tokenize_probes(subject, probes, fmt))
    table["domain"] = [p.domain for p in probes]
    ok = dict(zip(table.probe_id, table.fact_top1))
    report = table.groupby(["split", "domain"]).fact_top1.agg(known="sum", total="count").reset_index()
    return [p for p in probes if ok[p.id]], report


from unpact_mech.evals.loaders import fictitious, hub  # noqa: E402,F401  (registers loaders)
