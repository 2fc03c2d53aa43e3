"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

``<out>.resume.safetensors`` holds the model's and the optimizer's tensors (tied weights stored once);
``<out>.resume.json`` holds the step, history, the data generator's RNG state (a list of bytes), the optimizer's
hyperparameters, the run key and the SHA-256 of the tensor file. The JSON is written last and names the
tensor file's hash, so a half-written pair is never taken for a valid one. Nothing here unpickles: a legacy
pickled ``<out>.resume.pt`` (which could run code when loaded) is refused with a way to start over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unpact_mech.errors import UnpactError
from unpact_mech.io import atomic_write, atomic_write_json, sha256_file

FORMAT = "unpact-resume-v1"


class ResumeError(UnpactError):
    """A resume file that cannot be used."""


@dataclass
class ResumeFiles:
    tensors: Path
    meta: Path
    legacy: Path

    @classmethod
    def beside(cls, out: Path) -> ResumeFiles:
        return cls(out.with_name(out.name + ".resume.safetensors"), out.with_name(out.name + ".resume.json"),
                   out.with_name(out.name + ".resume.pt"))

    def exists(self) -> bool:
        return self.meta.exists()

    def remove(self) -> None:
        for p in (self.tensors, self.meta):
            p.unlink(missing_ok=True)


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors with one entry per shared storage (tied weights), and the aliases that point to a kept name."""
    kept: dict[tuple[int, tuple[int, ...], int], str] = {}  # (storage, shape, offset) -> first name
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), tuple(t.shape), int(t.storage_offset()))
        if key in kept:
            aliases[name] = kept[key]
        else:
            kept[key] = name
            out[name] = t.detach().to("cpu").contiguous()
    return out, aliases


def save_state(files: ResumeFiles, model: Any, opt: torch.optim.Optimizer, gen: torch.Generator, step: int,
               history: list[dict[str, Any]], run_key: str) -> None:
    """Write the training state atomically (tensor file, then the JSON that vouches for it)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for key, val in st.items():
            tensors[f"opt.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    unique, aliases = _dedupe(tensors)
    atomic_write(files.tensors, lambda tmp: save_file(unique, tmp))
    atomic_write_json(files.meta, {
        "format": FORMAT,
        "run_key": run_key,
        "step": step,
        "history": history,
        "generator_state": gen.get_state().tolist(),
        "param_groups": osd["param_groups"],
        "aliases": aliases,
        "tensors_sha256": sha256_file(files.tensors),
    })


def refuse_legacy(files: ResumeFiles) -> None:
    if files.legacy.exists():
        raise ResumeError(
            f"found a legacy pickled resume file {files.legacy}; unpact no longer unpickles resume files, because "
            f"loading one can run any code it contains. Delete it to start this run over: rm '{files.legacy}'"
        )


def load_state(files: ResumeFiles, run_key: str, model: Any, opt: torch.optim.Optimizer,
               gen: torch.Generator) -> tuple[int, list[dict[str, Any]]] | None:
    """Restore the state into model, optimizer and generator; None when it belongs to another run."""
    try:
        meta = json.loads(files.meta.read_text())
        ok = isinstance(meta, dict) and meta.get("format") == FORMAT
    except (OSError, ValueError) as err:
        raise ResumeError(f"resume file {files.meta} is unreadable ({err}); delete it and "
                          f"{files.tensors.name} to start over") from err
    if not ok:
        raise ResumeError(f"resume file {files.meta} is not an {FORMAT} file; delete it to start over")
    if meta["run_key"] != run_key:
        return None
    if not files.tensors.exists() or sha256_file(files.tensors) != meta["tensors_sha256"]:
        raise ResumeError(f"resume tensors {files.tensors} are missing or do not match {files.meta.name}; "
                          "delete both to start over")
    flat = load_file(str(files.tensors))
    for alias, name in meta["aliases"].items():
        flat[alias] = flat[name]
    model.load_state_dict({k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(torch.tensor(meta["generator_state"], dtype=torch.uint8))
    return int(meta["step"]), list(meta["history"])
