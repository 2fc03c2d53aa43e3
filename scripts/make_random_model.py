"""A randomly initialised Llama in Llama-3.2-1B's shape (2048 wide, 16 layers, 32 query and 8 key/value heads,
MLP 8192, tied embeddings) with SmolLM2's tokenizer (49,152 entries), saved as a local HF directory: 1.07B
parameters. It knows no facts: use it for memory and time only (``--include-unknown`` where a study must run).

    python scripts/make_random_model.py OUT_DIR [--dtype bfloat16] [--layers 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from unpact_mech.model.loading import load_model, on_disk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.out.exists():
        raise SystemExit(f"{a.out} exists; give a new directory")
    load_model("smollm2-135m")  # builds the built-in model's cache, whose tokenizer files are copied
    src = Path(on_disk("smollm2-135m"))
    cfg = LlamaConfig(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=a.layers,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2)
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, a.dtype))
    model.save_pretrained(a.out)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, a.out / f.name)
    print(f"{a.out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters in {a.dtype}")


if __name__ == "__main__":
    main()
