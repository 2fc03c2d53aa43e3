"""Settings shared by every unlearning method, and the error type of unlearning."""

from __future__ import annotations

from dataclasses import dataclass

from unpact_mech.core.errors import UnpactError


class UnlearningError(UnpactError):
    """Training refused or stopped (bad settings, non-finite loss or weights, bad data)."""


@dataclass
class UnlearnConfig:
    """Hyperparameters of every method; unused ones are ignored (and still recorded).

    ``gamma``, ``alpha`` and ``beta`` keep open-unlearning's names (its trainer configs), so a published config
    maps field for field: gamma weighs the forget term, alpha the retain term, beta is the inverse temperature of
    NPO, SimNPO and IdkDPO. They are unrelated to the KeyToken constants ``KeyTokenParams.alpha/beta`` (paper
    eq. 3-4), which live in ``unpact_mech.probes.keytokens``.
    """

    lr: float = 1e-5
    steps: int = 10
    batch_size: int = 4
    full_batch: bool = False  # every step on all examples (relearning), instead of batch_size drawn with replacement
    grad_clip: float = 1.0
    seed: int = 0
    gamma: float = 1.0  # forget-term weight
    alpha: float = 1.0  # retain-term weight
    beta: float = 0.1  # NPO / DPO temperature
    delta: float = 0.0  # SimNPO margin
    tv_scale: float = 1.0  # Task Vector: theta - a * (theta_ft - theta); with a forget target, the first bracket
    tv_max_scale: float = 8.0  # calibration never goes beyond this scale
    tv_bisect_steps: int = 6  # bisection halvings of the scale bracket (relative precision 2^-6)
    rmu_layer: int = 7
    rmu_coeff: float | None = None  # |c*u|; None: rmu_coeff_scale x mean norm of the forget tokens at the layer
    rmu_coeff_scale: float = 4.0
    rmu_alpha: float = 100.0
    rmu_param_layers: tuple[int, ...] | None = None  # default: rmu_layer-2 .. rmu_layer
    # "wmdp" (WMDP's pooled MSE, the default: RMU is WMDP's method, and its forget term acts on the question
    # tokens that the KeyToken analysis reads) or "open_unlearning" (per-sequence mean over labelled tokens)
    rmu_form: str = "wmdp"
    target_forget_acc: float | None = None  # calibration: stop once forget fact top-1 <= this
    check_every: int = 1
    checkpoint_every: int = 5
    fmt: str = "auto"
    # which tokens are labelled and how GA/GD/KL reduce over them: "open_unlearning" (answer + the template's
    # closing tokens + EOS; per-token mean NLL, KL(ref || current)) or "unpact_v1" (answer tokens only; summed NLL
    # per sequence, KL(current || ref)); see unpact_mech.unlearning.data and .losses
    loss_convention: str = "open_unlearning"
    # AdamW on float32 copies of the trainable weights, rounded into the model's dtype after each step, as
    # mixed-precision trainers keep them (a bfloat16 model's updates below its resolution then accumulate); a float32
    # model is trained as it is
    master_weights: bool = False
