"""Attribution patching (AtP) against finite differences of the exact patch, on a tiny model in float64."""

import pytest
import torch

from unpact_mech.hooks import applied
from unpact_mech.patching import agreement, atp, patch
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import score_probes


@pytest.fixture(scope="module")
def pair(tiny_llama_dir, tmp_path_factory):
    """(base, "unlearned") tiny Llamas in float64; the second is the first with every matrix perturbed."""
    from transformers import AutoModelForCausalLM

    from unpact_mech.model.loading import load_model

    out = tmp_path_factory.mktemp("tiny_unlearned")
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.add_(0.3 * p.std() * torch.randn_like(p))
    hf.save_pretrained(out)
    import shutil

    for f in tiny_llama_dir.iterdir():
        if "token" in f.name:
            shutil.copy(f, out / f.name)
    base, unl = load_model(str(tiny_llama_dir)), load_model(str(out))
    for s in (base, unl):
        s.bridge.double()
    return base, unl


def _lp(subject, tp, hooks):
    with applied(subject, hooks):
        return score_probes(subject, [tp])[0].lp


def _interpolate(name, src, pos, eps, head=None):
    """a <- a + eps (a_src - a) at ``pos`` (all positions of one head for hook_z), written out here."""

    def fn(act, hook=None):
        act = act.clone()
        if head is None:
            act[0, pos] = act[0, pos] + eps * (src[0, pos] - act[0, pos])
        else:
            act[0, :, head] = act[0, :, head] + eps * (src[0, :, head] - act[0, :, head])
        return act

    return [(name, fn)]


def test_atp_equals_finite_difference(pair, tiny_probes):
    base, unl = pair
    tp = tokenize_probes(base, tiny_probes, "plain")[0]
    pos_df, head_df = atp(base, unl, tp)
    lp_b, lp_u = score_probes(base, [tp])[0].lp, score_probes(unl, [tp])[0].lp
    gap = lp_b - lp_u
    assert abs(gap) > 1e-2
    names = {f"blocks.{layer}.{h}" for layer in range(3) for h in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out",
                                                                   "attn.hook_z")}
    with torch.no_grad():
        _, cache = base.bridge.run_with_cache(torch.tensor([tp.ids]), names_filter=lambda n: n in names)
    # central differences, both through the same hooked forward; HF's eager attention takes its softmax in float32
    # (~1e-7 noise in LP), so eps is 1e-2: truncation O(eps^2), noise / eps ~ 1e-5
    eps = 1e-2
    checked = 0
    for _, r in pos_df.sample(24, random_state=0).iterrows():
        hook = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}[r.kind]
        name = f"blocks.{r.layer}.{hook}"
        fd = (_lp(unl, tp, _interpolate(name, cache[name], r.position, eps))
              - _lp(unl, tp, _interpolate(name, cache[name], r.position, -eps))) / (2 * eps)
        assert r.restoration * gap == pytest.approx(fd, rel=1e-2, abs=2e-5), (r.kind, r.layer, r.position)
        checked += abs(fd) > 1e-4
    for _, r in head_df.iterrows():
        name = f"blocks.{r.layer}.attn.hook_z"
        fd = (_lp(unl, tp, _interpolate(name, cache[name], None, eps, head=r["head"]))
              - _lp(unl, tp, _interpolate(name, cache[name], None, -eps, head=r["head"]))) / (2 * eps)
        assert r.restoration * gap == pytest.approx(fd, rel=1e-2, abs=2e-5), (r.layer, r["head"])
        checked += abs(fd) > 1e-4
    assert checked >= 10  # the comparison is not between zeros


def test_atp_and_exact_share_units_and_keys(pair, tiny_probes):
    """Same cells and columns; at the first layer's residual (where the patched site is the whole input of the
    model at that position) AtP is a linearisation, so agreement is checked, not assumed, and is reported."""
    base, unl = pair
    tp = tokenize_probes(base, tiny_probes, "plain")[1]
    pe, he = patch(base, unl, tp, "exact")
    pa, ha = patch(base, unl, tp, "atp")
    keys = ["probe_id", "direction", "kind", "layer", "position"]
    assert sorted(pe[keys].itertuples(index=False)) == sorted(pa[keys].itertuples(index=False))
    assert len(he) == len(ha) == 3 * 6
    ag = agreement(pe, pa, keys)
    assert ag["n_cells"] == len(pe) and -1 <= ag["pearson"] <= 1
    # the exact restoration of the last layer's residual at the last prompt position is linear in that site
    # only through the final norm and softmax, so AtP and exact agree in sign where the effect is large
    big = pe.merge(pa, on=keys, suffixes=("_e", "_a"))
    big = big[big.restoration_e.abs() > 0.2]
    assert (big.restoration_e.gt(0) == big.restoration_a.gt(0)).mean() > 0.5


