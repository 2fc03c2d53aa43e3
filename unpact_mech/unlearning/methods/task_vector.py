"""Task Vector: fine-tune on the forget data, then move the weights away from the fine-tuned ones."""

from __future__ import annotations

from collections.abc import Callable

import torch

from unpact_mech.unlearning import losses as L
from unpact_mech.unlearning.methods import Method, State, register_method


@register_method
class TaskVector(Method):
    """Fine-tune on the forget data, then theta = theta_0 - a * (theta_ft - theta_0).

    With a forget target, the scale ``a`` is calibrated by bisection like the other methods' step counts: the
    smallest ``a`` in (0, tv_max_scale] whose forget fact accuracy is at most the target, to a relative
    precision of 2^-tv_bisect_steps (accuracy is assumed to fall as ``a`` grows; each probe is one forward
    pass over the forget set). Without a target, ``a = tv_scale``.
    """

    name = "task_vector"
    needs_retain = False
    calibrates = False  # the training steps are not stopped early; the scale is calibrated in finish()
    defaults = {"lr": 1e-4}

    def loss(self, s: State, forget: L.Batch, retain: L.Batch, idx: list[int]) -> dict[str, torch.Tensor]:
        return {"finetune": L.gdr(s.model, forget, s.cfg.loss_convention)}

    def finish(self, s: State) -> None:
        params, ref = list(s.model.parameters()), list(s.ref.parameters())
        with torch.no_grad():
            delta = [p - p0 for p, p0 in zip(params, ref)]

        def apply(a: float) -> None:
            with torch.no_grad():
                for p, p0, d in zip(params, ref, delta):
                    p.copy_(p0 - a * d)

        target = s.cfg.target_forget_acc
        accuracy: Callable[[], float] | None = s.extra.get("forget_accuracy")
        if target is None or accuracy is None:
            apply(s.cfg.tv_scale)
            return
        tried: list[tuple[float, float]] = []

        def acc_at(a: float) -> float:
            apply(a)
            tried.append((round(a, 6), accuracy()))
            return tried[-1][1]

        lo, hi = 0.0, s.cfg.tv_scale
        while acc_at(hi) > target and hi < s.cfg.tv_max_scale:  # bracket: grow the scale until the target holds
            lo, hi = hi, min(2 * hi, s.cfg.tv_max_scale)
        reached = tried[-1][1] <= target
        if reached:
            for _ in range(s.cfg.tv_bisect_steps):
                mid = (lo + hi) / 2
                if acc_at(mid) <= target:
                    hi = mid
                else:
                    lo = mid
        apply(hi)
        s.extra.setdefault("resolved", {}).update({"tv_scale": round(hi, 6), "tv_target_reached": reached,
                                                   "tv_calibration": tried})
