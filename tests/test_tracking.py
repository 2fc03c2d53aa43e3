import pytest
import torch

from unpact_mech.analysis.compare import TokenizerMismatch, compare
from unpact_mech.model.loading import load_model, save_checkpoint


@pytest.fixture(scope="module")
def perturbed_llama(tiny_llama, tmp_path_factory):
    hf = tiny_llama.load_hf_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.std())
    out = save_checkpoint(hf, tiny_llama.tokenizer, tmp_path_factory.mktemp("pert") / "m", {"method": "noise"})
    return load_model(str(out))


def test_self_comparison_is_identical(tiny_llama, tiny_probes):
    res = compare(tiny_llama, tiny_llama, tiny_probes, fmt="plain")
    df = res.per_probe
    assert (df.keytokens_base == df.keytokens_unlearned).all()
    assert (df.keytoken_jaccard == 1.0).all() and (df.rank_correlation == 1.0).all()
    assert (df.lp_change == 0).all() and (df.focus_change.fillna(0) == 0).all()
    assert (df.keytoken_contrib_change.fillna(0) == 0).all()
    assert res.summary["mean_lp_change"] == 0


def test_perturbed_copy_differs(tiny_llama, perturbed_llama, tiny_probes):
    res = compare(tiny_llama, perturbed_llama, tiny_probes, fmt="plain")
    df = res.per_probe
    assert (df.lp_change.abs() > 1e-4).all()
    assert (df.rank_correlation < 1.0).any()
    assert len(df) == len(tiny_probes)


def test_tokenizer_mismatch_refused(tiny_llama, smol_like_other_vocab):
    with pytest.raises(TokenizerMismatch, match="different tokenizers"):
        compare(tiny_llama, smol_like_other_vocab, [])


@pytest.fixture(scope="module")
def smol_like_other_vocab(tiny_llama):
    from unpact_mech.model.loading import Subject

    class Other(Subject):  # a real subject whose vocabulary fingerprint differs
        def tokenizer_fingerprint(self) -> str:
            return "different"

    return Other("other", tiny_llama.backend, tiny_llama.tokenizer, tiny_llama.source)
