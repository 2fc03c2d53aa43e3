import pytest
import torch

from unpact_mech.analysis.localise import localise
from unpact_mech.attribution import attribute
from unpact_mech.attribution.dla import average_over_answer, decompose, logit_lens, path_token_attribution
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import score_probes


def _check_completeness(subject, tps, target):
    hf = subject.load_hf_model()  # independent: the plain HF forward, centred over the vocabulary
    for tp in tps:
        d = decompose(subject, tp, target)
        assert torch.allclose(d.component_sum(), d.total, atol=1e-4), (d.component_sum() - d.total).abs().max()
        with torch.no_grad():
            lg = hf(torch.tensor([tp.ids])).logits[0, tp.prompt_len - 1 : -1].double()
        lg = lg - lg.mean(-1, keepdim=True)
        ref = lg.gather(1, torch.tensor(tp.answer_ids)[:, None])[:, 0]
        if target == "logit_diff":
            ref = ref - lg.gather(1, torch.tensor(d.alt_ids)[:, None])[:, 0]
            assert (d.total > -1e-4).all() == (d.total > 0).all()
        assert torch.allclose(d.total.double(), ref, atol=1e-4)
        # paths: per-head sums over sources equal the head's DLA
        assert torch.allclose(d.paths.sum(-1), d.heads, atol=1e-4)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2", "tiny_gemma3"])
@pytest.mark.parametrize("target", ["logit", "logit_diff"])
def test_dla_completeness_tiny(arch, target, request, tiny_probes):
    subject = request.getfixturevalue(arch)
    _check_completeness(subject, tokenize_probes(subject, tiny_probes, "plain"), target)


def test_gemma3_heads_sum_to_the_normed_attention_output(tiny_gemma3, tiny_probes):
    """Gemma 3 adds norm(attn_out) to the residual. With that norm's scale frozen, the layer's head terms must sum
    to the direct effect of the cached, normalised attention output, written out here: out[q] . (g * u) / s[q]."""
    s = tiny_gemma3
    tp = tokenize_probes(s, tiny_probes[:1], "plain")[0]
    d = decompose(s, tp, "logit")
    names = {f"blocks.{i}.hook_attn_out" for i in range(s.cfg.n_layers)} | {"ln_final.hook_scale"}
    with torch.no_grad():
        _, cache = s.bridge.run_with_cache(torch.tensor([tp.ids]), names_filter=lambda n: n in names)
    q = torch.arange(tp.prompt_len - 1, len(tp.ids) - 1)
    W_U = s.bridge.W_U
    u = W_U[:, tp.answer_ids] - W_U.mean(1, keepdim=True)
    g = 1.0 + s.bridge.ln_final._original_component.weight
    for layer in range(s.cfg.n_layers):
        out = cache[f"blocks.{layer}.hook_attn_out"][0, q]
        ref = (out * (g[:, None] * u).T).sum(-1) / cache["ln_final.hook_scale"][0, q, 0]
        assert torch.allclose(d.heads[layer].sum(0), ref, atol=1e-5)
    assert d.heads.abs().max() > 1e-2  # the heads carry something


def test_localise_runs_on_gemma3(tiny_gemma3, tiny_probes):
    """Localisation needs DLA: it now runs on a post-norm model, and a model compared with itself changes nothing."""
    tps = tokenize_probes(tiny_gemma3, tiny_probes[:2], "plain")
    loc = localise(tiny_gemma3, tiny_gemma3, tps)
    assert len(loc.heads) == 2 * 4 * len({tp.probe.split for tp in tps})
    assert loc.heads["change"].abs().max() < 1e-6 and loc.heads["base"].abs().max() > 1e-3


@pytest.mark.slow
def test_dla_completeness_smollm2(smol, smol_probes):
    tps = tokenize_probes(smol, smol_probes[:2])
    _check_completeness(smol, tps, "logit")
    _check_completeness(smol, tps[:1], "logit_diff")


