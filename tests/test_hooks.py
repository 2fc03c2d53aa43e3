import pytest
import torch

from unpact_mech.analysis.emphasis import emphasize, keyword_strings, prompt_emphasis, sweep
from unpact_mech.core.stats import wilson
from unpact_mech.evals.metrics import destructive_rate, generated_correct, recovery_rate, rouge_l_recall
from unpact_mech.hooks import (
    ablate_heads,
    active_hook_count,
    applied,
    patch_from_cache,
    scale_embedding,
    steer_attention,
)
from unpact_mech.model.loading import load_model, save_checkpoint
from unpact_mech.patching import patch_heads, patch_positions, restoration
from unpact_mech.probes import tokenize_probes
from unpact_mech.scoring import score_probes


@pytest.fixture(scope="module")
def tps(tiny_llama, tiny_probes):
    return tokenize_probes(tiny_llama, tiny_probes, "plain")


@pytest.mark.parametrize("route", ["embed", "attention"])
def test_factor_one_changes_nothing(tiny_llama, tps, route):
    tp = tps[0]
    plain = score_probes(tiny_llama, [tp])[0].lp
    res = emphasize(tiny_llama, tp, 1.0, positions=list(tp.attributable[:3]), mode=route)
    assert abs(res.lp - plain) < 1e-6
    res8 = emphasize(tiny_llama, tp, 8.0, positions=list(tp.attributable[:3]), mode=route)
    assert abs(res8.lp - plain) > 1e-4  # and a real factor does change it
    assert active_hook_count(tiny_llama.bridge) == 0


def test_hooks_removed_after_error(tiny_llama, tps):
    ids = torch.tensor([tps[0].ids])
    with pytest.raises(RuntimeError, match="boom"):
        with applied(tiny_llama, scale_embedding([1], 3.0)):
            assert active_hook_count(tiny_llama.bridge) == 1
            raise RuntimeError("boom")
    assert active_hook_count(tiny_llama.bridge) == 0
    with torch.no_grad():
        assert torch.equal(tiny_llama.bridge(ids), tiny_llama.bridge(ids))


def test_attention_steering_moves_pattern_to_keys(tiny_llama, tps):
    tp = tps[0]
    ids = torch.tensor([tp.ids])
    keys = [tp.attributable[2]]
    with torch.no_grad():
        _, c0 = tiny_llama.bridge.run_with_cache(ids)
        with applied(tiny_llama, steer_attention(keys, 5.0, tiny_llama.cfg.n_layers, layers=[1], heads=[0, 3])):
            _, c1 = tiny_llama.bridge.run_with_cache(ids)
    p0, p1 = c0["blocks.1.attn.hook_pattern"][0], c1["blocks.1.attn.hook_pattern"][0]
    q = len(tp.ids) - 1
    assert p1[0, q, keys[0]] > p0[0, q, keys[0]] and p1[3, q, keys[0]] > p0[3, q, keys[0]]
    assert torch.allclose(p1[1], p0[1]) and torch.allclose(p1.sum(-1), torch.ones_like(p1.sum(-1)))
    # exact: the steered weight is the softmax with the key's weight multiplied by the factor
    w = p0[0, q].clone()
    w[keys[0]] *= 5.0
    assert torch.allclose(p1[0, q], w / w.sum(), atol=1e-6)


def test_ablation_and_patch_self(tiny_llama, tps):
    ids = torch.tensor([tps[0].ids])
    with torch.no_grad():
        logits, cache = tiny_llama.bridge.run_with_cache(ids)
        with applied(tiny_llama, patch_from_cache(cache, "blocks.1.hook_resid_pre")):
            assert torch.allclose(tiny_llama.bridge(ids), logits, atol=1e-6)
        with applied(tiny_llama, ablate_heads(0, [0, 1, 2, 3, 4, 5])):
            _, c2 = tiny_llama.bridge.run_with_cache(ids)
    assert c2["blocks.0.attn.hook_z"].abs().max() == 0
    with pytest.raises(KeyError, match="not in the source cache"):
        patch_from_cache({}, "blocks.0.hook_resid_pre")


@pytest.fixture(scope="module")
def embed_perturbed(tiny_llama, tmp_path_factory):
    """A copy that differs from the base only in its input embedding (the unembedding is untied)."""
    hf = tiny_llama.load_hf_model()
    assert not hf.config.tie_word_embeddings
    with torch.no_grad():
        hf.model.embed_tokens.weight.mul_(-1.5).add_(0.3)
    out = save_checkpoint(hf, tiny_llama.tokenizer, tmp_path_factory.mktemp("emb") / "m", {"method": "embed"})
    return load_model(str(out))


