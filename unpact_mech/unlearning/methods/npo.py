"""NPO and SimNPO (reference-free, length-normalised) forget terms."""

from __future__ import annotations

import torch

from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.methods import Method, State, register_method


@register_method
class NPO(Method):
    """-(2/beta) log sigmoid(-beta (log pi - log pi_ref)) on the forget answers."""

    name = "npo"
    reference = "outputs"
    needs_retain = False

    def forget_loss(self, s: State, forget: L.Batch, idx: list[int]) -> torch.Tensor:
        return L.npo(s.model, s.ref, forget, s.cfg.beta)


@register_method
class NPOGDR(NPO):
    name = "npo_gdr"
    needs_retain = True
    retain_loss_type = "gdr"


@register_method
class NPOKLR(NPO):
    name = "npo_klr"
    needs_retain = True
    retain_loss_type = "klr"


@register_method
class SimNPO(Method):
    """SimNPO with a GD retain term, no reference model: -(2/beta) log sigmoid(beta (NLL/|y| - delta)), weighted
    gamma; defaults beta 4.5, gamma 0.125, delta 0, alpha 1 as open-unlearning's ``configs/trainer/SimNPO.yaml``
    (from SimNPO's TOFU config)."""

    name = "simnpo"
    reference = "none"
    defaults = {"beta": 4.5, "gamma": 0.125, "delta": 0.0}
    retain_loss_type = "gdr"

    def forget_loss(self, s: State, forget: L.Batch, idx: list[int]) -> torch.Tensor:
        return L.simnpo(s.model, forget, s.cfg.beta, s.cfg.delta)
