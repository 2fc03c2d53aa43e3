"""Task Vector: fine-tune on the forget data, then move the weights away from the fine-tuned ones."""

from __future__ import annotations

import torch

from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.methods import Method, State, register_method


@register_method
class TaskVector(Method):
    """Fine-tune on the forget data, then theta - a * (theta_ft - theta)."""

    name = "task_vector"
    needs_retain = False
    calibrates = False  # one scale a, applied after training
    defaults = {"lr": 1e-4}

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        return {"finetune": L.gdr(s.model, forget)}

    def finish(self, s: State) -> None:
        a = s.cfg.tv_scale
        with torch.no_grad():
            for p, p0 in zip(s.model.parameters(), s.ref.parameters()):
                p.copy_(p0 - a * (p - p0))
