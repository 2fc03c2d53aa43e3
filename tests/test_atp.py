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

    from unpact_mech.models import load_model

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
    from unpact_mech.errors import UnpactError

    base, unl = pair
    tp = tokenize_probes(base, tiny_probes, "plain")[0]
    with pytest.raises(UnpactError, match="unknown patching method"):
        patch(base, unl, tp, "gradient")
