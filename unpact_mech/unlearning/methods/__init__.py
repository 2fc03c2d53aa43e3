"""Unlearning methods, one class each (open-unlearning's shape), registered by name in ``METHODS``.

A method declares what it needs (``needs_retain``, ``reference``/``needs_reference``), whether it stops at the
forget target (``calibrates``) and its ``defaults``; the user's explicit settings always beat the defaults.
The forget/retain combinations follow open-unlearning: ``retain_loss_type`` is ``None``, ``"gdr"`` (NLL on
the retain answers) or ``"klr"`` (KL to the reference model on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from unpact_mech.core.registry import Registry
from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.config import UnlearnConfig
from unpact_mech.unlearning.data import Example


@dataclass
class State:
    """What a method's loss sees: the trained model, the frozen reference (or None), settings, extras."""

    model: Any
    ref: Any
    cfg: UnlearnConfig
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """An unlearning method: a loss over (forget, retain) batches and the parameters it trains.

    ``reference``: what the method needs of the starting model. ``"none"``; ``"outputs"`` (its log-probs only:
    any model computing the same function will do, so the subject's own frozen weights serve and nothing is
    copied); ``"weights"`` (its parameters or hidden states: a copy is made).
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = "weights"
    needs_retain: ClassVar[bool] = True
    calibrates: ClassVar[bool] = True  # training stops once the forget target is reached
    defaults: ClassVar[dict[str, Any]] = {}
    retain_loss_type: ClassVar[str | None] = None

    @property
    def needs_reference(self) -> bool:
        return self.reference != "none"

    def setup(self, state: State, forget: list[Example], retain: list[Example], tokenizer: Any) -> None:
        """Prepare method-specific data (e.g. refusal answers) before training."""

    def trainable(self, model: Any, cfg: UnlearnConfig) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters()]

    def forget_loss(self, s: State, forget: L.Batch, idx: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        """gamma * forget term + alpha * retain term (``retain_loss_type``)."""
        return {"forget": s.cfg.gamma * self.forget_loss(s, forget, idx), **retain_term(self.retain_loss_type, s, retain)}

    def finish(self, s: State) -> None:
        """Post-processing after the last step (Task Vector's subtraction)."""


METHODS: Registry[type[Method]] = Registry("unlearning method")


def register_method(cls: type[Method]) -> type[Method]:
    """Register a method class under its ``name`` (adding a method is one module and this decorator)."""
    return METHODS.register(cls.name, cls)


def retain_term(kind: str | None, s: State, retain: L.Batch) -> dict[str, torch.Tensor]:
    """alpha * the retain loss of ``kind`` (None: no retain term)."""
    if kind == "gdr":
        return {"retain": s.cfg.alpha * L.gdr(s.model, retain, s.cfg.loss_convention)}
    if kind == "klr":
        return {"retain": s.cfg.alpha * L.klr(s.model, s.ref, retain, s.cfg.loss_convention)}
    return {}


from unpact_mech.unlearning.methods import ga, idk_dpo, npo, rmu, task_vector  # noqa: E402,F401  (registers)
