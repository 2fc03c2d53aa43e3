"""Shared set-up of the tutorial notebooks (``notebooks/``): settings from the environment, the facts they use and
one cached unlearned model that notebooks 02-05 share.

Environment (CI executes every notebook on a tiny random model with these): ``UNPACT_NB_MODEL`` (default
``smollm2-135m``), ``UNPACT_NB_FORMAT`` (``auto``), ``UNPACT_NB_TINY`` (``1``: the tiny vocabulary's facts and a
2-step unlearning run), ``UNPACT_NB_UNLEARNED`` (use this checkpoint instead of training one).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unpact_mech.evals.loaders import filter_known, load_benchmark
from unpact_mech.model import loading as models
from unpact_mech.probes import Probe
from unpact_mech.runtime.pipeline import code_fingerprint
from unpact_mech.study import SETTINGS, budget_order, control_candidates
from unpact_mech.unlearning import unlearn

# facts in the tiny test tokenizer's vocabulary (tests/conftest.py), for CI runs
TINY_FACTS = [
    Probe("t-f0", "what is the capital of france ?", "the capital of france is paris", "forget", "paris"),
    Probe("t-f1", "what is the capital of japan ?", "the capital of japan is tokyo", "forget", "tokyo"),
    Probe("t-r0", "who wrote hamlet ?", "hamlet was wrote by shakespeare", "retain", "shakespeare"),
    Probe("t-r1", "what is the red planet ?", "the red planet is mars", "retain", "mars"),
    Probe("t-g0", "what is the symbol of gold ?", "the symbol of gold is au", "general", "au"),
    Probe("t-g1", "what is the largest planet ?", "the largest planet is mars", "general", "mars"),
]


@dataclass(frozen=True)
class Settings:
    model: str
    fmt: str
    tiny: bool
    per_split: int
    method: str = "npo_gdr"
    max_steps: int = 10
    target: float = 0.25

    @property
    def label(self) -> str:
        return "tiny random model (CI settings)" if self.tiny else self.model


def settings() -> Settings:
    """The notebook settings from the environment (see the module docstring)."""
    tiny = bool(os.environ.get("UNPACT_NB_TINY"))
    return Settings(model=os.environ.get("UNPACT_NB_MODEL", "smollm2-135m"),
                    fmt=os.environ.get("UNPACT_NB_FORMAT", "auto"), tiny=tiny, per_split=2 if tiny else 6,
                    max_steps=2 if tiny else 10, target=0.0 if tiny else 0.25)


def facts(base: Any, s: Settings) -> dict[str, list[Probe]]:
    """Forget / retain / general facts the base model answers (fact span top-1), ``per_split`` each, drawn in the
    demo's domain-stratified order; the tiny facts as they are on a tiny model (it knows none)."""
    if s.tiny:
        return {sp: [p for p in TINY_FACTS if p.split == sp] for sp in ("forget", "retain", "general")}
    known, _ = filter_known(base, budget_order(load_benchmark("facts"))[:80], s.fmt)
    return {sp: [p for p in known if p.split == sp][: s.per_split] for sp in ("forget", "retain", "general")}


def control_facts(data: dict[str, list[Probe]], s: Settings, n: int = 24) -> list[Probe]:
    """Candidate control facts for the recovery routes: the first ``n`` facts of the demo's order that no split
    uses (the routes keep those neither model answers); none on a tiny model, whose facts are all in use."""
    if s.tiny:
        return []
    return control_candidates(load_benchmark("facts"), data, n)


def unlearned_model(base: Any, data: dict[str, list[Probe]], s: Settings) -> Any:
    """The base model unlearned on ``data['forget']`` (retain: ``data['retain']``) with the demo's settings for
    ``s.method``, trained once and cached under ``$UNPACT_CACHE/tutorial`` (or ``UNPACT_NB_UNLEARNED``)."""
    given = os.environ.get("UNPACT_NB_UNLEARNED")
    if given:
        return models.load_model(given)
    lr = 1e-3 if s.tiny else SETTINGS[s.method]["lr"]
    key = json.dumps([s.model, s.fmt, s.method, s.max_steps, s.target, lr,
                      [[p.id, p.prompt, p.answer] for p in data["forget"] + data["retain"]],
                      code_fingerprint("unpact_mech.unlearning")])  # retrained when the losses or labels change
    out = models.cache_dir() / "tutorial" / f"{s.method}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (Path(out) / "unpact.json").exists():
        unlearn(base, s.method, data["forget"], data["retain"], out, steps=s.max_steps, lr=lr,
                target_forget_acc=s.target, check_every=1, fmt=s.fmt, progress=False)
    return models.load_model(str(out))
