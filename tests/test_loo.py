import pytest
import torch

from unpact_mech.attribution import attribute
from unpact_mech.attribution.loo import baseline_token_id, loo_contributions
from unpact_mech.attribution.table import COLUMNS
from unpact_mech.probes import tokenize_probes


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


LONG_PROMPT = ("what is the capital of france ? paris was the largest city in the country by the river and "
               "japan is a country , tokyo is a city on a river . who wrote hamlet ? shakespeare wrote it . "
               "what is the red planet ? mars is red and gold is au .")


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma2"])
def long_model(request, tmp_path_factory):
    from conftest import make_tiny

    from unpact_mech.model.loading import load_model

    return load_model(str(make_tiny(tmp_path_factory.mktemp(f"loo_{request.param}"), request.param)))


@pytest.mark.parametrize("query_chunk", [None, 7])
@pytest.mark.parametrize("variant", ["delete", "replace"])
def test_prefix_reuse_equals_naive_deletion_loop(long_model, variant, query_chunk, monkeypatch):
    """A prompt of 50+ tokens (longer than the tiny Gemma-2's sliding window of 16): deletion i reuses the
    original's cache before i; every contribution equals a full forward of the variant through the bridge, also
    with the rows' suffixes run 7 query positions at a time."""
    import unpact_mech.attribution.loo as loo_mod
    from unpact_mech.probes import Probe

    if query_chunk is not None:
        monkeypatch.setattr(loo_mod, "QUERY_CHUNK", query_chunk)
    tp = tokenize_probes(long_model, [Probe("long", LONG_PROMPT, "the capital of france is paris")], "plain")[0]
    assert len(tp.attributable) >= loo_mod.LONG_SPAN and len(tp.ids) > 16
    taken = []
    real = loo_mod._loo_prefix_reuse
    monkeypatch.setattr(loo_mod, "_loo_prefix_reuse", lambda *a, **k: taken.append(1) or real(*a, **k))
    r = loo_contributions(long_model, [tp], variant=variant, batch_tokens=400)[0]
    assert taken, "the prefix-reuse path was not taken"
    base_id = baseline_token_id(long_model.tokenizer) if variant == "replace" else None
    full = _naive_lp(long_model, list(tp.ids), tp.prompt_len)
    assert abs(r.lp - full) < 1e-5
    for i, c in zip(tp.attributable, r.contributions.tolist()):
        if variant == "delete":
            v, start = list(tp.ids[:i] + tp.ids[i + 1 :]), tp.prompt_len - 1
        else:
            v, start = list(tp.ids[:i]) + [base_id] + list(tp.ids[i + 1 :]), tp.prompt_len
        assert abs(c - (full - _naive_lp(long_model, v, start))) < 1e-5
    old = loo_contributions(long_model, [tp], variant=variant, prefix_reuse=False)[0]
    assert (old.contributions - r.contributions).abs().max() < 1e-5
    assert r.contributions.std() > 1e-3  # the deletions differ: not a comparison of constants


def test_prefix_reuse_holds_one_cache_copy_at_a_time(monkeypatch, tmp_path):
    """Memory of a long prompt's leave-one-out does not grow with its number of chunks: each chunk's copies of the
    original's cache are freed before the next chunk (a copy kept per chunk grew as the prompt's length squared,
    and a 5,046-token prompt filled 24 GB)."""
    import gc
    import weakref

    from conftest import make_tiny

    import unpact_mech.attribution.loo as loo_mod
    from unpact_mech.model.loading import load_model
    from unpact_mech.probes import Probe

    model = load_model(str(make_tiny(tmp_path, "llama")))
    tp = tokenize_probes(model, [Probe("long", LONG_PROMPT, "the capital of france is paris")], "plain")[0]
    live, peak, copies = [0], [0], []
    real = loo_mod.expand_cache

    def counted(cache, n):
        kv = real(cache, n)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        copies.append(1)
        weakref.finalize(kv, lambda: live.__setitem__(0, live[0] - 1))
        return kv

    monkeypatch.setattr(loo_mod, "expand_cache", counted)
    gc.disable()  # refcounting alone must free each copy (no cycle collector run between chunks)
    try:
        loo_contributions(model, [tp], batch_tokens=100)  # 100 // ~55 tokens: one row per chunk, a chunk per position
    finally:
        gc.enable()
    assert len(copies) >= loo_mod.LONG_SPAN and peak[0] == 1


@pytest.mark.slow
def test_prefix_reuse_attention_grows_linearly_with_the_prompt(monkeypatch, tmp_path):
    """Eager attention holds rows x heads x queries x keys scores per forward, the term that grows fastest with a
    prompt. In the prefix reuse the rows' suffixes run ``QUERY_CHUNK`` queries at a time, so at a fixed number of
    rows the largest forward's rows x queries x keys grows as the prompt (4x for 256 -> 1,024 tokens); one forward
    per suffix grew as its square (16x). Counted from the forwards' shapes on a tiny Llama with a 2,048 context."""
    from conftest import make_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    import unpact_mech.attribution.loo as loo_mod
    from unpact_mech.model.backends.hf import HFBackend
    from unpact_mech.model.loading import load_model
    from unpact_mech.probes import Probe

    tok = make_tokenizer(tmp_path)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048)
                     ).save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    scores: list[int] = []
    real = HFBackend.hidden

    def counted(self, ids, cache, position_ids=None):
        scores.append(ids.shape[0] * ids.shape[1] * (cache.get_seq_length() + ids.shape[1]))
        return real(self, ids, cache, position_ids)

    monkeypatch.setattr(HFBackend, "hidden", counted)
    words = LONG_PROMPT.split()
    peak = {}
    for n in (256, 1024):
        tp = tokenize_probes(model, [Probe("p", " ".join(words[i % len(words)] for i in range(n)), "paris")],
                             "plain")[0]
        scores.clear()
        r = loo_contributions(model, [tp], batch_tokens=8 * len(tp.ids))[0]  # 8 rows per forward at both lengths
        assert len(r.contributions) == len(tp.attributable) == n and torch.isfinite(r.contributions).all()
        peak[n] = max(scores)
    assert peak[1024] <= 4.1 * peak[256], peak
    assert loo_mod.QUERY_CHUNK == 256  # the bound above: at and past 256 tokens the queries per forward are capped
