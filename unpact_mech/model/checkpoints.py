"""Checkpoints: an HF directory (safetensors) with ``unpact.json`` provenance, written atomically."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from unpact_mech.core.errors import ModelSpecError
from unpact_mech.core.io import atomic_write_json, check_output, umask
from unpact_mech.model.chat import ChatArgs, chat_args

PROVENANCE_FILE = "unpact.json"


def read_provenance(directory: str | Path) -> dict[str, Any]:
    """The ``unpact.json`` of a checkpoint directory, or {} if absent (or a hub id)."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        prov = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelSpecError(f"'{path}' is not valid JSON ({err}); the checkpoint is damaged") from err
    if not isinstance(prov, dict):
        raise ModelSpecError(f"'{path}' must hold a JSON object; the checkpoint is damaged")
    return prov


OLD_PREFIX = ".unpact-old-"
OLD_MARK = ".unpact-old"


def data_hash(records: Any) -> str:
    """Stable short hash of JSON-serialisable data (used to record which data made a checkpoint)."""
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(hf_model: Any, tokenizer: Any, out_dir: str | Path, provenance: dict[str, Any],
                    overwrite: bool = False) -> Path:
    """Write an HF-format checkpoint (safetensors) with ``unpact.json`` atomically (temp dir, then rename).

    An existing checkpoint is replaced only with ``overwrite``; an existing *file* at ``out_dir`` is never touched.
    The old checkpoint is moved aside to a directory this call makes itself (``<out>.unpact-old-XXXX``, marked by
    an ``OLD_MARK`` file), so a directory the user made (``<out>.old``, say) is never touched. A kill at any moment
    leaves the old complete checkpoint (at ``out_dir`` or, between the two renames, in that marked directory) or
    the new one, never a half-written directory at ``out_dir``. Every file follows the umask.
    """
    out = check_output(out_dir, kind="dir", overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())
    old: Path | None = None
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        chat = chat_args(tokenizer)  # the prompts' system turn and date string travel with the checkpoint
        prov = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), **provenance,
                **({"chat": dataclasses.asdict(chat)} if chat != ChatArgs() else {})}
        atomic_write_json(tmp / PROVENANCE_FILE, prov)
        for f in tmp.rglob("*"):  # safetensors writes 0600; outputs follow the user's umask
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=out.name + OLD_PREFIX, dir=out.parent))
            os.replace(out, old)  # onto the empty directory made just now
            (old / OLD_MARK).write_text(f"moved aside by unpact while replacing {out}; safe to delete\n")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        for left in out.parent.glob(out.name + OLD_PREFIX + "*"):  # left by a run killed between the renames
            if (left / OLD_MARK).is_file():
                shutil.rmtree(left, ignore_errors=True)
            elif left.is_dir() and not any(left.iterdir()):  # made, then killed before anything moved in
                left.rmdir()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
