"""IdkDPO: refusals preferred over the forget answers (DPO), with a GD retain term."""

from __future__ import annotations

from typing import Any

import torch

from unpact_mech.probes import Probe
from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.config import UnlearningError
from unpact_mech.unlearning.data import REFUSALS, Example, collate, qa_example
from unpact_mech.unlearning.methods import Method, State, register_method


@register_method
class IdkDPO(Method):
    """DPO with refusals preferred over the forget answers, plus a GDR retain term."""

    name = "idk_dpo"
    reference = "outputs"
    retain_loss_type = "gdr"

    def setup(self, state: State, forget: list[Example], retain: list[Example], tokenizer: Any) -> None:
        probes = state.extra["forget_probes"]
        if not all(isinstance(p, Probe) for p in probes):
            raise UnlearningError("idk_dpo needs question/answer probes as forget data, not raw text")
        state.extra["idk"] = [qa_example(tokenizer, p, state.cfg.fmt, REFUSALS[i % len(REFUSALS)],
                                         state.cfg.loss_convention)
                              for i, p in enumerate(probes)]

    def forget_loss(self, s: State, forget: L.Batch, idx: list[int]) -> torch.Tensor:
        pref = collate([s.extra["idk"][i] for i in idx], s.extra["pad_id"], s.extra["device"])
        return L.dpo(s.model, s.ref, pref, forget, s.cfg.beta)
