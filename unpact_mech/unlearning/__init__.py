"""Unlearning: methods (``methods/``, one class each), losses, data and the one Trainer.

``unlearn(subject, "npo_gdr", forget, retain, out_dir)`` trains a fresh copy of the subject's HF model and
writes an HF checkpoint with ``unpact.json`` provenance. Methods: ga, ga_gdr, ga_klr, npo, npo_gdr, npo_klr,
simnpo, idk_dpo, task_vector, rmu (each one class with a ``loss``; see ``METHODS``).

Defaults (scaled from MUSE / open-unlearning to a 135M model on CPU): AdamW lr 1e-5, 10 steps, batch 4,
gradient clipping 1.0, gamma (forget weight) 1, alpha (retain weight) 1, NPO beta 0.1, SimNPO beta 2.5 and
delta 0, IdkDPO beta 0.1, Task Vector: fine-tune at lr 1e-4 then subtract with a = 1, RMU: layer 7
(of 30; MLP down-projections of layers 5-7 train), retain alpha 100, lr 1e-2, and a steering coefficient
c = 4 x the mean norm of the forget tokens' activations at that layer (SmolLM2: 4 x 129 = 516). RMU's paper
constant (c = 6.5 on Zephyr-7B) assumes small activations; with c = 20 against SmolLM2's norms of ~145 the
forget term shrank activations instead of scrambling them and nothing was forgotten. RMU's forget term acts on
each forget example's own tokens (question and answer), not on the chat template it shares with every retain
example, where the two terms would cancel.
"""


from unpact_mech.unlearning import losses
from unpact_mech.unlearning.config import UnlearnConfig, UnlearningError
from unpact_mech.unlearning.data import REFUSALS, Example, collate, qa_example, text_example, to_examples
from unpact_mech.unlearning.methods import METHODS, Method, State, register_method
from unpact_mech.unlearning.trainer import fact_accuracy, resolve_config, unlearn

L = losses  # the short name the tests and analyses use

__all__ = [
    "METHODS",
    "REFUSALS",
    "Example",
    "L",
    "Method",
    "State",
    "UnlearnConfig",
    "UnlearningError",
    "collate",
    "fact_accuracy",
    "losses",
    "qa_example",
    "register_method",
    "resolve_config",
    "text_example",
    "to_examples",
    "unlearn",
]
