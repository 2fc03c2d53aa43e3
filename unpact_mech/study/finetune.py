"""TOFU's finetune-then-forget, offline: teach the pool's invented people to the base model (the "full" model the
study then unlearns) and, separately, only its retain people (the "retain" model forget quality is measured
against), as TOFU's target model (finetuned on ``TOFU_QA_full``: locuslab/open-unlearning
``configs/experiment/finetune/tofu/lora.yaml``) and retain model (finetuned on the retain split only) are made;
forget quality is the KS test between the unlearned and retain models' forget-set truth ratios
(``src/evals/metrics/privacy.py``). Departure: full finetuning of every weight with AdamW at ``FINETUNE``'s
settings (CPU-sized), not LoRA for 3 epochs.

Each model is ``OUT/finetuned/{full,retain}``, a stamped stage (base model, taught probes, settings, code),
trained through the unlearning loop with :class:`~unpact_mech.unlearning.Finetune` (NLL on the answers); its
optimizer state is saved every ``checkpoint_every`` steps, so a killed run resumes from the last save.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.log import say
from unpact_mech.model import loading as models
from unpact_mech.model.loading import data_hash, read_provenance
from unpact_mech.runtime.pipeline import make_stamp, stage
from unpact_mech.study.base import LazyBase
from unpact_mech.study.settings import FINETUNE, probe_key
from unpact_mech.unlearning import Finetune, unlearn

CODE = ("unpact_mech.study.finetune", "unpact_mech.unlearning.trainer")


def check_finetune_pool(pool: Sequence[Any]) -> None:
    """The taught people: some forget and some retain probes (checked before any model loads)."""
    splits = {p.split for p in pool}
    if not {"forget", "retain"} <= splits:
        raise UnpactError(f"--finetune teaches the forget and retain probes to the model, but the probes have splits "
                          f"{sorted(str(s) for s in splits)}; give invented people, e.g. --probes fictitious:40")


def finetune_stage(lazy: LazyBase, pool: Sequence[Any], out: Path, settings: dict[str, Any] | None = None,
                   progress: bool = True, on_change: str = "recompute") -> dict[str, str]:
    """Train ``OUT/finetuned/full`` on the pool's forget + retain probes and ``OUT/finetuned/retain`` on its
    retain probes (``FINETUNE`` settings, overridden by ``settings``); returns their paths by role."""
    check_finetune_pool(pool)
    cfg = {**FINETUNE, **(settings or {})}
    taught = {"full": [p for p in pool if p.split in ("forget", "retain")],
              "retain": [p for p in pool if p.split == "retain"]}
    paths = {}
    for role, probes in taught.items():
        ckpt = out / "finetuned" / role
        stamp = make_stamp(CODE, model=lazy.key, role=role, settings=cfg,
                           probes=data_hash([probe_key(p) for p in probes]))

        def train(probes: list[Any] = probes, ckpt: Path = ckpt, role: str = role) -> Path:
            base = lazy.get()
            say(f"[unpact] teaching {len(probes)} facts to {base.name} ({role} model)")
            path = unlearn(base, Finetune(), probes, [], ckpt, progress=progress, overwrite=True, **cfg)
            prov = read_provenance(path)
            say(f"[unpact] {role} model: taught-fact accuracy {prov['forget_fact_acc_before']:.2f} -> "
                f"{prov['forget_fact_acc_after']:.2f} in {prov['steps']} steps")
            return path

        def exists(ckpt: Path = ckpt) -> bool:
            return (ckpt / "unpact.json").exists()

        def load(ckpt: Path = ckpt) -> Path:
            return ckpt

        paths[role] = str(stage(f"finetune {role}", out / "finetuned" / f"{role}.stamp.json", stamp, exists, load,
                                train, on_change))
    return paths


def retain_subject(spec: str, like: Any) -> Any:
    """The retain model, loaded in the dtype and on the device of ``like`` (the study's base)."""
    return models.load_like(spec, like)


def tuned_base(model: Any, full: str) -> Any:
    """The study's base after finetuning: the full model's path, or (``model`` a loaded Subject) the full model
    loaded in that Subject's dtype and on its device."""
    return full if isinstance(model, str) else retain_subject(full, model)
