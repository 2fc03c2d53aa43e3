"""Unlearning: methods (``methods/``, one class each), losses, data and the one Trainer (``trainer.py``, where the
defaults and their reasons are documented).

``unlearn(subject, "npo_gdr", forget, retain, out_dir)`` trains a fresh copy of the subject's HF model and
writes an HF checkpoint with ``unpact.json`` provenance. Methods: see ``METHODS``.
"""


from unpact_mech.unlearning import losses
from unpact_mech.unlearning.config import UnlearnConfig, UnlearningError
from unpact_mech.unlearning.data import REFUSALS, Example, collate, qa_example, text_example, to_examples
from unpact_mech.unlearning.methods import METHODS, Method, State, register_method
from unpact_mech.unlearning.trainer import Finetune, fact_accuracy, fit, resolve_config, unlearn

L = losses  # the short name the tests and analyses use

__all__ = [
    "METHODS",
    "REFUSALS",
    "Example",
    "Finetune",
    "L",
    "Method",
    "State",
    "UnlearnConfig",
    "UnlearningError",
    "collate",
    "fact_accuracy",
    "fit",
    "losses",
    "qa_example",
    "register_method",
    "resolve_config",
    "text_example",
    "to_examples",
    "unlearn",
]
