"""Leave-one-out of one long prompt (prefix-reuse path): the KV-cache memory it holds, old layout against new.

Leave-one-out of an N-token prompt costs about N x N/2 token-forwards (each deletion recomputes the positions
after it), so on a CPU a real run of thousands of tokens takes hours; what decides whether it fits is the KV
cache it keeps. This script measures the KV bytes per token of a real cache of the model (one forward of 64
tokens through the HF view), then counts exactly the cache tokens each layout holds at its peak, for the
chunking ``_loo_prefix_reuse`` uses at ``--batch-tokens``:

* before (a copy of the original's cache kept at every chunk's first position m, all alive together):
  sum over chunks of m, plus the largest batch's copies;
* now (one cache extended as the chunks go, each chunk's copies freed before the next): N, plus the largest
  batch's copies (rows x m).

``tests/test_loo.py::test_prefix_reuse_holds_one_cache_copy_at_a_time`` checks the "one copy alive" property on
a real run.

    python benchmarks/bench_loo_long.py [--model smollm2-135m] [--tokens 500,1000,2000,5046] [--batch-tokens 4096]
"""

from __future__ import annotations

import argparse
import json

import torch

from unpact_mech.attribution.loo import REUSE_CHUNK
from unpact_mech.model.loading import load_model
from unpact_mech.scoring import DEFAULT_BATCH_TOKENS


def kv_bytes_per_token(model: str) -> int:
    """Bytes of the HF view's DynamicCache per token, measured on a 64-token forward."""
    s = load_model(model)
    kvb = s.backend.hf_view()
    cache = kvb.new_cache()
    kvb.hidden(torch.randint(0, 1000, (1, 64)), cache, position_ids=torch.arange(64)[None])
    total = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return total // 64


def cached_tokens(n: int, batch_tokens: int, chunk: int = REUSE_CHUNK) -> dict[str, int]:
    """Peak cache tokens held by the old and the new layout for an n-token prompt whose every token is deleted."""
    rows = max(1, min(chunk, max(1, batch_tokens // n)))
    firsts = list(range(0, n, rows))
    batch = max(len(range(m, min(m + rows, n))) * m for m in firsts)  # one chunk's copies: rows x prefix m
    return {"rows_per_chunk": rows, "chunks": len(firsts), "before": sum(firsts) + batch, "now": n + batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", default="500,1000,2000,5046")
    ap.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    a = ap.parse_args()
    per = kv_bytes_per_token(a.model)
    print(json.dumps({"model": a.model, "kv_bytes_per_token": per}))
    for n in [int(x) for x in a.tokens.split(",")]:
        c = cached_tokens(n, a.batch_tokens)
        print(json.dumps({"tokens": n, **c, "before_gb": round(c["before"] * per / 1e9, 2),
                          "now_gb": round(c["now"] * per / 1e9, 2)}))


if __name__ == "__main__":
    main()
