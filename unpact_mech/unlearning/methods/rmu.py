"""RMU: push the forget examples' activations at one layer to a random direction c*u; keep retain ones."""

from __future__ import annotations

from typing import Any

import torch

from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.config import UnlearnConfig, UnlearningError
from unpact_mech.unlearning.data import Example, collate
from unpact_mech.unlearning.methods import Method, State, register_method


@register_method
class RMU(Method):
    """Representation misdirection: push forget activations at one layer to c*u; keep retain ones."""

    name = "rmu"
    defaults = {"lr": 1e-2}

    def _layers(self, cfg: UnlearnConfig) -> list[int]:
        return list(cfg.rmu_param_layers) if cfg.rmu_param_layers is not None else list(range(max(0, cfg.rmu_layer - 2), cfg.rmu_layer + 1))

    def trainable(self, model: Any, cfg: UnlearnConfig) -> list[torch.nn.Parameter]:
        layers = model.model.layers
        n = len(layers)
        bad = [i for i in self._layers(cfg) if not 0 <= i < n] + ([cfg.rmu_layer] if not 0 <= cfg.rmu_layer < n else [])
        if bad:
            raise UnlearningError(f"RMU layer(s) {bad} out of range for a model with {n} layers")
        return [p for i in self._layers(cfg) for p in layers[i].mlp.down_proj.parameters()]

    def setup(self, state: State, forget: list[Example], retain: list[Example], tokenizer: Any) -> None:
        cfg = state.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        u = torch.rand(state.model.config.hidden_size, generator=g).to(state.extra["device"])
        coeff = cfg.rmu_coeff
        if coeff is None:  # scale c to this model's activations (SmolLM2 layer 7: ~145 on question tokens)
            batch = collate(forget, state.extra["pad_id"], state.extra["device"])
            with torch.no_grad():
                mask = batch["content_mask"].bool() if cfg.rmu_form == "wmdp" else batch["labels"] != -100
                h = L.hidden_at(state.ref, batch, cfg.rmu_layer)[mask]  # [n positions the forget term acts on, d_model]
            coeff = cfg.rmu_coeff_scale * float(h.norm(dim=-1).mean()) if len(h) else 20.0
        state.extra["resolved"] = {"rmu_coeff": round(coeff, 4)}
        state.extra["control"] = coeff * u / u.norm()

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        f, r = L.rmu(s.model, s.ref, forget, retain, s.cfg.rmu_layer, s.extra["control"], s.cfg.rmu_alpha,
                     s.cfg.rmu_form)
        return {"forget": s.cfg.gamma * f, "retain": r}