def test_patch_rejects_unknown_method(pair, tiny_probes):
    from unpact_mech.core.errors import UnpactError

    base, unl = pair
    tp = tokenize_probes(base, tiny_probes, "plain")[0]
    with pytest.raises(UnpactError, match="unknown patching method"):
        patch(base, unl, tp, "gradient")


def test_verify_patches_the_top_cells_exactly(pair, tiny_probes):
    """verify=k: the k largest |AtP| cells of each table carry exact_full's restoration; the rest are NaN."""
    base, unl = pair
    tp = tokenize_probes(base, tiny_probes[:1], "plain")[0]
    pos, heads = patch(base, unl, tp, "atp", verify=4)
    est, _ = patch(base, unl, tp, "atp")
    assert (pos.restoration.values == est.restoration.values).all()
    full_pos, full_heads = patch(base, unl, tp, "exact_full")
    keys = ["kind", "layer", "position"]
    top = est.loc[est.restoration.abs().nlargest(4).index, keys]
    got = pos[pos.verified]
    assert sorted(map(tuple, got[keys].values.tolist())) == sorted(map(tuple, top.values.tolist()))
    m = got.merge(full_pos, on=keys, suffixes=("", "_full"))
    assert (m.exact_restoration - m.restoration_full).abs().max() < 1e-5
    assert pos[~pos.verified].exact_restoration.isna().all()
    hm = heads[heads.verified].merge(full_heads, on=["layer", "head"], suffixes=("", "_full"))
    assert len(hm) == 4 and (hm.exact_restoration - hm.restoration_full).abs().max() < 1e-5
    with pytest.raises(Exception, match="already exact"):
        patch(base, unl, tp, "exact", verify=3)


def _one_layer_pair(tmp_path, qk_scale):
    """A 1-layer attention-only Llama (MLP output zeroed) and a copy whose embedding of "capital" is moved;
    ``qk_scale`` multiplies W_Q and W_K (4: saturated attention)."""
    import shutil

    from conftest import make_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    from unpact_mech.model.loading import load_model

    d, u = tmp_path / f"base{qk_scale}", tmp_path / f"moved{qk_scale}"
    d.mkdir()
    tok = make_tokenizer(d)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
        m.model.layers[0].self_attn.q_proj.weight.mul_(qk_scale)
        m.model.layers[0].self_attn.k_proj.weight.mul_(qk_scale)
        m.model.layers[0].mlp.down_proj.weight.zero_()
    m.save_pretrained(d)
    tid = tok.convert_tokens_to_ids("capital")
    with torch.no_grad():
        m.model.embed_tokens.weight[tid] += 2.0 * torch.randn(32)
    m.save_pretrained(u)
    for f in d.iterdir():
        if "token" in f.name:
            shutil.copy(f, u / f.name)
    return load_model(str(d)), load_model(str(u)), tid


def test_qk_fix_recovers_a_saturated_head(tmp_path):
    """The models differ only in one token's embedding, so patching resid_pre there restores exactly 1. With
    saturated attention AtP's linearised softmax misses most of it; AtP*'s recomputed softmax does not."""
    from unpact_mech.probes import Probe

    base, unl, tid = _one_layer_pair(tmp_path, 4.0)
    tp = tokenize_probes(base, [Probe("t", "what is the capital of france ?", "paris")], "plain")[0]
    p = tp.ids.index(tid)
    with torch.no_grad():
        att = unl.backend.hf_view().model(input_ids=torch.tensor([tp.ids]), output_attentions=True).attentions[0]
    assert att[0, :, p:].max() > 0.99  # a query that sees the patched key puts > 99% on one key: saturated
    kw = {"kinds": ["resid_pre"], "layers": [0], "positions": [p]}
    exact = patch(base, unl, tp, "exact", **kw)[0].restoration.iloc[0]
    est = patch(base, unl, tp, "atp", **kw)[0].restoration.iloc[0]
    star = patch(base, unl, tp, "atp*", **kw)[0].restoration.iloc[0]
    assert abs(exact - 1) < 1e-4
    assert abs(est - exact) > 0.5  # AtP is measurably wrong here
    assert abs(star - exact) < 0.05


