import pytest
import torch

from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import chunk_by_tokens, greedy_ids, score_probes


def _check_batched_equals_unbatched(subject, tps):
    batched = score_probes(subject, tps, batch_tokens=10_000)
    for tp, b in zip(tps, batched):
        single = score_probes(subject, [tp])[0]
        assert abs(b.lp - single.lp) < 1e-5  # LP batched == unbatched (the contract)
        assert torch.allclose(b.logprobs, single.logprobs, atol=1e-4)  # per token: float32 batch noise
        assert torch.equal(b.top1, single.top1)
        # independent: plain log_softmax on the unpadded sequence
        with torch.no_grad():
            logits = subject.bridge(torch.tensor([tp.ids]))[0]
        lp = torch.log_softmax(logits.double(), -1)[tp.prompt_len - 1 : -1].gather(1, torch.tensor(tp.answer_ids)[:, None])
        assert abs(b.lp - float(lp.mean())) < 1e-5
        assert torch.allclose(b.logprobs, lp[:, 0].double(), atol=1e-4)


def test_batched_equals_unbatched_tiny(tiny_llama, tiny_probes):
    _check_batched_equals_unbatched(tiny_llama, tokenize_probes(tiny_llama, tiny_probes, "plain"))


@pytest.mark.slow
def test_batched_equals_unbatched_smollm2(smol, smol_probes):
    _check_batched_equals_unbatched(smol, tokenize_probes(smol, smol_probes[:8]))


def test_chunking_respects_budget():
    lengths = [5, 30, 12, 30, 7, 1]
    chunks = chunk_by_tokens(lengths, 60)
    assert sorted(i for c in chunks for i in c) == list(range(6))
    for c in chunks:
        assert len(c) == 1 or len(c) * max(lengths[i] for i in c) <= 60


def _hf_greedy(subject, prompt_ids, n):
    hf = subject.load_hf_model()
    out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False,
                      eos_token_id=subject.tokenizer.eos_token_id, pad_token_id=subject.tokenizer.pad_token_id)
    new = out[0, len(prompt_ids) :].tolist()
    eos = subject.tokenizer.eos_token_id
    return new[: new.index(eos)] if eos in new else new


def test_greedy_equals_hf_tiny(tiny_llama, tiny_probes):
    for tp in tokenize_probes(tiny_llama, tiny_probes, "plain"):
        assert greedy_ids(tiny_llama, tp.prompt_ids, 8) == _hf_greedy(tiny_llama, list(tp.prompt_ids), 8)


@pytest.mark.slow
def test_greedy_equals_hf_smollm2(smol, smol_probes):
    for tp in tokenize_probes(smol, smol_probes[:3]):
        ours = greedy_ids(smol, tp.prompt_ids, 16)
        assert ours == _hf_greedy(smol, list(tp.prompt_ids), 16)
        assert len(ours) > 0


def test_memo_reuses_unhooked_results(tiny_llama, tiny_probes, monkeypatch):
    """A memoizing subject returns the same scores, leave-one-out results and decompositions without a forward."""
    from unpact_mech import scoring
    from unpact_mech.attribution import dla as dla_mod
    from unpact_mech.attribution.loo import loo_contributions

    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    fresh = score_probes(tiny_llama, tps)
    fresh_loo = loo_contributions(tiny_llama, tps)
    fresh_d = dla_mod.decompose(tiny_llama, tps[0])
    tiny_llama.memoize()
    try:
        score_probes(tiny_llama, tps[:2])
        first = score_probes(tiny_llama, tps)  # two from the memo, two computed
        loo_contributions(tiny_llama, tps)
        dla_mod.decompose(tiny_llama, tps[0])
        dla_mod.logit_lens(tiny_llama, tps[0])

        def boom(*a, **k):
            raise AssertionError("forward ran although the result is memoized")

        monkeypatch.setattr(scoring, "forward_logits", boom)
        monkeypatch.setattr(dla_mod, "run_cache", boom)
        monkeypatch.setattr(tiny_llama.backend, "kv", boom)
        monkeypatch.setattr(tiny_llama.backend, "forward", boom)
        again = score_probes(tiny_llama, tps)
        loo = loo_contributions(tiny_llama, tps)
        d = dla_mod.decompose(tiny_llama, tps[0])
        dla_mod.logit_lens(tiny_llama, tps[0])
    finally:
        tiny_llama.memoize(False)
    for a, b, c in zip(fresh, first, again):
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5) and torch.equal(b.logprobs, c.logprobs)
    for a, b in zip(fresh_loo, loo):
        assert torch.allclose(a.contributions, b.contributions, atol=1e-9) and a.tprobe is b.tprobe
    assert torch.equal(fresh_d.heads, d.heads)


def test_memo_is_bypassed_while_hooks_are_attached(tiny_llama, tiny_probes):
    """Hooks attached with ``applied`` (as patching does) must not be answered from the memo."""
    from unpact_mech.attribution import dla as dla_mod
    from unpact_mech.attribution.loo import loo_contributions
    from unpact_mech.hooks import applied, scale_embedding

    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    pos = list(tps[0].attributable[:2])
    with applied(tiny_llama, scale_embedding(pos, 8.0)):
        hooked = score_probes(tiny_llama, tps[:1])[0].lp
        hooked_loo = loo_contributions(tiny_llama, tps[:1], prefix_cache=False)[0].contributions
        hooked_heads = dla_mod.decompose(tiny_llama, tps[0]).heads
    tiny_llama.memoize()
    try:
        plain = score_probes(tiny_llama, tps[:1])[0].lp
        plain_loo = loo_contributions(tiny_llama, tps[:1])[0].contributions
        plain_heads = dla_mod.decompose(tiny_llama, tps[0]).heads
        with applied(tiny_llama, scale_embedding(pos, 8.0)):
            assert score_probes(tiny_llama, tps[:1])[0].lp == pytest.approx(hooked, abs=1e-6)
            assert torch.allclose(loo_contributions(tiny_llama, tps[:1], prefix_cache=False)[0].contributions,
                                  hooked_loo, atol=1e-6)
            assert torch.allclose(dla_mod.decompose(tiny_llama, tps[0]).heads, hooked_heads, atol=1e-6)
    finally:
        tiny_llama.memoize(False)
    assert abs(plain - hooked) > 1e-4 and not torch.allclose(plain_loo, hooked_loo, atol=1e-4)
    assert not torch.allclose(plain_heads, hooked_heads, atol=1e-4)
