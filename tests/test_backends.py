"""One execution core: every path computes the numbers of an independent naive loop through the model itself."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from unpact_mech.attribution.dla import decompose, logit_lens
from unpact_mech.attribution.loo import loo_contributions
from unpact_mech.hooks import applied, scale_embedding, steer_attention
from unpact_mech.model.backends import (
    KV_PREFIX,
    RUN_WITH_CACHE,
    Backend,
    BackendCapabilityError,
    fast_path,
    require,
)
from unpact_mech.model.backends.hf import HFBackend
from unpact_mech.model.backends.kernel import AnswerIndex, OutputTransform, answer_logprobs
from unpact_mech.model.loading import ModelSpecError, load_model, load_nnsight
from unpact_mech.model.subject import wrap
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import score_probes

BF16_U = 2.0**-8  # bfloat16 unit roundoff: 8 significant bits


def _naive_lp(logits_fn, ids, start):
    """Mean log-prob of ids[start:] from a full forward, one sequence at a time (no batching, no cache)."""
    with torch.no_grad():
        logits = logits_fn(torch.tensor([ids]))[0].double()
    lp = torch.log_softmax(logits, -1)[start - 1 : -1].gather(1, torch.tensor(ids[start:])[:, None])
    return float(lp.mean())


def _naive_loo(logits_fn, tp):
    full = _naive_lp(logits_fn, list(tp.ids), tp.prompt_len)
    return full, [full - _naive_lp(logits_fn, list(tp.ids[:i] + tp.ids[i + 1 :]), tp.prompt_len - 1)
                  for i in tp.attributable]


def _assert_loo_matches(results, logits_fn, atol):
    for r in results:
        full, naive = _naive_loo(logits_fn, r.tprobe)
        assert abs(r.lp - full) < atol
        assert torch.allclose(r.contributions, torch.tensor(naive, dtype=torch.float64), atol=atol), (r.contributions, naive)
        assert r.contributions.abs().max() > 1e-3  # not a comparison between zeros


def test_kernel_equals_a_written_out_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    seqs = [([1, 2, 3, 4, 5], 2), ([6, 7, 8], 1)]
    idx = AnswerIndex.build(seqs, "cpu")
    lp, top1 = answer_logprobs(idx.gather(logits), idx.targets)
    k = 0
    for r, (ids, start) in enumerate(seqs):
        for t in range(start, len(ids)):
            row = logits[r, t - 1].double()
            assert float(lp[k]) == pytest.approx(float(row[ids[t]] - torch.logsumexp(row, 0)), abs=1e-12)
            assert bool(top1[k]) == (int(row.argmax()) == ids[t])
            k += 1
    assert lp.dtype == torch.float64 and k == len(lp)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, -100, -100]])
    lab = AnswerIndex.from_labels(labels)
    assert lab.rows.tolist() == [0, 0, 0, 1, 1] and lab.cols.tolist() == [1, 2, 3, 0, 1]
    assert lab.targets.tolist() == [3, 4, 5, 7, 8]


def test_output_transform_formula():
    z = torch.linspace(-30, 30, 7)
    assert torch.equal(OutputTransform()(z), z)
    assert torch.allclose(OutputTransform(softcap=2.0)(z), 2.0 * torch.tanh(z / 2.0))
    assert torch.allclose(OutputTransform(scale=0.5)(z), 0.5 * z)

    class Cfg:
        final_logit_softcapping = 30.0
        logit_scale = 0.25
        logits_scaling = 2.0

    t = OutputTransform.from_config(Cfg())
    assert t.softcap == 30.0 and t.scale == 0.125


@pytest.mark.parametrize("arch", ["cohere", "granite"])
def test_hf_backend_logits_equal_the_models_own_forward(arch):
    """The fast path's unembedding (LM head + transform) equals the HF forward on logit-scaled architectures."""
    from transformers import CohereConfig, GraniteConfig

    kw = dict(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
    cfg = CohereConfig(logit_scale=0.3, **kw) if arch == "cohere" else GraniteConfig(logits_scaling=4.0, **kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    kvb = HFBackend(model)
    assert not kvb.transform.identity
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        ref = model(ids).logits[0]
        ours = kvb.logits(kvb.hidden(ids, kvb.new_cache())[0])
    assert torch.allclose(ours, ref, atol=1e-5) and (ours - kvb.model.lm_head(kvb.hidden(ids, kvb.new_cache())[0])).abs().max() > 1e-2


def test_loo_under_attached_hooks_equals_passed_hooks_equals_naive(tiny_llama, tiny_probes):
    """Hooks attached with ``applied`` are honoured by the default leave-one-out (no fast path skips them)."""
    tps = tokenize_probes(tiny_llama, tiny_probes[:2], "plain")
    for hooks in (scale_embedding(list(tps[0].attributable[:2]), 6.0),
                  steer_attention(list(tps[0].attributable[:2]), 4.0, tiny_llama.n_layers)):
        passed = loo_contributions(tiny_llama, tps[:1], hooks=hooks)
        with applied(tiny_llama, hooks):
            assert fast_path(tiny_llama.backend) is None
            inside = loo_contributions(tiny_llama, tps[:1])
        plain = loo_contributions(tiny_llama, tps[:1])
        for a, b, c in zip(inside, passed, plain):
            assert torch.allclose(a.contributions, b.contributions, atol=1e-9) and a.lp == pytest.approx(b.lp, abs=1e-9)
            assert not torch.allclose(a.contributions, c.contributions, atol=1e-4)  # the hooks do matter
        _assert_loo_matches(passed, lambda ids, h=hooks: tiny_llama.bridge.run_with_hooks(ids, fwd_hooks=h), 1e-5)


def test_softcapped_model_default_paths_equal_hf_forward(tiny_gemma2_dir, tiny_probes):
    """Gemma-2 (final-logit soft-capping): default leave-one-out (KV fast path) and scores equal a naive loop
    through the HF model's own ``forward``."""
    subject = load_model(str(tiny_gemma2_dir))
    hf = AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir, attn_implementation="eager").eval()
    assert hf.config.final_logit_softcapping == 2.0
    tps = tokenize_probes(subject, tiny_probes, "plain")
    assert fast_path(subject.backend) is not None
    _assert_loo_matches(loo_contributions(subject, tps), lambda ids: hf(ids).logits, 1e-5)
    for tp, s in zip(tps, score_probes(subject, tps)):
        assert s.lp == pytest.approx(_naive_lp(lambda ids: hf(ids).logits, list(tp.ids), tp.prompt_len), abs=1e-5)
    # the cap matters: without it the same hidden states give other log-probs
    kvb = subject.backend.hf_view()
    idx = AnswerIndex.build([(tps[0].ids, tps[0].prompt_len)], "cpu")
    h = idx.gather(kvb.hidden(torch.tensor([tps[0].ids]), kvb.new_cache()))
    capped, _ = answer_logprobs(kvb.logits(h), idx.targets)
    raw, _ = answer_logprobs(kvb.model.lm_head(h), idx.targets)
    assert (capped - raw).abs().max() > 1e-2


def test_in_memory_perturbed_model_is_what_loo_measures(tiny_llama_dir, tiny_probes):
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        hf.model.layers[0].self_attn.q_proj.weight.mul_(3.0)
        hf.model.embed_tokens.weight.add_(0.5 * torch.randn_like(hf.model.embed_tokens.weight))
    independent = copy.deepcopy(hf)  # the bridge folds the wrapped model in place; keep a plain twin
    from unpact_mech.model.loading import _load_tokenizer

    subject = wrap(hf, _load_tokenizer(str(tiny_llama_dir)), "perturbed", str(tiny_llama_dir))
    tps = tokenize_probes(subject, tiny_probes[:2], "plain")
    res = loo_contributions(subject, tps)
    _assert_loo_matches(res, lambda ids: independent(ids).logits, 1e-5)
    disk = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    _, on_disk = _naive_loo(lambda ids: disk(ids).logits, tps[0])
    assert not torch.allclose(res[0].contributions, torch.tensor(on_disk, dtype=torch.float64), atol=1e-3)
    with pytest.raises(Exception, match="in-memory model"):
        from unpact_mech.unlearning import unlearn

        unlearn(subject, "ga", tiny_probes[:1], [], "/nonexistent/never-written", steps=1, progress=False)


def test_fast_path_shares_the_bridge_weights(tiny_llama):
    kvb = tiny_llama.backend.hf_view()
    shared = {p.data_ptr() for p in tiny_llama.bridge.parameters()}
    assert all(p.data_ptr() in shared for p in kvb.model.parameters())
    assert isinstance(tiny_llama.backend, Backend) and isinstance(kvb, Backend)


def test_bfloat16_agrees_with_float32_within_its_precision(tiny_llama_dir, tiny_probes):
    """bf16 keeps 8 significant bits (u = 2^-8). Tolerances: |dLP| <= 4u max(1, |LP|) (a mean of log-softmax
    values each accurate to a few u relative); a contribution is a difference of two LPs, so 8u of the larger.
    DLA completeness: the bf16 components are each rounded (relative error u), so |sum - total| <= 4u sum|c|."""
    f32 = load_model(str(tiny_llama_dir))
    b16 = load_model(str(tiny_llama_dir), dtype="bfloat16")
    assert b16.dtype == torch.bfloat16 and b16.backend.hf_view().dtype == torch.bfloat16
    tps = tokenize_probes(f32, tiny_probes, "plain")
    for a, b in zip(score_probes(f32, tps), score_probes(b16, tps)):
        assert b.logprobs.dtype == torch.float64
        assert abs(a.lp - b.lp) <= 4 * BF16_U * max(1.0, abs(a.lp))
    for a, b in zip(loo_contributions(f32, tps), loo_contributions(b16, tps)):
        scale = torch.clamp(torch.maximum(torch.tensor(abs(a.lp)), (a.lp - a.contributions).abs()), min=1.0)
        assert ((a.contributions - b.contributions).abs() <= 8 * BF16_U * scale).all()
    d = decompose(b16, tps[0])
    mag = d.embed.abs() + d.heads.abs().sum((0, 1)) + d.mlp.abs().sum(0) + d.attn_bias.abs().sum(0)
    assert ((d.component_sum().double() - d.total.double()).abs() <= 4 * BF16_U * mag.double()).all()
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_model(str(tiny_llama_dir), dtype="float8")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_every_path_keeps_tensors_on_the_subject_device(device, tiny_llama_dir, tiny_probes, tmp_path):
    from unpact_mech.analysis.emphasis import sweep
    from unpact_mech.patching import patch_heads, patch_positions
    from unpact_mech.unlearning import unlearn

    s = load_model(str(tiny_llama_dir), device=device)
    dev = torch.device(device)
    assert s.device.type == dev.type and s.backend.hf_view().device.type == dev.type
    tps = tokenize_probes(s, tiny_probes[:2], "plain")
    fast = loo_contributions(s, tps)
    exact = loo_contributions(s, tps, prefix_cache=False)
    for a, b in zip(fast, exact):
        assert torch.allclose(a.contributions, b.contributions, atol=1e-5)
    d = decompose(s, tps[0])
    assert d.heads.device.type == dev.type and torch.allclose(d.component_sum(), d.total, atol=1e-3)
    assert len(logit_lens(s, tps[0])) == s.n_layers + 1
    pos = [list(tp.attributable[:2]) for tp in tps]
    assert len(sweep(s, tps, pos, factors=(1.0, 2.0))) == 2 * 2 * 2
    other = load_model(str(tiny_llama_dir), device=device)
    assert len(patch_positions(s, other, tps[0], kinds=("resid_pre",), layers=[0])) > 0
    assert len(patch_heads(s, other, tps[0], layers=[0])) == s.cfg.n_heads
    out = unlearn(s, "npo_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "u", steps=1, progress=False, fmt="plain")
    assert json.loads((out / "unpact.json").read_text())["steps"] == 1


def test_capabilities_are_asked_for_not_guessed(tiny_llama_dir, tiny_llama, tiny_probes):
    nn = load_nnsight(str(tiny_llama_dir))
    assert KV_PREFIX in nn.backend.capabilities and RUN_WITH_CACHE not in nn.backend.capabilities
    with pytest.raises(BackendCapabilityError, match="needs the backend capability 'run_with_cache'.*nnsight"):
        decompose(nn, tokenize_probes(nn, tiny_probes[:1], "plain")[0])
    assert require(tiny_llama.backend, RUN_WITH_CACHE, "x") is tiny_llama.backend
    assert nn.n_ctx == tiny_llama.n_ctx == 128 and nn.tokenizer_fingerprint() == tiny_llama.tokenizer_fingerprint()


def test_model_code_and_pickles_need_explicit_opt_in(tiny_llama_dir, tmp_path):
    import shutil

    remote = tmp_path / "remote_code"
    shutil.copytree(tiny_llama_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    with pytest.raises(ModelSpecError, match="auto_map.*trust_remote_code=True"):
        load_model(str(remote))
    assert not (tmp_path / "pwned").exists()

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, pickled)
    model = AutoModelForCausalLM.from_pretrained(pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match="pickled weights.*allow_pickle=True"):
        load_model(str(pickled))
    assert load_model(str(pickled), allow_pickle=True).n_layers == 3


def test_jaxtyping_shapes_are_checked_at_run_time():
    """conftest installs jaxtyping's import hook: a call whose shapes disagree with the annotation fails."""
    from jaxtyping import TypeCheckError

    with pytest.raises(TypeCheckError, match="n"):
        answer_logprobs(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))  # 3 rows, 4 targets
    with pytest.raises(TypeCheckError):
        answer_logprobs(torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, dtype=torch.long))  # ints, not floats
