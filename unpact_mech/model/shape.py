"""A decoder's shape from its ``config.json`` alone (no weights read): parameters, bytes, KV cache and FLOPs.

The counts, for V vocab, d model width, f MLP width, L layers, H query heads, G key/value heads, e head width:

* parameters = V d (embedding) [+ V d untied LM head] [+ P d learned positions]
  + L (d H e + 2 d G e + H e d  [+ biases]  +  k d f  [+ biases]  + norms) + final norm,
  with k = 3 for a gated MLP (gate, up, down) and 2 otherwise;
* FLOPs of one forward over T new tokens that attend to S keys each (eager attention computes the whole
  T x S score matrix): 2 N_mat T + 4 L H e T S + 2 d V R, where N_mat is the parameters of the per-layer matrices
  and R the positions unembedded (the toolkit unembeds only the answer positions);
* KV cache per token: 2 L G e values.

``read_shape(spec)`` reads the config of a local directory, a built-in model (its cache, or the GGUF header when
the cache is not built) or a hub id (``config.json`` only).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from transformers import AutoConfig
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from unpact_mech.core.errors import ModelSpecError
from unpact_mech.model.builtin import BUILTIN_GGUF, BUILTIN_MODELS, _model_cache

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name (``float32``, ``bfloat16``, ``float16``)."""
    try:
        return DTYPE_BYTES[str(dtype).replace("torch.", "")]
    except KeyError as err:
        raise ModelSpecError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPE_BYTES)}") from err


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