def test_patching_layer0_resid_reproduces_base(tiny_llama, embed_perturbed, tps):
    tp = tps[0]
    ids = torch.tensor([tp.ids])
    with torch.no_grad():
        base_logits, cache = tiny_llama.bridge.run_with_cache(ids)
        with applied(embed_perturbed, patch_from_cache(cache, "blocks.0.hook_resid_pre")):
            patched = embed_perturbed.bridge(ids)
        assert not torch.allclose(embed_perturbed.bridge(ids), base_logits, atol=1e-3)
    assert torch.allclose(patched, base_logits, atol=1e-5)
    assert abs(restoration(tiny_llama, embed_perturbed, tp, patch_from_cache(cache, "blocks.0.hook_resid_pre")) - 1) < 1e-4
    assert abs(restoration(tiny_llama, embed_perturbed, tp, [])) < 1e-6  # no patch: 0 up to float noise
    df = patch_positions(tiny_llama, embed_perturbed, tp, kinds=["resid_pre"], layers=[0, 2])
    assert len(df) == 2 * (len(tp.ids) - 1 - min(tp.attributable))
    hd = patch_heads(tiny_llama, embed_perturbed, tp, layers=[0])
    assert len(hd) == tiny_llama.cfg.n_heads and hd.restoration.notna().all()
    # memoizing subjects (as in the demo) give the same patching results: attached hooks bypass the memo
    tiny_llama.memoize(), embed_perturbed.memoize()
    try:
        assert abs(restoration(tiny_llama, embed_perturbed, tp, patch_from_cache(cache, "blocks.0.hook_resid_pre")) - 1) < 1e-4
        dm = patch_positions(tiny_llama, embed_perturbed, tp, kinds=["resid_pre"], layers=[0, 2])
    finally:
        tiny_llama.memoize(False), embed_perturbed.memoize(False)
    assert (dm.restoration - df.restoration).abs().max() < 1e-5 and df.restoration.abs().max() > 0.1


def test_sweep_and_prompt_edits(tiny_llama, tps):
    df = sweep(tiny_llama, tps[:2], [list(tps[0].attributable[:2]), []], factors=(1.0, 4.0))
    assert len(df) == 2 * 2 * 2
    assert df[df.probe_id == "t1"].lp.nunique() == 1  # no KeyTokens: nothing to emphasise
    p = tps[0].probe
    kws = keyword_strings(tps[0], tps[0].attributable[3:6])
    assert kws == ["capital", "of", "france"]
    for style in ("repeat", "instruct"):
        edited = prompt_emphasis(p, kws, style)
        assert p.prompt in edited.prompt and edited.answer == p.answer
    marked = prompt_emphasis(p, kws, "mark")
    assert marked.prompt.replace("**", "") == p.prompt and marked.prompt.count("**") == 6
    with pytest.raises(ValueError, match="unknown prompt emphasis style"):
        prompt_emphasis(p, kws, "shout")


def test_rates_on_hand_made_cases():
    r = recovery_rate([True, True, True, False, True], [False, False, True, False, False], [True, False, True, True, True])
    assert (r.k, r.n) == (2, 3) and abs(r.rate - 2 / 3) < 1e-12 and 0 < r.low < r.rate < r.high < 1
    d = destructive_rate([True, True, False, True], [True, False, False, False])
    assert (d.k, d.n) == (2, 3)
    empty = recovery_rate([False, True], [False, True], [True, True])
    assert not empty.defined and str(empty) == "not defined (no eligible probes)"
    assert not destructive_rate([], []).defined
    w = wilson(0, 10)
    assert w.low == 0 and 0.2 < w.high < 0.35
    with pytest.raises(ValueError, match="differ in length"):
        destructive_rate([True], [True, False])


def _lcs(a: list[str], b: list[str]) -> int:
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


@pytest.mark.parametrize("pred, ref", [("Paris is the capital", "The capital of France is Paris"),
                                       ("the cat sat on a mat", "a cat sat on the mat"), ("no overlap", "x y z")])
def test_rouge_l_recall_is_lcs_over_reference_length(pred, ref):
    p, r = pred.lower().split(), ref.lower().split()
    assert rouge_l_recall(pred, ref) == pytest.approx(_lcs(p, r) / len(r))


def test_generated_correct_threshold_and_fact_span():
    from unpact_mech.evals.metrics import GEN_THRESHOLD
    from unpact_mech.probes import Probe

    fr = Probe("fr", "What is the capital of France?", "The capital of France is Paris.", fact="Paris")
    assert generated_correct("The capital of France is Paris.", fr)
    assert generated_correct("paris, of course", fr)  # the fact span, any case
    assert not generated_correct("The capital of France is Lyon.", fr)  # echoing the question is not enough
    assert not generated_correct("Parisian food is good.", fr)  # whole words only
    hamlet = Probe("h", "Who wrote Hamlet?", "Hamlet was written by William Shakespeare.", fact="William Shakespeare")
    assert GEN_THRESHOLD == 0.5 and generated_correct("Shakespeare wrote it.", hamlet)  # recall 1/2 >= 0.5
    assert generated_correct("William Blake wrote it.", hamlet)  # recall 1/2 as well: the threshold's known cost
    assert not generated_correct("I do not know.", hamlet)
    nofact = Probe("n", "Say hi", "hello there friend")
    assert generated_correct("hello friend", nofact) and not generated_correct("hello", nofact)  # 2/3 vs 1/3


