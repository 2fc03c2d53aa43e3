import pytest
import torch

from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import chunk_by_tokens, greedy_batch, score_probes


def greedy_ids(subject, prompt_ids, max_new_tokens, exact=False):
    """Greedy continuation of one prompt through the backend, stopping at EOS (KV cache, or the exact
    recompute loop)."""
    eos = [i for i in (subject.tokenizer.eos_token_id,) if i is not None]
    return greedy_batch(subject, [prompt_ids], max_new_tokens, (), eos, exact=exact)[0]


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
        hf = _hf_greedy(tiny_llama, list(tp.prompt_ids), 8)
        assert greedy_ids(tiny_llama, tp.prompt_ids, 8) == hf
        assert greedy_ids(tiny_llama, tp.prompt_ids, 8, exact=True) == hf


@pytest.mark.slow
def test_greedy_equals_hf_smollm2(smol, smol_probes):
    for tp in tokenize_probes(smol, smol_probes[:3]):
        ours = greedy_ids(smol, tp.prompt_ids, 16)
        assert ours == _hf_greedy(smol, list(tp.prompt_ids), 16)
        assert ours == greedy_ids(smol, tp.prompt_ids, 16, exact=True)
        assert len(ours) > 0


def _check_generation_equals_hf(subject, tps):
    """generation_table's batched greedy answers (stop tokens, per-row budgets) == HF generate, one prompt at a
    time with the same stop tokens and budget, decoded the same way."""
    from unpact_mech.evals.criteria import generation_table
    from unpact_mech.scoring import GEN_EXTRA_TOKENS, stop_token_ids

    hf = subject.load_hf_model()
    stops = stop_token_ids(subject.tokenizer)
    table = generation_table(subject, tps)
    for tp, text in zip(tps, table.generated):
        n = tp.n_answer + GEN_EXTRA_TOKENS
        out = hf.generate(torch.tensor([tp.prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=stops,
                          pad_token_id=subject.tokenizer.pad_token_id or stops[0])[0, tp.prompt_len :].tolist()
        cut = min([out.index(s) for s in stops if s in out], default=len(out))
        assert text == subject.tokenizer.decode(out[:cut], skip_special_tokens=True).strip()
    return table


def test_batched_generation_equals_hf_tiny(tiny_llama, tiny_probes):
    _check_generation_equals_hf(tiny_llama, tokenize_probes(tiny_llama, tiny_probes, "plain"))


@pytest.mark.slow
def test_batched_generation_equals_hf_smollm2(smol, smol_probes):
    table = _check_generation_equals_hf(smol, tokenize_probes(smol, smol_probes[:6]))
    assert table.gen_correct.sum() >= 3  # SmolLM2 answers most of these built-in facts


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
        monkeypatch.setattr(tiny_llama.backend, "hf_view", boom)
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


def _check_kv_generation_equals_hooked_loop(subject, tps, factor):
    """The KV-cache generation with declared emphasis == the exact loop with the route's hooks (every row
    recomputed in full each step), per route, with rows of different lengths and a row without positions."""
    from unpact_mech.hooks import Emphasis
    from unpact_mech.scoring import (
        GEN_EXTRA_TOKENS,
        emphasis_hooks,
        generate_answers,
        greedy_batch,
        stop_token_ids,
    )

    pos = [list(tp.attributable[:2]) for tp in tps]
    pos[-1] = []
    limits = [tp.n_answer + GEN_EXTRA_TOKENS for tp in tps]
    stops = stop_token_ids(subject.tokenizer)
    plain = generate_answers(subject, tps)
    assert plain == greedy_batch(subject, [tp.prompt_ids for tp in tps], limits, (), stops, exact=True)
    changed = 0
    for route in ("embed", "attention"):
        fast = generate_answers(subject, tps, emphasis=Emphasis.of(route, pos, factor))
        exact = greedy_batch(subject, [tp.prompt_ids for tp in tps], limits,
                             lambda chunk, route=route: emphasis_hooks(subject, Emphasis.of(route, [pos[i] for i in chunk], factor)), stops)
        assert fast == exact, route
        changed += sum(a != b for a, b in zip(fast, plain))
    return changed


def test_kv_generation_with_emphasis_equals_hooked_loop_tiny(tiny_llama, tiny_probes):
    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    assert _check_kv_generation_equals_hooked_loop(tiny_llama, tps, 8.0) > 0  # the emphasis changes answers


def test_kv_generation_with_emphasis_equals_hooked_loop_gemma2(tiny_gemma2_dir, tiny_probes):
    """Gemma-2: attention and final-logit soft-capping; probes outgrowing the sliding window (16) take the exact
    loop, shorter ones the KV cache, and both equal the hooked loop."""
    from unpact_mech.model.loading import load_model

    gemma = load_model(str(tiny_gemma2_dir))
    tps = tokenize_probes(gemma, tiny_probes, "plain")
    assert max(len(tp.ids) for tp in tps) + 8 > 16
    _check_kv_generation_equals_hooked_loop(gemma, tps, 8.0)
    gemma.backend.config.sliding_window = 4096  # pretend the window is wide: the KV path with soft-capping
    try:
        _check_kv_generation_equals_hooked_loop(gemma, tps, 8.0)
    finally:
        gemma.backend.config.sliding_window = 16


@pytest.mark.slow
def test_kv_generation_with_emphasis_equals_hooked_loop_smollm2(smol, smol_probes):
    tps = tokenize_probes(smol, smol_probes[:5])
    _check_kv_generation_equals_hooked_loop(smol, tps, 4.0)


def _check_kv_scoring_equals_hooks(subject, tps, factor):
    """Teacher-forced scores with a declared emphasis (KV cache, shared chat prefix run once) == the exact
    right-padded forward with the route's hooks, per route, including a row without positions."""
    from unpact_mech.hooks import Emphasis
    from unpact_mech.scoring import emphasis_hooks

    pos = [list(tp.attributable[1:3]) for tp in tps]
    pos[0] = []
    for route in ("embed", "attention"):
        fast = score_probes(subject, tps, emphasis=Emphasis.of(route, pos, factor))
        exact = score_probes(subject, tps, lambda chunk, route=route: emphasis_hooks(
            subject, Emphasis.of(route, [pos[i] for i in chunk], factor)))
        for a, b in zip(fast, exact):
            assert torch.allclose(a.logprobs.double(), b.logprobs.double(), atol=2e-5), route
            assert torch.equal(a.top1, b.top1)
    plain = score_probes(subject, tps)
    assert any(abs(a.lp - b.lp) > 1e-3 for a, b in zip(plain, fast))  # the emphasis does something


def test_kv_scoring_with_emphasis_equals_hooks_gemma2(tiny_gemma2_dir, tiny_probes):
    from unpact_mech.model.loading import load_model

    gemma = load_model(str(tiny_gemma2_dir))
    gemma.backend.config.sliding_window = 4096  # longer than the probes: the KV path, with soft-capping
    try:
        _check_kv_scoring_equals_hooks(gemma, tokenize_probes(gemma, tiny_probes, "plain"), 4.0)
    finally:
        gemma.backend.config.sliding_window = 16


@pytest.mark.slow
def test_kv_scoring_with_emphasis_equals_hooks_smollm2(smol, smol_probes):
    _check_kv_scoring_equals_hooks(smol, tokenize_probes(smol, smol_probes[:6]), 4.0)


def test_unhooked_greedy_takes_the_kv_cache(tiny_llama, tiny_probes, monkeypatch):
    """Without hooks, greedy_batch never re-runs a full sequence (the O(T^2) loop); its answers over rows of
    different lengths and budgets equal the exact recompute loop's, which does; a hook forces the exact loop."""
    import unpact_mech.scoring as scoring

    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    prompts = [tp.prompt_ids for tp in tps]
    limits = [3 + 7 * (i % 3) for i in range(len(tps))]
    exact = greedy_batch(tiny_llama, prompts, limits, (), [], exact=True)
    assert [len(e) for e in exact] == limits  # no stop tokens: every row runs to its own budget
    calls = []
    real = scoring.forward_logits
    monkeypatch.setattr(scoring, "forward_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert greedy_batch(tiny_llama, prompts, limits, (), [], batch_tokens=40) == exact
    assert calls == []
    hook = [("blocks.0.hook_resid_pre", lambda x, hook: x)]
    assert greedy_batch(tiny_llama, prompts[:1], 2, hook, [])[0] == exact[0][:2]
    assert len(calls) == 2
