"""Shared fixtures: tiny random models (fast) and the real SmolLM2 (slow, session-scoped)."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from beartype import BeartypeConf, beartype
from jaxtyping import install_import_hook

# every jaxtyping shape (and every other annotation) in unpact_mech is checked at run time in the tests, by
# beartype through jaxtyping's import hook, installed before the package is first imported. PEP 484's numeric
# tower is on: an int is accepted where a float is annotated.
_beartype = beartype(conf=BeartypeConf(is_pep484_tower=True))
_checked: dict[tuple[str, str, str], Callable[..., Any]] = {}


def typechecker(fn: Callable[..., Any]) -> Callable[..., Any]:
    """beartype, memoised. jaxtyping hands the type checker a bodiless stand-in it builds from a function's module,
    qualified name and signature (annotations resolved in the module's globals), once per definition, so a nested
    function was checked again each time its enclosing function ran (a hook factory, an option parser: about
    0.3 ms each). Stand-ins with the same module, name and signature are the same check, and share it."""
    if not inspect.isfunction(fn):
        return _beartype(fn)
    key = (fn.__module__, fn.__qualname__, str(inspect.signature(fn)))
    if key not in _checked:
        _checked[key] = _beartype(fn)
    return _checked[key]


_typecheck = install_import_hook(["unpact_mech"], "conftest.typechecker")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one torch thread per pytest-xdist worker (``make test`` runs one worker per core), else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


# The two longest units of the suite (measured with --durations on 2 cores: each 3-4 minutes on one worker, the
# Ray module as one xdist_group), handed out before any other test.
LONGEST_FIRST = ("test_finetune.py", "test_ray.py")


def pytest_collection_modifyitems(config, items):
    """The longest units first, then the other tests marked slow, then the rest (stable within each kind): under
    pytest-xdist the long tests start at once and overlap the many short ones, instead of one of them starting
    last on an otherwise idle machine."""
    def rank(item) -> tuple[int, int]:
        longest = item.path.name in LONGEST_FIRST and item.get_closest_marker("slow") is not None
        return (0 if longest else 1, 0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)

WORDS = (
    "what is the capital of france paris japan tokyo who wrote hamlet shakespeare question answer "
    "a an and in on to it was by city country river largest planet red mars gold symbol au "
    "? : . , \n"
).split(" ")


def write_jsonl(path: Path, rows) -> Path:
    """A JSON-lines file of ``rows`` (a string row is written as it is: a broken line on purpose)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def fake_hub_cache(root: Path, repos: dict[str, Path], monkeypatch) -> Path:
    """A Hugging Face cache at ``root`` holding each hub id's files (a copy of a local model directory) as the hub
    client lays them out (``models--org--name/snapshots/REV``, ``refs/main`` naming REV), and made the cache."""
    import shutil

    import huggingface_hub.constants

    rev = "0123456789abcdef0123456789abcdef01234567"
    for repo, src in repos.items():
        top = root / f"models--{repo.replace('/', '--')}"
        shutil.copytree(src, top / "snapshots" / rev)
        (top / "refs").mkdir()
        (top / "refs" / "main").write_text(rev)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


def make_tokenizer(directory: Path):
    """A word-level tokenizer over a small vocabulary, saved and reloaded (no hub involved)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted({w.strip() for w in WORDS if w.strip()}))}
    for i in range(40):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.save_pretrained(directory)
    return PreTrainedTokenizerFast.from_pretrained(directory)


def make_tiny(directory: Path, arch: str, seed: int = 0, context: int = 128) -> Path:
    """Save a tiny random model (``llama`` with grouped-query attention, ``gpt2`` or a soft-capped ``gemma2``) of
    ``context`` positions."""
    from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig

    directory.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(directory)
    v = len(tok)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=v, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=context,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=v, n_embd=48, n_layer=3, n_head=4, n_positions=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    elif arch == "gemma2":  # final-logit soft-capping (cap 2: most logits are capped), sandwich norms
        cfg = Gemma2Config(vocab_size=v, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=128,
                           final_logit_softcapping=2.0, attn_logit_softcapping=50.0, sliding_window=16,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    elif arch == "gemma3":  # sandwich norms (post-attention and post-MLP), q/k norms, no soft-capping
        cfg = Gemma3TextConfig(vocab_size=v, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=128,
                               sliding_window=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # larger weights than the default init so the tiny model's outputs vary
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
            elif arch == "gemma3":  # norm gains away from their zero init, so every (1 + w) matters
                p.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_llama_other_dir(tmp_path_factory) -> Path:
    """A second tiny Llama (other seed, same tokenizer): a stand-in for an unlearned model that differs."""
    return make_tiny(tmp_path_factory.mktemp("tiny_llama_other"), "llama", seed=1)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny_gemma2"), "gemma2")


@pytest.fixture(scope="session")
def tiny_gemma3_dir(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny_gemma3"), "gemma3")


@pytest.fixture(scope="session")
def tiny_gemma3(tiny_gemma3_dir):
    from unpact_mech.model.loading import load_model

    return load_model(str(tiny_gemma3_dir))


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir):
    from unpact_mech.model.loading import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_gpt2_dir):
    from unpact_mech.model.loading import load_model

    return load_model(str(tiny_gpt2_dir))


@pytest.fixture(scope="session")
def tiny_probes():
    from unpact_mech.probes import Probe

    return [
        Probe("t0", "what is the capital of france ?", "the capital of france is paris .", fact="paris"),
        Probe("t1", "who wrote hamlet ?", "hamlet was wrote by shakespeare", fact="shakespeare", split="retain"),
        Probe("t2", "what is the symbol of gold ?", "au", split="retain"),
        Probe("t3", "what is the red planet ?", "the red planet is mars", fact="mars", split="general"),
    ]


@pytest.fixture(scope="session")
def smol():
    from unpact_mech.model.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smol_probes():
    from unpact_mech.evals.loaders import load_benchmark

    return load_benchmark("facts")


def demo_probes():
    """Six tiny-vocabulary probes over the three splits, for the demo pipeline tests."""
    from unpact_mech.probes import Probe

    qs = [("what is the capital of france ?", "paris"), ("what is the capital of japan ?", "tokyo"),
          ("who wrote hamlet ?", "shakespeare"), ("what is the red planet ?", "mars"),
          ("what is the symbol of gold ?", "au"), ("what is the largest planet ?", "mars")]
    splits = ["forget", "forget", "retain", "retain", "general", "general"]
    return [Probe(f"p{i}", q, a, s) for i, ((q, a), s) in enumerate(zip(qs, splits))]
