"""unpact_mech: look inside unlearned language models (unPact, arXiv 2509.24675), mechanistically."""

from unpact_mech.keytokens import KeyTokenParams, select_keytokens
from unpact_mech.models import Subject, load_model, load_nnsight, save_checkpoint
from unpact_mech.probes import Probe, TokenizedProbe, load_probes, tokenize_probe, tokenize_probes

__version__ = "0.1.0"

__all__ = [
    "KeyTokenParams",
    "Probe",
    "Subject",
    "TokenizedProbe",
    "load_model",
    "load_nnsight",
    "load_probes",
    "save_checkpoint",
    "select_keytokens",
    "tokenize_probe",
    "tokenize_probes",
]
