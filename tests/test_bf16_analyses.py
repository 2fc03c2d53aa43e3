"""bfloat16 adds no error of its own in the analyses either: DLA, exact patching, AtP and greedy generation in
bfloat16 are no further from float32 than plain transformers in bfloat16 is, on the same token ids. Each
reference is written here with torch hooks on a plain transformers model (patching: test_patch_fast's naive loop),
run on the same weights loaded in float32 (the reference) and in bfloat16 (the model's own error); the toolkit in
float32 must equal the float32 reference, so the reference is the toolkit's quantity."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_bf16_parity import RATIO, _rms, tiny_probe_set
from test_patch_fast import naive_cell, perturbed_dir
from transformers import AutoModelForCausalLM

from unpact_mech.attribution.dla import decompose
from unpact_mech.model.loading import load_model
from unpact_mech.patching import patch
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import forward_logits, greedy_batch

DTYPES = (torch.float32, torch.bfloat16)


def _hf(directory, dtype, attn: str = "sdpa"):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation=attn).eval()


def _ratio(ours, own, ref) -> float:
    assert _rms(own - ref) > 0  # bf16 does round here
    return _rms(ours - ref) / _rms(own - ref)


@torch.no_grad()
def hf_dla(model, tp) -> np.ndarray:
    """Per answer token y at query position q: the embedding's, then each layer's attention output's, then each
    MLP output's share of the vocabulary-centred logit, c[q] / scale[q] . (g * (W_U[y] - mean_v W_U[v])), with
    the final RMSNorm's scale sqrt(mean(x[q]^2) + eps) read from its input x (float64 from the model's tensors)."""
    got: dict = {}
    body = model.model
    hooks = [body.embed_tokens.register_forward_hook(lambda m, a, o: got.__setitem__("embed", o)),
             body.norm.register_forward_pre_hook(lambda m, a: got.__setitem__("final", a[0]))]
    for i, layer in enumerate(body.layers):
        hooks.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(("attn", i), o[0])))
        hooks.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(("mlp", i), o)))
    model(torch.tensor([list(tp.ids)]))
    for h in hooks:
        h.remove()
    q = torch.arange(tp.prompt_len - 1, len(tp.ids) - 1)
    y = torch.tensor(tp.ids[tp.prompt_len:])
    x = got["final"][0, q].double()
    scale = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + body.norm.variance_epsilon)
    w_u = model.lm_head.weight.double()
    u = (w_u[y] - w_u.mean(0)) * body.norm.weight.double()  # [T, d]
    n = len(body.layers)
    comps = [got["embed"]] + [got[("attn", i)] for i in range(n)] + [got[("mlp", i)] for i in range(n)]
    return np.concatenate([((c[0, q].double() / scale) * u).sum(-1).numpy() for c in comps])


def toolkit_dla(subject, tp) -> np.ndarray:
    d = decompose(subject, tp, "logit", False)
    per_layer = [d.heads[i].sum(0) for i in range(d.heads.shape[0])] + [d.mlp[i] for i in range(d.mlp.shape[0])]
    return np.concatenate([t.double().numpy() for t in (d.embed, *per_layer)])


def _subject_of(model):
    """What :func:`test_patch_fast.naive_cell` reads of a subject: its plain transformers model."""
    return SimpleNamespace(backend=SimpleNamespace(hf_view=lambda: SimpleNamespace(model=model)))


def hf_atp(source, target, tp, cells) -> np.ndarray:
    """AtP written out: LP(target) + sum_d (a_source - a_target)[p] * dLP/da[p] per (kind, layer, position) cell,
    the gradient by autograd through the target's forward (residual input of a block, attention output, MLP
    output), LP the mean answer-token log-prob in float64."""
    ids = torch.tensor([list(tp.ids)])

    def sites(model, keep):
        hooks = []
        for i, layer in enumerate(model.model.layers):
            def pre(m, a, kw, i=i):
                keep(("resid_pre", i), a[0] if a else kw["hidden_states"])
            hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: keep(("attn_out", i), o[0])))
            hooks.append(layer.mlp.register_forward_hook(lambda m, a, o, i=i: keep(("mlp_out", i), o)))
        return hooks

    src: dict = {}
    hooks = sites(source, lambda k, t: src.__setitem__(k, t.detach()))
    with torch.no_grad():
        source(ids)
    for h in hooks:
        h.remove()
    tgt: dict = {}

    def keep(k, t):
        t.retain_grad()
        tgt[k] = t

    hooks = sites(target, keep)
    lp_all = torch.log_softmax(target(ids).logits[0].double(), -1)
    lp = lp_all[tp.prompt_len - 1 : -1].gather(-1, torch.tensor(tp.ids[tp.prompt_len:])[:, None]).mean()
    lp.backward()
    for h in hooks:
        h.remove()
    target.zero_grad(set_to_none=True)
    out = []
    for kind, layer, pos in cells:
        t = tgt[(kind, layer)]
        out.append(float(lp.detach()) + float(((src[(kind, layer)][0, pos].double() - t[0, pos].detach().double())
                                      * t.grad[0, pos].double()).sum()))
    return np.array(out)


@torch.no_grad()
def hf_greedy(model, prompt, n: int) -> list[int]:
    """n greedy tokens, each from a full forward of the sequence so far (no cache)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.fixture(scope="module")
