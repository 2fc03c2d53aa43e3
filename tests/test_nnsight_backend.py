"""The nnsight backend agrees with the TransformerLens path."""

import pytest
import torch

from unpact_mech.analysis.emphasis import emphasize
from unpact_mech.attribution.loo import loo_contributions
from unpact_mech.hooks import applied, patch_from_cache
from unpact_mech.model.loading import load_nnsight
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import score_probes, score_sequences


def _agree(tl, nn, tps):
    a = score_probes(tl, tps)
    b = score_probes(nn, tps)
    assert max(abs(x.lp - y.lp) for x, y in zip(a, b)) < 1e-4
    la = loo_contributions(tl, tps)
    lb = loo_contributions(nn, tps)
    assert max(float((x.contributions - y.contributions).abs().max()) for x, y in zip(la, lb)) < 1e-4
    tp = tps[0]
    pos = list(tp.attributable[:2])
    ea = emphasize(tl, tp, 4.0, positions=pos, mode="embed")
    eb = emphasize(nn, tp, 4.0, positions=pos, mode="embed")
    assert abs(ea.lp - eb.lp) < 1e-4 and abs(ea.lp - a[0].lp) > 1e-4
    # layer-output patching: TL resid_post of layer 1 from another prompt's run vs nnsight's
    other = list(tps[1].ids[: len(tp.ids)]) + [0] * max(0, len(tp.ids) - len(tps[1].ids))
    ids = torch.tensor([other])
    with torch.no_grad():
        _, cache = tl.bridge.run_with_cache(ids, names_filter=lambda n: n == "blocks.1.hook_resid_post")
    qpos = [p for p in tp.attributable if other[p] != tp.ids[p]][:2]  # where the two prompts differ
    assert qpos
    with applied(tl, patch_from_cache(cache, "blocks.1.hook_resid_post", positions=qpos)):
        pa = score_sequences(tl, [(tp.ids, tp.prompt_len)])[0].lp
    src = nn.backend.layer_output(ids, 1)  # the same patch hook, on nnsight's layer output
    hooks = patch_from_cache({"blocks.1.hook_resid_post": src}, "blocks.1.hook_resid_post", positions=qpos)
    pb = score_sequences(nn, [(tp.ids, tp.prompt_len)], hooks=hooks)[0].lp
    assert abs(pa - pb) < 1e-4 and abs(pa - a[0].lp) > 1e-5


def test_nnsight_agrees_with_transformer_lens_tiny(tiny_llama, tiny_llama_dir, tiny_probes):
    nn = load_nnsight(str(tiny_llama_dir))
    _agree(tiny_llama, nn, tokenize_probes(tiny_llama, tiny_probes, "plain"))


def test_nnsight_scores_build_no_autograd_graph(tiny_llama_dir, tiny_probes):
    """Scoring and leave-one-out (KV path over nnsight's module) keep no graph through the weights, as the bridge;
    gradient attributions still differentiate through the inputs."""
    from unpact_mech.attribution.gradient import grad_x_input_scores

    nn = load_nnsight(str(tiny_llama_dir))
    tps = tokenize_probes(nn, tiny_probes, "plain")
    assert not any(p.requires_grad for p in nn.backend.hf.parameters())
    assert not any(s.logprobs.requires_grad for s in score_probes(nn, tps))
    assert not any(r.contributions.requires_grad for r in loo_contributions(nn, tps))
    assert grad_x_input_scores(nn, tps[0]).abs().max() > 0


@pytest.mark.slow
def test_nnsight_agrees_with_transformer_lens_smollm2(smol, smol_probes):
    nn = load_nnsight("smollm2-135m")
    _agree(smol, nn, tokenize_probes(smol, smol_probes[:2]))


def test_attention_route_refused_and_remote_flag_reaches_trace(tiny_llama_dir, tiny_probes, monkeypatch):
    nn = load_nnsight(str(tiny_llama_dir))
    tp = tokenize_probes(nn, tiny_probes[:1], "plain")[0]
    with pytest.raises(ValueError, match="nnsight backend supports route='embed'"):
        emphasize(nn, tp, 2.0, positions=[1], mode="attention")
    seen = {}
    real = nn.backend.lm.trace

    def spy(*args, **kw):
        seen.update(kw)
        kw["remote"] = False  # record the flag, run locally (no NDIF from tests)
        return real(*args, **kw)

    monkeypatch.setattr(nn.backend.lm, "trace", spy)
    nn.backend.remote = True
    score_probes(nn, [tp])
    assert seen["remote"] is True
