"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

``<out>.resume.safetensors`` holds the model's and the optimizer's tensors (tied weights stored once);
``<out>.resume.json`` holds the step, history, the data generator's RNG state (a list of bytes), the optimizer's
hyperparameters, the run key and the SHA-256 of the tensor file. The JSON is written last and names the
tensor file's hash, so a half-written pair is never taken for a valid one. Nothing here unpickles: a legacy
pickled ``<out>.resume.pt`` (which could run code when loaded) is refused with a way to start over.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write, atomic_write_json, json_safe, sha256_file
from unpact_mech.unlearning.optim import Optimizer

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


def save_state(files: ResumeFiles, model: Any, opt: Optimizer, gen: torch.Generator, step: int,
               history: list[dict[str, Any]], run_key: str, settings: dict[str, Any] | None = None) -> None:
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
        "settings": settings or {},
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


# key -> (type, what it must be): the schema every resume JSON is held to before anything is restored
SCHEMA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "format": (str, f"'{FORMAT}'"),
    "run_key": (str, "a run key"),
    "settings": (dict, "the run's settings"),
    "step": (int, "the steps done"),
    "history": (list, "one loss record per step"),
    "generator_state": (list, "the data RNG state (bytes)"),
    "param_groups": (list, "the optimizer's groups"),
    "aliases": (dict, "tied-weight aliases"),
    "tensors_sha256": (str, "the tensor file's SHA-256"),
}


def _start_over(files: ResumeFiles) -> str:
    return f"to start over: rm '{files.meta}' '{files.tensors}'"


def read_meta(files: ResumeFiles, steps: int | None = None) -> dict[str, Any]:
    """The resume JSON, checked against :data:`SCHEMA` (every key, its type, one history record per step, and
    step <= ``steps``) before any model loads or any tensor is restored."""
    try:
        meta = json.loads(files.meta.read_text())
    except (OSError, ValueError) as err:
        raise ResumeError(f"resume file {files.meta} is unreadable ({err}); {_start_over(files)}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ResumeError(f"resume file {files.meta} is not an {FORMAT} file; {_start_over(files)}")
    problems = [f"'{k}' is missing" for k in SCHEMA if k not in meta]
    problems += [f"'{k}' must be {what}, got {type(meta[k]).__name__}" for k, (t, what) in SCHEMA.items()
                 if k in meta and (not isinstance(meta[k], t) or isinstance(meta[k], bool))]
    if not problems:
        step, hist = meta["step"], meta["history"]
        problems += _step_range(step, steps)
        if len(hist) != step or not all(isinstance(h, dict) and h.get("step") == i + 1 for i, h in enumerate(hist)):
            problems.append(f"'history' must hold one record per step (steps 1..{step}), got {len(hist)} records")
        if not all(isinstance(b, int) and 0 <= b <= 255 for b in meta["generator_state"]):
            problems.append("'generator_state' must be a list of bytes")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta["aliases"].items()):
            problems.append("'aliases' must map names to names")
    _refuse_damaged(files, problems)
    return meta


def _refuse_damaged(files: ResumeFiles, problems: list[str]) -> None:
    if problems:
        raise ResumeError(f"resume file {files.meta} is damaged: {'; '.join(problems)}; {_start_over(files)}")


def _step_range(step: int, steps: int | None) -> list[str]:
    """The problem with a state's step count, if it lies outside 0..steps."""
    if step < 0 or (steps is not None and step > steps):
        return [f"'step' is {step}, outside 0..{steps if steps is not None else 'steps'}"]
    return []


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume(files: ResumeFiles, settings: dict[str, Any], steps: int | None = None) -> dict[str, Any] | None:
    """The resume state beside a run's output, if there is one, checked against the schema and against this run's
    ``settings`` (any subset of what the state records: a differing value is refused, naming each setting and
    the command that starts over; a state is never silently discarded). None when there is no state."""
    if not files.exists():
        return None
    meta = read_meta(files)  # the schema; the step range only after the settings, so that a state made with other
    # settings (e.g. more steps) is named as such, not as damaged
    mine, theirs = _flat(json.loads(json.dumps(json_safe(settings), default=str))), _flat(meta["settings"])
    differ = [f"{k}: {theirs[k]!r} there, {mine[k]!r} now" for k in sorted(mine) if k in theirs and theirs[k] != mine[k]]
    if differ or not meta["settings"]:
        why = "; ".join(differ[:6]) if differ else "its settings are not recorded"
        raise ResumeError(f"{files.meta} is the resume state of another run ({why}). Rerun with the same settings "
                          f"to resume it, or, {_start_over(files)}")
    _refuse_damaged(files, _step_range(meta["step"], steps))
    if _tensors_sha256(files.tensors) != meta["tensors_sha256"]:  # before any model loads
        raise ResumeError(f"resume tensors {files.tensors} are missing or do not match {files.meta.name}; "
                          f"{_start_over(files)}")
    return meta


def _tensors_sha256(path: Path) -> str | None:
    """SHA-256 of a resume tensor file (None when missing), hashed once per version of the file: the CLI checks a
    state before loading the model and ``unlearn`` checks it again, and the file holds the model and optimizer."""
    try:
        st = path.stat()
    except OSError:
        return None
    return _sha256_of_version(str(path), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _sha256_of_version(path: str, inode: int, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def load_state(files: ResumeFiles, meta: dict[str, Any], run_key: str, model: Any, opt: Optimizer,
               gen: torch.Generator) -> tuple[int, list[dict[str, Any]]]:
    """Restore the state into model, optimizer and generator; ``meta`` is what :func:`check_resume` returned (it
    has checked the tensor file against the state's SHA-256)."""
    if meta["run_key"] != run_key:
        raise ResumeError(f"{files.meta} is the resume state of another run (the data or model differ); "
                          f"{_start_over(files)}")
    flat = load_file(str(files.tensors))  # check_resume matched its SHA-256 before the model loaded
    for alias, name in meta["aliases"].items():
        if name not in flat:
            raise ResumeError(f"resume tensors {files.tensors} lack '{name}'; {_start_over(files)}")
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