@pytest.mark.parametrize("route", ["embed", "attention"])
def test_batched_sweep_equals_per_probe_emphasis(tiny_llama, tps, route):
    """Per-row hooks in one padded batch == emphasising each probe alone (the naive loop)."""
    positions = [list(tp.attributable[1:3]) for tp in tps]
    positions[2] = []  # a probe without KeyTokens stays the plain model
    df = sweep(tiny_llama, tps, positions, factors=(1.0, 3.0, 8.0), modes=[route])
    for tp, pos in zip(tps, positions):
        for f in (1.0, 3.0, 8.0):
            got = df[(df.probe_id == tp.probe.id) & (df.factor == f)].iloc[0]
            ref = emphasize(tiny_llama, tp, f, positions=pos, mode=route) if pos else None
            ref_lp = ref.lp if ref else score_probes(tiny_llama, [tp])[0].lp
            assert abs(got.lp - ref_lp) < 1e-5, (tp.probe.id, f, got.lp, ref_lp)
            if ref:
                assert bool(got.fact_top1) == ref.fact_top1


def test_per_row_positions_need_one_list_per_row(tiny_llama, tps):
    ids = torch.tensor([tps[0].ids, tps[0].ids])
    with pytest.raises(ValueError, match="3 position lists for a batch of 2 rows"):
        with applied(tiny_llama, scale_embedding([[1], [2], [3]], 2.0)):
            tiny_llama.bridge(ids)
    with pytest.raises(ValueError, match="single factor"):
        scale_embedding([[1], [2]], [2.0, 3.0])
    # per-row steering with the same keys in every row == the flat form
    a = tiny_llama.bridge.run_with_hooks(ids, fwd_hooks=steer_attention([[1, 2], [1, 2]], 4.0, tiny_llama.cfg.n_layers))
    b = tiny_llama.bridge.run_with_hooks(ids, fwd_hooks=steer_attention([1, 2], 4.0, tiny_llama.cfg.n_layers))
    assert torch.allclose(a, b, atol=1e-6)


