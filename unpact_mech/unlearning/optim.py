"""The optimiser of every training run: AdamW on the trainable weights, or on float32 master copies of them.

With ``master_weights`` a low-precision model (bfloat16, float16) keeps a float32 copy ``w32`` of each trainable
weight, as mixed-precision trainers do: the forward and backward run in the model's dtype, then
``w32 <- AdamW(w32, grad.float())`` and the model's weight becomes ``round(w32)``. An update smaller than half
the spacing of bfloat16 near a weight (about ``|w| * 2^-9``) then accumulates in ``w32`` instead of vanishing.
The masters are part of the optimiser's state, so a resume state restores them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class MasterWeights:
    """AdamW on float32 masters of ``params``, written back into them (rounded) after every step."""

    def __init__(self, params: Sequence[torch.nn.Parameter], lr: float) -> None:
        self.params = list(params)
        self.masters = [torch.nn.Parameter(p.detach().float().clone()) for p in self.params]
        self.inner = torch.optim.AdamW(self.masters, lr=lr)
        self.param_groups = self.inner.param_groups

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        for p, m in zip(self.params, self.masters):
            p.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        sd = self.inner.state_dict()
        for i, m in enumerate(self.masters):
            sd["state"].setdefault(i, {})["master"] = m.detach().clone()
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        state = {}
        with torch.no_grad():
            for i, st in sd["state"].items():
                st = dict(st)
                if "master" in st:
                    self.masters[int(i)].copy_(st.pop("master"))
                if st:
                    state[i] = st
            self.inner.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
            for p, m in zip(self.params, self.masters):
                p.copy_(m)


Optimizer = torch.optim.Optimizer | MasterWeights  # what the training loop and the resume state take


def optimizer(params: Sequence[torch.nn.Parameter], lr: float, master_weights: bool = False) -> Optimizer:
    """AdamW on ``params``; with ``master_weights`` and any of them below float32, on float32 masters."""
    if master_weights and any(p.dtype in (torch.bfloat16, torch.float16) for p in params):
        return MasterWeights(params, lr)
    return torch.optim.AdamW(params, lr=lr)