def test_graddrop_against_a_written_out_computation(pair, tiny_probes):
    """eq. 11: c(n) = sum_l |I_l(n)| / (L - 1), I_l the AtP estimate with the gradient through layer l's
    attention and MLP outputs detached (and I_l(n) = I(n) for n at layers >= l); written out here with torch
    hooks on the HF modules, for attn_out, mlp_out and head sites (those carry no QK fix)."""
    base, unl = pair
    tp = tokenize_probes(base, tiny_probes[:1], "plain")[0]
    pos, heads = patch(base, unl, tp, "atp*")
    src, tgt = base.backend.hf_view().model, unl.backend.hf_view().model
    layers = tgt.model.layers
    L, H = len(layers), tgt.config.num_attention_heads
    ids = torch.tensor([list(tp.ids)])

    def mods_of(model):
        ls = model.model.layers
        return {("attn_out", i): ls[i].self_attn for i in range(L)} | {("mlp_out", i): ls[i].mlp for i in range(L)}

    mods = mods_of(tgt)

    def out_of(o):
        return o[0] if isinstance(o, tuple) else o

    with torch.no_grad():  # source activations
        got = {}
        hs = [m.register_forward_hook(lambda mod, a, o, k=k: got.__setitem__(k, out_of(o).double()))
              for k, m in mods_of(src).items()]
        hs += [src.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
            lambda mod, a, i=i: got.__setitem__(("z", i), a[0].double())) for i in range(L)]
        src(input_ids=ids)
        for h in hs:
            h.remove()

    def effects(drop):
        leaves = {}

        def leaf(k):
            def fn(mod, a, o):
                x = out_of(o)
                if drop is not None and k[1] == drop:
                    x = x.detach()
                z = torch.zeros_like(x, requires_grad=True)
                leaves[k] = (z, x.detach())
                return (x + z, *o[1:]) if isinstance(o, tuple) else x + z
            return fn

        def zleaf(i):
            def fn(mod, a):
                z = torch.zeros_like(a[0], requires_grad=True)
                leaves[("z", i)] = (z, a[0].detach())
                return (a[0] + z,)
            return fn

        hs = [m.register_forward_hook(leaf(k)) for k, m in mods.items()]
        hs += [layers[i].self_attn.o_proj.register_forward_pre_hook(zleaf(i)) for i in range(L)]
        with torch.enable_grad():
            lp = torch.log_softmax(tgt(input_ids=ids).logits[0].double(), -1)
            mean = torch.stack([lp[t - 1, tp.ids[t]] for t in range(tp.prompt_len, len(tp.ids))]).mean()
            keys = list(leaves)
            grads = torch.autograd.grad(mean, [leaves[k][0] for k in keys], allow_unused=True)
            grads = [torch.zeros_like(leaves[k][0]) if g is None else g for k, g in zip(keys, grads)]
        for h in hs:
            h.remove()
        out = {}
        for k, g in zip(keys, grads):
            d = (got[k][0] - leaves[k][1][0].double()) * g[0].double()
            out[k] = d.view(d.shape[0], H, -1).sum((0, 2)) if k[0] == "z" else d.sum(-1)
        return out

    plain = effects(None)
    dropped = [effects(ell) for ell in range(L)]
    per_drop = [{k: (dropped[ell][k] if k[1] < ell else v) for k, v in plain.items()} for ell in range(L)]
    from unpact_mech.scoring import score_probes

    gap = score_probes(base, [tp])[0].lp - score_probes(unl, [tp])[0].lp
    score = {k: sum(d[k].abs() for d in per_drop) / ((L - 1) * abs(gap)) for k in plain}
    for row in pos[pos.kind != "resid_pre"].itertuples():
        assert abs(row.graddrop - float(score[(row.kind, row.layer)][row.position])) < 1e-6
    for row in heads.itertuples():
        assert abs(row.graddrop - float(score[("z", row.layer)][row.head])) < 1e-6
    assert pos.graddrop.std() > 1e-4