def test_embedding_scaling_is_scaled_input_embeddings_in_plain_transformers(tiny_llama, tps):
    """Both forms of ``scale_embedding`` (one position list, and one per batch row) against plain transformers
    fed ``embed(ids) * s``, with s the factor at the given positions and 1 elsewhere, written out here."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama.source).eval()
    tp = tps[0]
    ids = torch.tensor([tp.ids, tp.ids])
    rows, factor = [[1, 3], [2]], 5.0
    with torch.no_grad():
        emb = hf.get_input_embeddings()(ids)
        s = torch.ones(2, ids.shape[1], 1)
        for r, ps in enumerate(rows):
            s[r, ps] = factor
        want = hf(inputs_embeds=emb * s).logits
        got = tiny_llama.bridge.run_with_hooks(ids, fwd_hooks=scale_embedding(rows, factor))
        assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got[0], got[1], atol=1e-3)
        s[1] = 1.0
        s[1, [1, 3]] = torch.tensor([2.0, 7.0])[:, None]
        want = hf(inputs_embeds=emb * s).logits[1]
        got = tiny_llama.bridge.run_with_hooks(ids[1:], fwd_hooks=scale_embedding([1, 3], [2.0, 7.0]))[0]
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.slow  # a naive emphasis loop over every probe, factor and draw
def test_recovery_rates_equal_naive_emphasis_loop(tiny_llama, tiny_probes, tmp_path):
    """recovery(): its rates on eligible probes == emphasising each probe alone and counting by hand."""
    from unpact_mech.findings import recovery
    from unpact_mech.scoring import probe_table
    from unpact_mech.unlearning import unlearn

    # teach the tiny model the facts (Task Vector with a = -1 is plain fine-tuning), then unlearn them with GA
    taught = load_model(str(unlearn(tiny_llama, "task_vector", tiny_probes, [], tmp_path / "taught", steps=40,
                                    lr=3e-3, tv_scale=-1.0, fmt="plain", progress=False)))
    forget = tiny_probes
    unl = load_model(str(unlearn(taught, "ga", forget, [], tmp_path / "unl", steps=3, lr=3e-3, fmt="plain",
                                 progress=False)))
    factors = (1.0, 4.0, 16.0)
    res = recovery(taught, unl, forget, factors, prompt_styles=("repeat",), fmt="plain", n_draws=2)
    res_all = recovery(taught, unl, forget, factors, prompt_styles=("repeat",), fmt="plain", eligible_only=False,
                       n_draws=2)
    rates = res.rates
    pd_cols = ["criterion", "condition", "route", "scope", "factor", "k", "n"]
    assert rates[pd_cols].astype(str).equals(res_all.rates[pd_cols].astype(str))
    tps = tokenize_probes(taught, forget, "plain")
    from unpact_mech.analysis.emphasis import keytoken_positions
    from unpact_mech.evals.metrics import generated_correct
    from unpact_mech.findings import control_positions
    from unpact_mech.hooks import Emphasis
    from unpact_mech.scoring import emphasis_hooks, greedy_batch

    def greedy_answer(model, tp, n, hooks):  # one prompt, stopping at EOS
        eos = [i for i in (model.tokenizer.eos_token_id,) if i is not None]
        return model.tokenizer.decode(greedy_batch(model, [tp.prompt_ids], n, hooks, eos)[0])

    def gen_ok(model, tp, hooks=()):
        return generated_correct(greedy_answer(model, tp, tp.n_answer + 8, hooks), tp.probe)

    for crit in ("teacher_forced", "generation"):
        if crit == "teacher_forced":
            b, u = probe_table(taught, tps).fact_top1, probe_table(unl, tps).fact_top1
        else:  # one probe at a time through greedy_answer (stops at EOS, as the tiny model has no chat turn)
            b, u = [gen_ok(taught, tp) for tp in tps], [gen_ok(unl, tp) for tp in tps]
        eligible = [tp for tp, x, y in zip(tps, b, u) if x and not y]
        if crit == "teacher_forced":
            assert eligible, "the fixture must produce probes the taught model knows and the unlearned one does not"
        pos = keytoken_positions(taught, eligible)
        for route in ("embed", "attention"):
            for cond in ("keytokens", "random", "function_words"):
                shares = []
                for tp, p in zip(eligible, pos):
                    draws = control_positions(tp, p, 2)[cond]
                    hit = []
                    for q in draws:
                        if crit == "teacher_forced":
                            hit.append(any(emphasize(unl, tp, f, positions=q, mode=route).fact_top1
                                           for f in factors if f > 1) if q else False)
                        else:
                            hit.append(any(gen_ok(unl, tp, emphasis_hooks(unl, Emphasis.of(route, [q], f))) for f in factors if f > 1)
                                       if q else False)
                    shares.append(sum(hit) / len(hit))
                best = rates[(rates.criterion == crit) & (rates.route == route) & (rates.scope == "best")
                             & (rates.condition == cond)].iloc[0]
                assert best.n == len(eligible) and best.k == pytest.approx(sum(shares)), (crit, route, cond)
                if cond == "random":
                    ctrl = res.control[(res.control.criterion == crit) & (res.control.route == route)
                                       & (res.control.scope == "best")].iloc[0]
                    key = rates[(rates.criterion == crit) & (rates.route == route) & (rates.scope == "best")
                                & (rates.condition == "keytokens")].iloc[0]
                    if eligible:
                        assert ctrl.vs_random_diff == pytest.approx((key.k - sum(shares)) / len(eligible))


def test_sign_flip_and_bootstrap_against_written_out_versions():
    import itertools
    import random

    from unpact_mech.core.stats import bootstrap_mean, paired_difference, sign_flip_p

    d = [1, 1, 0.5, 0, -1 / 3, 1, 1]
    nz = [x for x in d if x]
    flips = [sum(s * x for s, x in zip(signs, nz)) for signs in itertools.product([1, -1], repeat=len(nz))]
    exact = sum(abs(f) >= abs(sum(nz)) - 1e-12 for f in flips) / len(flips)
    assert sign_flip_p(d) == pytest.approx(exact)
    assert sign_flip_p([0, 0]) == 1.0 and sign_flip_p([1] * 10) == pytest.approx(2 / 2**10)
    # bootstrap: the mean is exact; the interval brackets it and matches a written-out resampling loosely
    vals = [0, 1, 1, 0, 1, 0.5, 1, 1]
    m, lo, hi = bootstrap_mean(vals)
    rng = random.Random(1)
    means = sorted(sum(rng.choice(vals) for _ in vals) / len(vals) for _ in range(4000))
    assert m == pytest.approx(sum(vals) / len(vals)) and lo <= m <= hi
    assert abs(lo - means[100]) < 0.07 and abs(hi - means[3899]) < 0.07
    pdiff = paired_difference([1, 1, 0, 1], [0.5, 0, 0, 1])
    assert pdiff["n"] == 4 and pdiff["diff"] == pytest.approx(1.5 / 4) and pdiff["p"] == pytest.approx(0.5)