@dataclass(frozen=True)
class ModelShape:
    """What the cost of running a decoder depends on (see the module docstring for the counts)."""

    name: str
    vocab: int
    d_model: int
    d_mlp: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int
    tied: bool = True
    gated: bool = True
    qkv_bias: bool = False
    o_bias: bool = False  # Llama's attention_bias also biases the output projection (Qwen2 biases q, k, v only)
    all_bias: bool = False  # GPT-2: every linear and LayerNorm has a bias
    learned_positions: int = 0
    layer_norms: int = 2  # d-wide norms per layer (Gemma 2/3: four)
    qk_norm: bool = False  # Gemma 3 / Qwen3: an e-wide norm on queries and keys
    sliding_window: int = 0  # local attention layers' window (0: none); beyond it the toolkit takes exact paths

    @classmethod
    def from_config(cls, cfg: dict[str, Any], name: str = "") -> ModelShape:
        """From an HF ``config.json`` dict (a ``text_config`` inside, as multimodal Gemma 3 has, is used)."""
        if isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings",
                                                                      cfg["text_config"].get("tie_word_embeddings"))}
        kind = str(cfg.get("model_type", ""))
        d = _first(cfg, "hidden_size", "n_embd", "d_model")
        layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
        heads = _first(cfg, "num_attention_heads", "n_head")
        vocab = _first(cfg, "vocab_size")
        missing = [k for k, v in (("hidden_size", d), ("num_hidden_layers", layers), ("num_attention_heads", heads),
                                  ("vocab_size", vocab)) if not v]
        if missing:
            raise ModelSpecError(f"{name or 'the model'}'s config.json lacks {', '.join(missing)}: its cost cannot "
                                 "be planned (is it a decoder-only language model?)")
        gpt2 = kind == "gpt2"
        return cls(
            name=name or str(cfg.get("_name_or_path", "") or kind),
            vocab=int(vocab), d_model=int(d), n_layers=int(layers), n_heads=int(heads),
            d_mlp=int(_first(cfg, "intermediate_size", "n_inner", default=None) or 4 * int(d)),
            n_kv_heads=int(_first(cfg, "num_key_value_heads", default=heads)),
            head_dim=int(_first(cfg, "head_dim", default=None) or int(d) // int(heads)),
            context=int(_first(cfg, "max_position_embeddings", "n_positions", "n_ctx", default=0)),
            tied=bool(cfg.get("tie_word_embeddings", True)),
            gated=not gpt2,
            qkv_bias=bool(cfg.get("attention_bias")) or kind.startswith("qwen2"),
            o_bias=bool(cfg.get("attention_bias")) and not kind.startswith("qwen2"),
            all_bias=gpt2,
            learned_positions=int(_first(cfg, "n_positions", default=0)) if gpt2 else 0,
            layer_norms=4 if kind.startswith(("gemma2", "gemma3")) else 2,
            qk_norm=kind.startswith(("gemma3", "qwen3")),
            sliding_window=0 if cfg.get("use_sliding_window") is False else int(cfg.get("sliding_window") or 0),
        )

    # parameters -------------------------------------------------------------------------------------------------
    @property
    def layer_matrix_params(self) -> int:
        """Weights of one layer's matrices: attention d H e + 2 d G e + H e d, MLP k d f."""
        d, e = self.d_model, self.head_dim
        attn = d * self.n_heads * e * 2 + 2 * d * self.n_kv_heads * e
        return attn + (3 if self.gated else 2) * d * self.d_mlp

    @property
    def n_params(self) -> int:
        """Every parameter, counted once (a tied LM head shares the embedding)."""
        d, e = self.d_model, self.head_dim
        per_layer = self.layer_matrix_params + self.layer_norms * d
        if self.qkv_bias:
            per_layer += (self.n_heads + 2 * self.n_kv_heads) * e
        if self.o_bias:
            per_layer += d
        if self.qk_norm:
            per_layer += 2 * e
        if self.all_bias:  # GPT-2: qkv, attention out, MLP in and out, two LayerNorm biases
            per_layer += 3 * d + d + self.d_mlp + d + 2 * d
        final = d * (2 if self.all_bias else 1)
        return (self.vocab * d * (1 if self.tied else 2) + self.learned_positions * d
                + self.n_layers * per_layer + final)

    def weight_bytes(self, dtype: str = "float32") -> int:
        """W: one copy of the weights."""
        return self.n_params * dtype_bytes(dtype)

    def kv_bytes_per_token(self, dtype: str = "float32") -> int:
        """KV cache per position: 2 L G e values."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * dtype_bytes(dtype)

    # FLOPs ------------------------------------------------------------------------------------------------------
    def forward_flops(self, tokens: int, keys: int | None = None, unembedded: int = 0) -> float:
        """One forward of ``tokens`` new positions, each attending to ``keys`` positions (default: ``tokens``,
        the whole square an eager attention computes), ``unembedded`` positions through the LM head:
        2 N_mat T + 4 L H e T S + 2 d V R."""
        s = tokens if keys is None else keys
        return (2.0 * self.n_layers * self.layer_matrix_params * tokens
                + 4.0 * self.n_layers * self.n_heads * self.head_dim * tokens * s
                + 2.0 * self.d_model * self.vocab * unembedded)


def config_json(directory: str | Path) -> dict[str, Any]:
    """``directory/config.json`` as a dict (an empty file reads as {}); a file that is not a JSON object is one
    clear error naming the damaged directory."""
    try:
        cfg = json.loads((Path(directory) / "config.json").read_text() or "{}")
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelSpecError(f"'{directory}/config.json' is not valid JSON ({err}); the model directory is "
                             "damaged") from err
    if not isinstance(cfg, dict):
        raise ModelSpecError(f"'{directory}/config.json' holds a JSON {type(cfg).__name__}, not an object; the model "
                             "directory is damaged")
    return cfg


def hub_snapshot(spec: str) -> Path | None:
    """The local snapshot directory of hub id ``spec`` when its config.json is already in the Hugging Face cache
    (found without the network), else None."""
    parts = spec.split("/")
    if len(parts) != 2 or not all(parts) or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        return None
    cfg = try_to_load_from_cache(spec, "config.json")
    return Path(cfg).parent if isinstance(cfg, str) else None


def read_config(spec: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """``spec``'s config.json as a dict, reading no weights: a local directory, a built-in model (its dequantised
    cache, else its GGUF header) or a hub id (from the local Hugging Face cache, else downloading config.json
    only)."""
    if spec in BUILTIN_MODELS:
        out, ready = _model_cache(spec)
        if ready:
            return config_json(out)
        return _gguf_config(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"'{spec}' has no config.json; a model directory needs one (save_pretrained writes it)")
        return config_json(path)
    snapshot = hub_snapshot(spec)
    if snapshot is not None:  # no network: the hub's own loading would ask it for a newer revision first
        return config_json(snapshot)
    try:
        return dict(AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code).to_dict())
    except OSError as err:
        raise ModelSpecError(f"cannot read {spec}'s config.json ({err}); the plan needs it: check the name, or "
                             "download the model's directory once and give its path") from err


def _gguf_config(spec: str) -> dict[str, Any]:
    """A built-in model's config from its GGUF header (the weights are not read)."""
    if spec not in BUILTIN_GGUF:
        raise ModelSpecError(f"the plan of '{spec}' needs its config.json: load the model once (it is built into "
                             "$UNPACT_CACHE), then plan")
    return dict(load_gguf_checkpoint(str(BUILTIN_GGUF[spec]()), return_tensors=False)["config"])


def read_shape(spec: str, trust_remote_code: bool = False) -> ModelShape:
    """:class:`ModelShape` of a model spec, from its config alone."""
    return ModelShape.from_config(read_config(spec, trust_remote_code), name=spec)


def count_on_disk(directory: str | Path) -> int | None:
    """The exact parameter count of a local safetensors checkpoint from its headers (no tensor is read); None
    when it holds no safetensors. Tied weights saved once count once."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        return None
    n = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118  (no __iter__)
    return n