def test_path_hand_computation_gqa_head(tiny_llama, tiny_probes):
    s = tiny_llama
    tp = tokenize_probes(s, tiny_probes[:1], "plain")[0]
    d = decompose(s, tp, "logit")
    layer, head = 1, 4  # 6 query heads share 2 kv heads: head 4 reads kv head 1
    kv = head // (s.cfg.n_heads // s.cfg.n_key_value_heads)
    assert kv == 1
    _, cache = s.bridge.run_with_cache(torch.tensor([tp.ids]))
    v = cache[f"blocks.{layer}.attn.hook_v"][0, :, kv]  # [src, d_head]
    pat = cache[f"blocks.{layer}.attn.hook_pattern"][0, head]  # [q, src]
    scale = cache["ln_final.hook_scale"][0, :, 0]
    W_O = s.bridge.W_O[layer, head]  # [d_head, d_model]
    g = s.load_hf_model().model.norm.weight.detach()  # the final RMSNorm's gain, from the plain HF model
    W_U = s.load_hf_model().lm_head.weight.detach().T  # [d_model, vocab]
    for t, y in enumerate(tp.answer_ids):
        q = tp.prompt_len - 1 + t
        u = g * (W_U[:, y] - W_U.mean(1))  # direction of the vocabulary-centred logit
        for src in range(len(tp.ids)):
            hand = float(pat[q, src] * ((v[src] @ W_O) @ u) / scale[q])
            assert abs(hand - float(d.paths[layer, head, t, src])) < 1e-5
        assert float(d.paths[layer, head, t, q + 1 :].abs().sum()) == 0.0  # causal


def test_tables_and_logit_lens(tiny_llama, tiny_probes):
    tps = tokenize_probes(tiny_llama, tiny_probes[:2], "plain")
    dla = attribute(tiny_llama, tps, method="dla")
    assert set(dla.component) == {"embed", "unembed_bias", "mlp", "head"}
    avg = average_over_answer(dla)
    assert len(avg) == 2 * (2 + tiny_llama.cfg.n_layers * (1 + tiny_llama.cfg.n_heads))
    paths = attribute(tiny_llama, tps, method="paths")
    assert len(paths) == sum(tiny_llama.cfg.n_layers * tiny_llama.cfg.n_heads * len(tp.ids) for tp in tps)
    d = decompose(tiny_llama, tps[0])
    assert path_token_attribution(d).shape == (len(tps[0].ids),)
    lens = logit_lens(tiny_llama, tps[0])
    final = lens[lens.component == "resid_final"].score.item()
    assert abs(final - score_probes(tiny_llama, tps[:1])[0].lp) < 1e-4  # the last lens is the model


def test_localise_self_is_zero(tiny_llama, tiny_probes):
    loc = localise(tiny_llama, tiny_llama, tiny_probes, fmt="plain")
    assert (loc.heads.change == 0).all()
    assert (loc.layer_source.change == 0).all()
    assert (loc.keytoken_route.lost == 0).all()
    assert set(loc.heads.split) == {"forget", "retain", "general"}
    assert "no head lost" in loc.summary


@pytest.mark.slow
def test_dla_completeness_gemma3_270m(smol_probes):
    """The real Gemma-3-270M (``make gemma``; skipped where its chunk packages are not installed)."""
    import importlib.metadata

    from unpact_mech.model.builtin import GEMMA3_PARTS
    from unpact_mech.model.loading import load_model

    try:
        [importlib.metadata.distribution(name) for name in GEMMA3_PARTS]
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Gemma-3-270M chunk packages not installed (make gemma)")
    gemma = load_model("gemma3-270m")
    tps = tokenize_probes(gemma, smol_probes[:2], "plain")
    for target in ("logit", "logit_diff"):
        for tp in tps:
            d = decompose(gemma, tp, target)
            assert (d.component_sum() - d.total).abs().max() < 1e-3


def test_attention_view_html(tiny_llama, tiny_probes):
    """The offline attention view shows the question tokens and the pattern's weights (read independently)."""
    from unpact_mech.attribution.dla import attention_view

    tp = tokenize_probes(tiny_llama, tiny_probes[:1], "plain")[0]
    view = attention_view(tiny_llama, tp, [(1, 2)])
    with torch.no_grad():
        _, cache = tiny_llama.bridge.run_with_cache(torch.tensor([tp.ids]))
    pat = cache["blocks.1.attn.hook_pattern"][0, 2]
    assert torch.allclose(view.patterns["L1H2"], pat)
    html = view._repr_html_()
    q = len(tp.ids) - 2
    assert f"{float(pat[q, min(tp.attributable)]):.2f}" in html and "L1H2" in html
    assert all(repr(t)[1:-1].replace("<", "&lt;").replace(">", "&gt;") in html
               for t in tp.tokens[min(tp.attributable):tp.prompt_len])
    with pytest.raises(Exception, match="no such head"):
        attention_view(tiny_llama, tp, [(9, 0)])
