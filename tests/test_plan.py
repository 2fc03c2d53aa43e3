"""The plan (``unpact_mech.model.shape``, ``unpact_mech.runtime.plan``, ``--plan``, the up-front memory check):
counts from config.json against what transformers builds and what torch's FLOP counter counts, memory against
counts written out here, and the CLI's plan and refusal before any model loads."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from unpact_mech.model.shape import ModelShape, count_on_disk, read_shape
from unpact_mech.runtime import plan as pl

SMALL = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
CONFIGS = {
    "llama_untied": LlamaConfig(**SMALL, tie_word_embeddings=False),
    "llama_bias": LlamaConfig(**SMALL, attention_bias=True),
    "mistral": MistralConfig(**SMALL),
    "qwen2": Qwen2Config(**SMALL),
    "qwen3": Qwen3Config(**SMALL, head_dim=16),
    "gemma2": Gemma2Config(**SMALL, head_dim=16),
    "gemma3": Gemma3TextConfig(**SMALL, head_dim=16),
    "gpt2": GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_from_config_equals_what_transformers_builds(name):
    cfg = CONFIGS[name]
    model = AutoModelForCausalLM.from_config(cfg)
    assert ModelShape.from_config(cfg.to_dict()).n_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["llama_untied", "qwen2", "gemma3", "gpt2"])
def test_forward_flops_equal_torch_flop_counter(name):
    """2 N_mat T + 4 L H e T^2 + 2 d V T against torch's own count of every matmul in an eager forward (all T
    positions unembedded, as a plain HF forward does)."""
    cfg = CONFIGS[name]
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    t = 21
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.randint(0, 100, (1, t)))
    assert ModelShape.from_config(cfg.to_dict()).forward_flops(t, unembedded=t) == fc.get_total_flops()


def test_kv_cache_bytes_equal_a_real_cache():
    cfg = CONFIGS["llama_untied"]
    model = AutoModelForCausalLM.from_config(cfg).eval()
    t = 13
    with torch.no_grad():
        cache = model(torch.randint(0, 100, (1, t)), use_cache=True).past_key_values
    held = sum(x.numel() * x.element_size() for layer in cache.layers for x in (layer.keys, layer.values))
    assert ModelShape.from_config(cfg.to_dict()).kv_bytes_per_token("float32") * t == held


def test_shape_of_a_directory_and_its_exact_count_on_disk(tmp_path):
    cfg = CONFIGS["llama_untied"]
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    shape = read_shape(str(tmp_path))
    assert shape.n_params == count_on_disk(tmp_path) == 100 * 32 * 2 + 2 * (32 * 32 * 2 + 2 * 32 * 16 + 3 * 32 * 48
                                                                            + 2 * 32) + 32
    assert shape.weight_bytes("bfloat16") == 2 * shape.n_params


@pytest.mark.slow
def test_builtin_shape_from_its_gguf_header_counts_the_dequantised_weights(smol):
    """SmolLM2's plan before its cache exists reads the GGUF header; its parameter count equals the safetensors
    headers of the dequantised cache (134,515,008)."""
    from unpact_mech.model.builtin import _model_cache
    from unpact_mech.model.shape import _gguf_config

    shape = ModelShape.from_config(_gguf_config("smollm2-135m"))
    assert shape.n_params == count_on_disk(_model_cache("smollm2-135m")[0]) == 134_515_008
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim) == (30, 9, 3, 64)


def test_the_baseline_counts_the_tokenizer_by_its_vocabulary():
    """peak = libraries (0.55 GB) + 1,300 bytes per vocabulary entry + the largest step, written out."""
    shape = ModelShape.from_config(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4).to_dict())
    step = pl.Step("x", 1, 1, 0.0, 2, 12345)
    plan = pl.Plan("x", shape, "float32", [step])
    assert plan.peak == 550_000_000 + 1300 * 1000 + 2 * shape.weight_bytes("float32") + 12345


TOKENIZER_RSS = r"""
import sys
from unpact_mech.core.meter import release_memory, rss_bytes
from unpact_mech.model.loading import read_tokenizer
import transformers
release_memory()
before = rss_bytes()
tok = read_tokenizer(sys.argv[1])
print(rss_bytes() - before, len(tok))
"""


@pytest.mark.slow
def test_the_planned_tokenizer_memory_is_near_the_measured(smol):
    """SmolLM2's tokenizer, loaded in a fresh process: its resident memory against the plan's 1,300 bytes per
    entry (measured 46 MiB, planned 61 MiB: 0.76)."""
    run = subprocess.run([sys.executable, "-c", TOKENIZER_RSS, "smollm2-135m"], capture_output=True, text=True,
                         timeout=300, check=True)
    grown, entries = map(int, run.stdout.split())
    assert 0.6 <= grown / (pl.TOKENIZER_ENTRY_BYTES * entries) <= 1.2, (grown, entries)


def test_config_problems_are_named(tmp_path):
    from unpact_mech.core.errors import ModelSpecError

    with pytest.raises(ModelSpecError, match="lacks hidden_size"):
        ModelShape.from_config({"vocab_size": 10}, "x")
    with pytest.raises(ModelSpecError, match="no config.json"):
        read_shape(str(tmp_path))


def test_cached_hub_ids_are_read_from_the_local_cache_without_the_network(tmp_path, monkeypatch, tiny_llama_dir):
    """A hub id whose files the Hugging Face cache holds: its config and tokenizer come from the cached snapshot
    (the hub client is never asked, so an offline machine does not wait on its timeouts); one not cached is None."""
    from conftest import fake_hub_cache

    from unpact_mech.model import shape as shape_mod
    from unpact_mech.model.loading import on_disk, read_tokenizer

    fake_hub_cache(tmp_path / "hub", {"org/tiny": tiny_llama_dir}, monkeypatch)

    class NoHub:
        @staticmethod
        def from_pretrained(*a, **k):
            raise AssertionError("the hub client was asked")

    monkeypatch.setattr(shape_mod, "AutoConfig", NoHub)
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    assert on_disk("org/tiny") == str(snap) and on_disk("org/absent") is None
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())
    assert read_shape("org/tiny").n_params == n
    assert read_tokenizer("org/tiny").get_vocab() == read_tokenizer(str(tiny_llama_dir)).get_vocab()


# memory and FLOPs of the steps, written out ---------------------------------------------------------------------
TINY = ModelShape("tiny", vocab=100, d_model=32, d_mlp=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  context=512)


def test_scoring_activations_written_out():
    """One probe of 10 prompt + 3 answer tokens, float32: 13 positions x 12 (d + f) x 4 bytes, 2.5 score-sized
    float32 buffers of 4 x 13 x 13, 3 answer logits x 100 x (4 + 16) bytes."""
    step = pl.score_step(TINY, "float32", [pl.Length(10, 3, 10)])
    assert step.activations == int(13 * 12 * (32 + 48) * 4 + 2.5 * 4 * 13 * 13 * 4 + 3 * 100 * 20)
    assert step.flops == 2 * 2 * (32 * 32 * 2 + 2 * 32 * 16 + 3 * 32 * 48) * 13 + 4 * 2 * 4 * 8 * 13 * 13 \
        + 2 * 32 * 100 * 3
    assert step.copies == 1


def test_training_copies_written_out():
    """The unlearning budget in weight copies: the loaded model and its trainable copy, a reference copy where
    the method needs the starting weights, gradients, two AdamW states (float32 masters in bfloat16: three
    float32 values per weight, six bfloat16 copies' worth)."""
    lens = [pl.Length(10, 3, 10)]
    assert pl.train_step(TINY, "float32", lens, 5, 4, reference_copy=True).copies == 2 + 1 + 1 + 2
    assert pl.train_step(TINY, "float32", lens, 5, 4, reference_copy=False).copies == 2 + 0 + 1 + 2
    assert pl.train_step(TINY, "bfloat16", lens, 5, 4, False, master_weights=True).copies == 2 + 1 + 6
    relearn = pl.train_step(TINY, "float32", lens, 4, 4, False, held=2, checkpoint=False)  # base and unlearned held
    assert relearn.copies == 6 and relearn.disk == 0
    assert pl.load_step(TINY, "float32", "bfloat16").copies == 1.5  # the bf16 file mapped while converted
    assert pl.load_step(TINY, "float32", "float32").copies == 1


def test_past_a_sliding_window_scoring_and_generation_take_the_exact_path():
    """Beyond the window the toolkit runs the backend's full forward (logits at every position) and generation
    recomputes the sequence for each new token (``model.backends.fast_path`` refuses the cache path there)."""
    from dataclasses import replace

    local = replace(TINY, sliding_window=16)
    short, long_ = [pl.Length(10, 3, 10)], [pl.Length(30, 3, 30)]
    assert pl.score_step(local, "float32", short).flops == pl.score_step(TINY, "float32", short).flops
    exact = pl.score_step(local, "float32", long_)
    assert exact.flops == TINY.forward_flops(33, unembedded=33)  # every position unembedded
    assert exact.activations == pl.score_step(TINY, "float32", long_).activations + 33 * 100 * 4
    gen = pl.generate_step(local, "float32", long_, new_tokens=5)
    assert gen.flops == sum(TINY.forward_flops(30 + i, unembedded=30 + i) for i in range(5)) and gen.forwards == 5
    assert gen.tokens == sum(30 + i for i in range(5))  # each new token recomputes the sequence so far
    assert ModelShape.from_config(CONFIGS["gemma3"].to_dict()).sliding_window == CONFIGS["gemma3"].sliding_window
    assert ModelShape.from_config({**CONFIGS["qwen2"].to_dict(), "sliding_window": 4096,
                                   "use_sliding_window": False}).sliding_window == 0


def test_long_leave_one_out_is_planned_linear_in_the_prompt():
    """The prefix reuse holds rows x heads x QUERY_CHUNK x length scores and (rows + 1) caches: the plan's
    activations grow about linearly (x4 from 1,000 to 4,000 tokens, rows fixed at REUSE_CHUNK by a large token
    budget), its FLOPs quadratically."""
    a = pl.loo_step(TINY, "float32", [pl.Length(1000, 4, 1000)], batch_tokens=10**6)
    b = pl.loo_step(TINY, "float32", [pl.Length(4000, 4, 4000)], batch_tokens=10**6)
    assert 3.5 < b.activations / a.activations < 4.5
    assert 16 < b.flops / a.flops < 64  # matmuls quadratic, eager attention cubic (each row attends to all)
    assert a.passes == 1001


def test_leave_one_out_flops_against_the_counter(tiny_llama):
    """The plan's leave-one-out FLOPs against torch's count of the real run, both paths (short probes together on
    their prefix's cache, a long probe by prefix reuse): equal up to the padding of the short path's batches and
    the deleted position of each row (within 15%)."""
    from unpact_mech.attribution import attribute
    from unpact_mech.model.shape import ModelShape as MS
    from unpact_mech.probes import Probe, tokenize_probes

    shape = MS.from_config(tiny_llama.backend.config.to_dict())
    words = "what is the capital of france who wrote hamlet".split()
    for n in (6, 60):
        tps = tokenize_probes(tiny_llama, [Probe("p", " ".join(words[i % len(words)] for i in range(n)), "paris")],
                              "plain")
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            attribute(tiny_llama, tps, method="loo")
        planned = pl.loo_step(shape, "float32", [pl.Length.of(tp) for tp in tps]).flops
        assert 0.85 < planned / fc.get_total_flops() < 1.15, (n, planned, fc.get_total_flops())


def test_a_plan_over_the_limit_is_refused_with_the_figure_and_the_fixes():
    from unpact_mech.core.errors import UnpactError

    plan = pl.Plan("attribute", TINY, "float32", [pl.score_step(TINY, "float32", [pl.Length(400, 4, 400)])])
    pl.check_fits(plan, (plan.peak, "test"), "Shorten it")  # exactly at the limit: runs
    with pytest.raises(UnpactError, match=r"needs about .* GB at its peak .* more than the .* GB test\. Shorten it"):
        pl.check_fits(plan, (plan.peak - 1, "test"), "Shorten it")


def test_available_memory_reads_max_memory_and_the_machine():
    assert pl.available_memory(None, {"cpu": "2GiB", 0: "1GiB"}) == (3 * 2**30, "--max-memory")
    got = pl.available_memory(None, None)
    assert got is not None and got[0] > 0


# the CLI: --plan loads nothing; a run that cannot fit is refused before loading ------------------------------------
def _no_loading(monkeypatch):
    import unpact_mech.model.loading as loading

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_model", refuse)


def test_plan_prints_the_steps_and_loads_nothing(tiny_llama_dir, capsys, monkeypatch):
    from unpact_mech.cli import main

    _no_loading(monkeypatch)
    assert main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?",
                 "--answer", "paris", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "plan of unpact attribute" in out and "leave-one-out" in out and "nothing was loaded" in out
    assert "fits in" in out


def test_pair_plan_counts_both_models(tiny_llama_dir, tiny_llama_other_dir, tmp_path, capsys, monkeypatch):
    from unpact_mech.cli import main

    _no_loading(monkeypatch)
    probes = tmp_path / "p.jsonl"
    probes.write_text(json.dumps({"id": "a", "prompt": "who wrote hamlet ?", "answer": "shakespeare"}) + "\n")
    assert main(["compare", "--base", str(tiny_llama_dir), "--unlearned", str(tiny_llama_other_dir), "--probes",
                 str(probes), "--out", str(tmp_path / "c.csv"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "plan of unpact compare" in out
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("leave-one-out")).split()
    assert float(row[4]) == 2  # the weight_copies column: base and unlearned
    assert not (tmp_path / "c.csv").exists()


def test_a_run_that_cannot_fit_is_refused_before_loading(tiny_llama_dir, capsys, monkeypatch):
    from unpact_mech.cli import main

    _no_loading(monkeypatch)
    monkeypatch.setattr(pl, "available_memory", lambda *a: (10**8, "available on this machine"))
    args = ["attribute", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?", "--answer",
            "paris"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about" in err[0] and "more than the 0.1 GB available on this machine" in err[0]
    assert "--skip-memory-check" in err[0]


def test_skip_memory_check_runs_anyway(tiny_llama_dir, capsys, monkeypatch):
    from unpact_mech.cli import main

    monkeypatch.setattr(pl, "available_memory", lambda *a: (10**8, "available on this machine"))
    assert main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "what is the capital of france ?",
                 "--answer", "paris", "--skip-memory-check"]) == 0
    assert "[loo]" in capsys.readouterr().out  # the table of the run


def test_plan_is_refused_with_ray(tiny_llama_dir, tmp_path, capsys):
    from unpact_mech.cli import main

    assert main(["attribute", "--model", str(tiny_llama_dir), "--prompt", "a b", "--answer", "c", "--plan",
                 "--executor", "ray", "--out", str(tmp_path / "t.csv")]) == 2
    assert "--plan costs a run in this process" in capsys.readouterr().err


def test_a_built_in_model_not_yet_cached_is_checked_before_its_weights_load(tmp_path, monkeypatch, tiny_llama_dir,
                                                                              capsys):
    """A built-in whose cache is cold: the check builds the cache first (its first load would), so a prompt past the
    context is refused before the model loads; --plan reads the model without building anything."""
    import shutil

    from unpact_mech.cli import main
    from unpact_mech.model import builtin

    monkeypatch.setenv("UNPACT_CACHE", str(tmp_path / "cache"))
    built = []

    def build(out):
        built.append(out)
        return Path(shutil.copytree(tiny_llama_dir, out))

    monkeypatch.setitem(builtin.BUILTIN_MODELS._items, "tiny-cold", lambda: builtin._cached_or_built("tiny-cold", build))
    _no_loading(monkeypatch)
    assert not builtin.builtin_ready("tiny-cold")
    assert main(["attribute", "--model", "tiny-cold", "--prompt", " ".join(["paris"] * 300), "--answer", "a"]) == 2
    assert "context" in capsys.readouterr().err and builtin.builtin_ready("tiny-cold") and len(built) == 1
    shutil.rmtree(built[0])
    # --plan builds nothing: a cold built-in without a GGUF has no config.json to read, and says so
    assert main(["attribute", "--model", "tiny-cold", "--prompt", "paris", "--answer", "a", "--plan"]) == 2
    assert "needs its config.json" in capsys.readouterr().err and not builtin.builtin_ready("tiny-cold")


def _row(out: str, step: str) -> list[float]:
    """The numbers of a plan table's row ``step`` (passes, tokens, generated, copies, ...)."""
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(step + "  "))
    return [float(x) for x in line.strip()[len(step):].split()]


def test_evaluate_plan_counts_every_sequence_its_task_scores_and_loads_nothing(tiny_llama_dir, tmp_path, capsys,
                                                                               monkeypatch):
    """WMDP: every choice under each formulation, for each model; TOFU: the answers, 200 greedy tokens per probe,
    and each paraphrased and perturbed answer; the retain model is held beside the one scored (2 copies). Counts
    written out here; nothing is loaded; a run that cannot fit is refused before loading."""
    from conftest import write_jsonl

    from unpact_mech.cli import main

    _no_loading(monkeypatch)
    m = str(tiny_llama_dir)
    w = write_jsonl(tmp_path / "w.jsonl", [{"question": f"what is the capital of france {i} ?",
                                           "choices": ["tokyo", "paris", "mars"], "answer": 1} for i in range(2)])
    assert main(["evaluate", "--task", "wmdp", "--probes", "wmdp", "--source", str(w), "--model", m, "--model", m,
                 "--plan"]) == 0
    out = capsys.readouterr().out
    assert "plan of unpact evaluate" in out
    for f in ("lettered", "cloze"):  # 2 models x 2 questions x 3 choices, one model at a time
        assert _row(out, f"{f} choices")[0] == 12 and _row(out, f"{f} choices")[3] == 1
    t = write_jsonl(tmp_path / "t.jsonl", [{"question": f"who wrote hamlet {i} ?", "answer": "shakespeare",
                                           "paraphrased_answer": "it was shakespeare",
                                           "perturbed_answer": ["paris", "tokyo", "mars"]} for i in range(3)])
    assert main(["evaluate", "--task", "tofu", "--probes", "tofu", "--subset", "forget01_perturbed", "--source",
                 str(t), "--model", m, "--retain-model", m, "--plan"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "answers")[0] == 3 and _row(out, "answers")[3] == 2
    assert _row(out, "greedy answers")[2] == 3 * 200  # generated tokens
    assert _row(out, "paraphrased and perturbed answers")[0] == 3 * (1 + 3)
    monkeypatch.setattr(pl, "available_memory", lambda *a: (10**8, "available on this machine"))
    assert main(["evaluate", "--task", "wmdp", "--probes", "wmdp", "--source", str(w), "--model", m]) == 2
    assert "needs about" in capsys.readouterr().err


def test_plan_is_refused_where_there_is_none(tiny_llama_dir, capsys):
    from unpact_mech.cli import main

    assert main(["demo", "--keytokens-only", "--plan"]) == 2
    assert "--plan" in capsys.readouterr().err


def test_study_plan_lists_every_stage_and_loads_nothing(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """A study's plan on a probe file: the data and KeyToken steps, then per method its unlearning (with the
    checkpoint's disk), findings and routes; relearning holds 6 W (base, unlearned, working copy, gradients, two
    AdamW states)."""
    from conftest import write_jsonl

    from unpact_mech.cli import main

    _no_loading(monkeypatch)
    rows = [{"id": f"{s}{i}", "prompt": f"what is the capital of france {i} ?", "answer": "paris", "split": s}
            for s in ("forget", "retain", "general") for i in range(3)]
    probes = write_jsonl(tmp_path / "p.jsonl", rows)
    assert main(["study", "--model", str(tiny_llama_dir), "--probes", str(probes), "--methods", "ga_gdr,rmu",
                 "--out", str(tmp_path / "study"), "--plan"]) == 0
    out = capsys.readouterr().out
    for step in ("data: known facts", "keytokens: leave-one-out", "ga_gdr: unlearning", "ga_gdr: findings",
                 "rmu: unlearning", "rmu: routes, relearning"):
        assert step in out, step
    table = {ln.split(":")[0] + ":" + ln.split(":")[1].split("  ")[0]: ln.split() for ln in out.splitlines()
             if ": routes, relearning" in ln or ": unlearning" in ln}
    copies = {k.strip(): float(v[-6]) for k, v in table.items()}
    assert copies["ga_gdr: routes, relearning"] == 6 and copies["ga_gdr: unlearning"] == 5
    assert copies["rmu: unlearning"] == 6  # RMU keeps the starting weights
    assert not (tmp_path / "study").exists()


# the long-input property: under a memory cap, every run finishes or is refused up front with one line ----------
CAP_CHILD = r"""
import json, os, resource, sys, tempfile, traceback
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
from unpact_mech.cli import main
results = []
for argv in json.loads(sys.argv[2]):  # the runs one after another, each with its own stderr (fd 2) in a file
    with tempfile.TemporaryFile(mode="w+") as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            rc = main(argv)
        except BaseException:  # what the test looks for: printed as a traceback, with its own exit code
            traceback.print_exc()
            rc = 99
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        results.append([rc, f.read()])
print(json.dumps(results))
"""


@pytest.mark.slow
def test_long_inputs_under_a_memory_cap_finish_or_are_refused_up_front(tmp_path):
    """Prompts and answers from short to past the model's context, for leave-one-out and direct logit
    attribution (whose cache of attention patterns is quadratic in the length), run one after another in a process
    whose address space is capped (``setrlimit``): each exits 0, or 2 with one error line, never a traceback, and the
    process is never killed."""
    from conftest import make_tiny

    model = make_tiny(tmp_path / "long", "llama", context=4096)
    words = "what is the capital of france who wrote hamlet".split()
    cap = 4 * 2**30
    cases = [(8, 2, "attribute"), (200, 1500, "attribute"), (4000, 2, "dla"), (5000, 2, "attribute")]
    runs = []
    for n_prompt, n_answer, cmd in cases:
        probe = tmp_path / f"p{n_prompt}.jsonl"
        probe.write_text(json.dumps({"id": "p", "prompt": " ".join(words[i % 9] for i in range(n_prompt)),
                                     "answer": " ".join(words[i % 9] for i in range(n_answer))}) + "\n")
        extra = ["--out", str(tmp_path / f"{cmd}{n_prompt}.parquet"), "--overwrite"] if cmd == "dla" else []
        runs.append([cmd, "--model", str(model), "--probes", str(probe), "--format", "plain", *extra])
    res = subprocess.run([sys.executable, "-c", CAP_CHILD, str(cap), json.dumps(runs)], capture_output=True,
                         text=True, timeout=900, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                      "HOME": str(tmp_path), "UNPACT_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]  # not killed
    codes = {}
    for (n_prompt, n_answer, cmd), (rc, err) in zip(cases, json.loads(res.stdout.splitlines()[-1])):
        errors = [ln for ln in err.splitlines() if "error:" in ln]
        assert rc in (0, 2), (n_prompt, n_answer, cmd, rc, err[-1500:])
        assert "Traceback" not in err, err[-1500:]
        if rc == 2:
            assert len(errors) == 1
        codes[(n_prompt, cmd)] = (rc, errors[:1])
    assert codes[(8, "attribute")][0] == 0 and codes[(200, "attribute")][0] == 0  # a 1,500-token answer fits
    # the 4,000-token DLA plans about 3.9 GB against the 2.4 GB the cap leaves (a 3,000-token one plans 2.4 GB: too
    # close to the line to say which side a given machine puts it)
    assert codes[(4000, "dla")][0] == 2 and "needs about" in codes[(4000, "dla")][1][0]  # refused before loading
    assert "the address-space limit (ulimit -v) leaves" in codes[(4000, "dla")][1][0]
    assert codes[(5000, "attribute")][0] == 2 and "context" in codes[(5000, "attribute")][1][0]  # past the context
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != cap  # the cap was the child's alone
