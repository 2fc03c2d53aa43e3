import pytest
import torch

from unpact_mech.attribution import attribute
from unpact_mech.attribution.loo import baseline_token_id, loo_contributions
from unpact_mech.probes import tokenize_probes
from unpact_mech.tables import COLUMNS


def _naive_lp(subject, ids, start):
    with torch.no_grad():
        logits = subject.bridge(torch.tensor([ids]))[0]
    lp = torch.log_softmax(logits.double(), -1)[start - 1 : -1].gather(1, torch.tensor(ids[start:])[:, None])
    return float(lp.mean())


def _check_against_naive(subject, tps, batch_tokens, prefix_cache=True):
    results = loo_contributions(subject, tps, batch_tokens=batch_tokens, prefix_cache=prefix_cache)
    for r in results:
        tp = r.tprobe
        full = _naive_lp(subject, list(tp.ids), tp.prompt_len)
        assert abs(r.lp - full) < 1e-5
        for i, c in zip(tp.attributable, r.contributions.tolist()):
            deleted = list(tp.ids[:i] + tp.ids[i + 1 :])
            assert abs(c - (full - _naive_lp(subject, deleted, tp.prompt_len - 1))) < 1e-5


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_loo_equals_naive_loop_tiny(tiny_llama, tiny_probes, prefix_cache):
    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    _check_against_naive(tiny_llama, tps, batch_tokens=64, prefix_cache=prefix_cache)


@pytest.mark.slow
def test_loo_equals_naive_loop_smollm2(smol, smol_probes):
    tps = tokenize_probes(smol, smol_probes[:3])
    _check_against_naive(smol, tps, batch_tokens=2048)
    _check_against_naive(smol, tps[:1], batch_tokens=2048, prefix_cache=False)


class _CaptumTokenizer:
    """Hands captum our exact prompt ids, so both sides see the same tokens."""

    def __init__(self, tok, ids):
        self.tok, self.ids = tok, ids

    def encode(self, text, return_tensors=None):
        return torch.tensor([self.ids])

    def convert_ids_to_tokens(self, ids):
        return self.tok.convert_ids_to_tokens(ids)

    def __call__(self, text, **kw):
        return self.tok(text, **kw)

    def decode(self, ids, **kw):
        return self.tok.decode(ids, **kw)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_loo_replace_equals_captum_feature_ablation(arch, request, tiny_probes):
    captum = pytest.importorskip("captum.attr")
    subject = request.getfixturevalue(arch)
    tok = subject.tokenizer
    hf = subject.load_hf_model()  # captum runs the plain HF model: an independent forward path
    base_id = baseline_token_id(tok)
    skip = [tok.unk_token_id, tok.convert_tokens_to_ids(":")]
    for tp in tokenize_probes(subject, tiny_probes, "plain"):
        inp = captum.TextTokenInput("", _CaptumTokenizer(tok, list(tp.prompt_ids)), baselines=base_id,
                                    skip_tokens=skip)
        assert torch.nonzero(inp.itp_mask[0]).flatten().tolist() == list(tp.attributable)
        llm = captum.LLMAttribution(captum.FeatureAblation(hf), _CaptumTokenizer(tok, list(tp.prompt_ids)))
        res = llm.attribute(inp, target=torch.tensor(tp.answer_ids), forward_in_tokens=False)
        ours = loo_contributions(subject, [tp], variant="replace")[0].contributions
        assert torch.allclose(ours * tp.n_answer, res.seq_attr.double(), atol=1e-4), (ours, res.seq_attr)
        assert ours.abs().max() > 1e-3  # the comparison is not between zeros


def test_table_shape_and_registry(tiny_llama, tiny_probes):
    df = attribute(tiny_llama, tiny_probes[:2], method="loo", fmt="plain")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert set(df.method) == {"loo"} and df.layer.isna().all()
    assert len(df) == sum(len(tp.attributable) for tp in tokenize_probes(tiny_llama, tiny_probes[:2], "plain"))
    with pytest.raises(KeyError, match="unknown attribution method 'nope'"):
        attribute(tiny_llama, tiny_probes, method="nope")
