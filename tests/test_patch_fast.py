"""Fast exact patching (from the target's clean run) against the full recompute through TransformerLens's hooks
(``exact_full``) and against a naive loop written here: one plain-HF forward per cell, the site overwritten by
a torch forward hook. Tiny random Llama (grouped-query attention), GPT-2 and Gemma-2 (soft-capping, sliding
window, sandwich norms), and SmolLM2 (slow)."""

import shutil

import pytest
import torch

from unpact_mech.patching import KINDS, patch, patch_fast
from unpact_mech.probes import tokenize_probes

TOL = 1e-5


def perturbed_pair(directory, tmp_path_factory, scale=0.3):
    """(base, "unlearned"): the model at ``directory`` and a copy with every matrix perturbed."""
    from unpact_mech.model.loading import load_model

    out = tmp_path_factory.mktemp(f"{directory.name}_perturbed")
    return load_model(str(directory)), load_model(str(perturbed_dir(directory, out, scale)))


def perturbed_dir(directory, out, scale=0.3):
    """``out``: a copy of the model at ``directory`` with every matrix perturbed by ``scale`` of its std (seed 1)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(directory)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.add_(scale * p.std() * torch.randn_like(p))
    hf.save_pretrained(out)
    for f in directory.iterdir():
        if "token" in f.name:
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma2"])
def pair(request, tmp_path_factory):
    from conftest import make_tiny

    d = make_tiny(tmp_path_factory.mktemp(f"fast_{request.param}"), request.param)
    return perturbed_pair(d, tmp_path_factory)


def _hf(subject):
    return subject.backend.hf_view().model


def naive_cell(base, unlearned, tp, kind, layer, pos=None, head=None, direction="base->unlearned"):
    """Mean answer log-prob of the target with one site taken from the source: one full forward of each, the
    site found by module name and overwritten by a torch hook (nothing shared with the code under test)."""
    source, target = (base, unlearned) if direction == "base->unlearned" else (unlearned, base)
    ids = torch.tensor([list(tp.ids)])

    def module(model):
        body = model.base_model
        block = (body.layers if hasattr(body, "layers") else body.h)[layer]
        attn = block.self_attn if hasattr(block, "self_attn") else block.attn
        if kind == "resid_pre":
            return block
        if kind == "attn_out":
            return attn
        if kind == "mlp_out":
            return block.mlp
        return attn.o_proj if hasattr(attn, "o_proj") else attn.c_proj

    def grab(model):
        got = {}
        m = module(model)

        def keep_in(mod, args, kw):
            got["a"] = (args[0] if args else kw["hidden_states"]).clone()

        def keep_out(mod, args, out):
            got["a"] = (out[0] if isinstance(out, tuple) else out).clone()

        if kind in ("resid_pre", "z"):
            h = m.register_forward_pre_hook(keep_in, with_kwargs=True)
        else:
            h = m.register_forward_hook(keep_out)
        with torch.no_grad():
            model(input_ids=ids)
        h.remove()
        return got["a"]

    src_act = grab(_hf(source))
    model = _hf(target)
    m = module(model)
    n_heads = model.config.num_attention_heads if hasattr(model.config, "num_attention_heads") else model.config.n_head

    def put(a):
        a = a.clone()
        if kind == "z":
            d = a.shape[-1] // n_heads
            a[0, :, head * d : (head + 1) * d] = src_act[0, :, head * d : (head + 1) * d]
        else:
            a[0, pos] = src_act[0, pos]
        return a

    if kind in ("resid_pre", "z"):
        def pre(mod, args, kw):
            if args:
                return (put(args[0]), *args[1:]), kw
            return args, {**kw, "hidden_states": put(kw["hidden_states"])}
        h = m.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        h = m.register_forward_hook(lambda mod, args, out: (put(out[0]), *out[1:]) if isinstance(out, tuple) else put(out))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    h.remove()
    # HF's own forward applies the model's output transform (Gemma-2's final soft-capping)
    lp = torch.log_softmax(logits, -1)
    start = tp.prompt_len
    return float(sum(lp[t - 1, tp.ids[t]] for t in range(start, len(tp.ids))) / (len(tp.ids) - start))


@pytest.mark.slow  # the full recompute and a naive loop, three architectures
@pytest.mark.parametrize("direction", ["base->unlearned", "unlearned->base"])
def test_fast_exact_equals_full_recompute_and_naive_loop(pair, tiny_probes, direction):
    base, unl = pair
    for tp in tokenize_probes(base, tiny_probes[:2]):
        fast_pos, fast_heads = patch(base, unl, tp, "exact", direction=direction)
        full_pos, full_heads = patch(base, unl, tp, "exact_full", direction=direction)
        assert set(fast_pos.kind) == set(KINDS) and len(fast_pos) == len(full_pos)
        assert (fast_pos.drop(columns=["lp", "restoration", "method"]).values == full_pos.drop(columns=["lp", "restoration", "method"]).values).all()
        assert (fast_pos.lp - full_pos.lp).abs().max() <= TOL
        assert (fast_heads.lp - full_heads.lp).abs().max() <= TOL
        assert fast_pos.lp.std() > 1e-3  # the cells differ: the comparison is not between constants
        for row in fast_pos.sample(8, random_state=0).itertuples():
            assert abs(row.lp - naive_cell(base, unl, tp, row.kind, row.layer, pos=row.position, direction=direction)) <= TOL
        for row in fast_heads.sample(4, random_state=0).itertuples():
            assert abs(row.lp - naive_cell(base, unl, tp, "z", row.layer, head=row.head, direction=direction)) <= TOL


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunk_size_changes_nothing(pair, tiny_probes, chunk):
    base, unl = pair
    tp = tokenize_probes(base, tiny_probes[:1])[0]
    ref, _ = patch_fast(base, unl, tp, heads=False)
    got, _ = patch_fast(base, unl, tp, chunk=chunk, heads=False)
    assert (ref.lp - got.lp).abs().max() <= TOL


def test_a_subset_of_layers_and_positions(pair, tiny_probes):
    base, unl = pair
    tp = tokenize_probes(base, tiny_probes[:1])[0]
    ps = [tp.attributable[-1], tp.attributable[0]]
    fast, _ = patch(base, unl, tp, "exact", layers=[1], positions=ps, kinds=["attn_out"])
    full, _ = patch(base, unl, tp, "exact_full", layers=[1], positions=ps, kinds=["attn_out"])
    assert list(fast.position) == ps and (fast.lp - full.lp).abs().max() <= TOL


def test_attached_hooks_take_the_full_path(pair, tiny_probes):
    """With hooks attached to a subject the plain HF view would skip them: the fast path declines."""
    from unpact_mech.hooks import applied, scale_embedding

    base, unl = pair
    tp = tokenize_probes(base, tiny_probes[:1])[0]
    with applied(unl, scale_embedding([tp.attributable[0]], 3.0)):
        assert patch_fast(base, unl, tp) is None
        pos, _ = patch(base, unl, tp, "exact", layers=[0])
        full, _ = patch(base, unl, tp, "exact_full", layers=[0])
    assert (pos.lp - full.lp).abs().max() <= TOL


@pytest.mark.slow
def test_fast_exact_on_smollm2(smol, smol_probes):
    """SmolLM2 in its chat template against a perturbed copy: every kind on two layers, both directions."""
    from unpact_mech.model.subject import wrap

    hf = smol.load_hf_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.add_(0.02 * p.std() * torch.randn_like(p))
    unl = wrap(hf, smol.tokenizer, "smol-perturbed", smol.source)
    tp = tokenize_probes(smol, smol_probes[:1])[0]
    ps = list(tp.attributable[-3:]) + [tp.prompt_len - 1]  # question tokens and the answer-predicting position
    for direction in ("base->unlearned", "unlearned->base"):
        fast_pos, fast_heads = patch(smol, unl, tp, "exact", layers=[0, 29], positions=ps, direction=direction)
        full_pos, full_heads = patch(smol, unl, tp, "exact_full", layers=[0, 29], positions=ps, direction=direction)
        assert (fast_pos.lp - full_pos.lp).abs().max() <= TOL
        assert (fast_heads.lp - full_heads.lp).abs().max() <= TOL
        row = fast_pos.iloc[len(fast_pos) // 2]
        assert abs(row.lp - naive_cell(smol, unl, tp, row.kind, row.layer, pos=row.position, direction=direction)) <= TOL