def pair_dirs(tiny_llama_dir, tmp_path_factory):
    return tiny_llama_dir, perturbed_dir(tiny_llama_dir, tmp_path_factory.mktemp("tiny_perturbed"), 0.3)


def _ratios(base_dir, unl_dir, probes, fmt, n_patch: int, dla: bool = True, layers=None,
            attn: str = "sdpa") -> dict[str, float]:
    """RMS(toolkit bf16 - transformers f32) / RMS(transformers bf16 - transformers f32) per analysis (patching
    and AtP over ``layers``, default all), transformers' bf16 with attention ``attn``: its default ``sdpa`` or
    ``eager``, the implementation whose attention probabilities hooks can read, which the toolkit runs."""
    sub = {dt: (load_model(str(base_dir), dtype=dt), load_model(str(unl_dir), dtype=dt)) for dt in DTYPES}
    hf = {dt: (_hf(base_dir, dt, "sdpa" if dt == torch.float32 else attn),
               _hf(unl_dir, dt, "sdpa" if dt == torch.float32 else attn)) for dt in DTYPES}
    tps = tokenize_probes(sub[torch.float32][0], probes, fmt)
    f32, b16 = torch.float32, torch.bfloat16
    out = {}
    if dla:  # of the base model (the reference reads Llama-style blocks: one RMSNorm before each sublayer)
        ref, own = (np.concatenate([hf_dla(hf[dt][0], tp) for tp in tps]) for dt in DTYPES)
        ours_f32, ours = (np.concatenate([toolkit_dla(sub[dt][0], tp) for tp in tps]) for dt in DTYPES)
        assert np.allclose(ours_f32, ref, atol=1e-3), "the reference is not the toolkit's DLA"
        out["dla"] = _ratio(ours, own, ref)
    # exact patching and AtP, base -> unlearned, over every (kind, layer, position) cell
    for method in ("exact", "atp"):
        ref_l, own_l, ours_l = [], [], []
        for tp in tps[:n_patch]:
            t32, t16 = (patch(*sub[dt], tp, method, layers=layers)[0] for dt in DTYPES)
            cells = list(zip(t32.kind, t32.layer, t32.position))
            assert cells == list(zip(t16.kind, t16.layer, t16.position))
            if method == "exact":
                r = {dt: np.array([naive_cell(_subject_of(hf[dt][0]), _subject_of(hf[dt][1]), tp, k, layer, pos=p)
                                   for k, layer, p in cells]) for dt in DTYPES}
            else:
                r = {dt: hf_atp(*hf[dt], tp, cells) for dt in DTYPES}
            assert np.allclose(t32.lp.to_numpy(), r[f32], atol=1e-3), f"the reference is not the toolkit's {method}"
            ref_l.append(r[f32])
            own_l.append(r[b16])
            ours_l.append(t16.lp.to_numpy())
        out[method] = _ratio(*(np.concatenate(x) for x in (ours_l, own_l, ref_l)))
    # generation: each greedy token is the argmax of the last position's logits, and the logits along float32's
    # greedy path carry no more bf16 error than transformers' own. Which tokens flip at near-ties is noise (the
    # cached and the recomputed loop round differently in bf16, in transformers too): counted, not compared
    n = 8
    prompts = [tp.prompt_ids for tp in tps]
    greedy = [hf_greedy(hf[f32][0], p, n) for p in prompts]
    assert greedy_batch(sub[f32][0], prompts, n, stop_ids=[]) == greedy
    logits: dict = {"ref": [], "own": [], "ours": []}
    with torch.no_grad():
        for p, g in zip(prompts, greedy):
            ids = torch.tensor([list(p) + g])
            steps = slice(len(p) - 1, ids.shape[1] - 1)
            logits["ref"].append(hf[f32][0](ids).logits[0, steps].double().flatten().numpy())
            logits["own"].append(hf[b16][0](ids).logits[0, steps].double().flatten().numpy())
            logits["ours"].append(forward_logits(sub[b16][0], ids, [])[0, steps].double().flatten().numpy())
        hf_cached = [hf[b16][0].generate(torch.tensor([list(p)]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                         pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    out["generation"] = _ratio(*(np.concatenate(logits[k]) for k in ("ours", "own", "ref")))
    runs = {"flipped_hf_recompute": [hf_greedy(hf[b16][0], p, n) for p in prompts], "flipped_hf_cached": hf_cached,
            "flipped_ours_recompute": greedy_batch(sub[b16][0], prompts, n, stop_ids=[], exact=True),
            "flipped_ours_cached": greedy_batch(sub[b16][0], prompts, n, stop_ids=[])}
    out.update({k: sum(a != b for a, b in zip(v, greedy)) for k, v in runs.items()})
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bf16_analyses_add_no_error_of_their_own_tiny(pair_dirs, attn):
    r = _ratios(*pair_dirs, tiny_probe_set(24), "plain", 8, attn=attn)
    print(attn, r)
    assert all(r[k] <= RATIO for k in ("dla", "exact", "atp", "generation")), r
