"""Gradient ascent on the forget answers, alone or with a GD or KL retain term."""

from __future__ import annotations

import torch

from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.methods import Method, State, register_method


@register_method
class GradAscent(Method):
    """-NLL on the forget batch."""

    name = "ga"
    reference = "none"
    needs_retain = False

    def forget_loss(self, s: State, forget: L.Batch, idx: list[int]) -> torch.Tensor:
        return L.ga(s.model, forget, s.cfg.loss_convention)


@register_method
class GradAscentGDR(GradAscent):
    name = "ga_gdr"
    needs_retain = True
    retain_loss_type = "gdr"


@register_method
class GradAscentKLR(GradAscent):
    name = "ga_klr"
    reference = "outputs"
    needs_retain = True
    retain_loss_type = "klr"
