"""Recovery routes: the RTN formula against a naive loop, and each route's flags against an independent
recomputation on tiny models (eligibility forced to every probe, since tiny random models know no facts)."""

import pytest
import torch

from unpact_mech.analysis import Analysis
from unpact_mech.errors import UnpactError
from unpact_mech.probes import tokenize_probes
from unpact_mech.routes import RouteContext, few_shot, newcombe, quantize_rtn_, recover
from unpact_mech.stats import wilson


def _naive_rtn(w, bits, group):
    out = w.clone()
    qmax = 2**bits - 1
    for r in range(w.shape[0]):
        for c0 in range(0, w.shape[1], group):
            g = [float(x) for x in w[r, c0 : c0 + group]]
            lo, hi = min(min(g), 0.0), max(max(g), 0.0)
            s = max((hi - lo) / qmax, 1e-12)
            z = round(-lo / s)
            for j, x in enumerate(g):
                q = min(max(round(x / s) + z, 0), qmax)
                out[r, c0 + j] = s * (q - z)
    return out


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_equals_naive_loop(bits):
    torch.manual_seed(0)
    w = torch.randn(5, 21, dtype=torch.float64)
    got = quantize_rtn_(w.clone(), bits, group_size=8)  # 21 columns: groups of 8, 8 and a partial 5
    assert torch.allclose(got, _naive_rtn(w, bits, 8), atol=1e-12)
    for c0 in (0, 8, 16):
        assert all(len(set(got[r, c0 : c0 + 8].tolist())) <= 2**bits for r in range(5))
    err = (got - w).abs().max()
    assert 0 < err < (w.abs().max() * 2 / (2**bits - 1))


def test_newcombe_interval():
    # Newcombe (1998), Stat. Med. 17:873, method 10, example 56/70 vs 48/80: 0.0524 to 0.3339
    d, lo, hi = newcombe(wilson(56, 70), wilson(48, 80))
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    a, b = wilson(7, 10), wilson(2, 10)
    d, lo, hi = newcombe(a, b)
    assert d == pytest.approx(0.5) and lo < d < hi and -1 <= lo and hi <= 1
    assert newcombe(b, a)[1] == pytest.approx(-hi) and newcombe(b, a)[2] == pytest.approx(-lo)


@pytest.fixture
def everything_eligible(monkeypatch):
    monkeypatch.setattr(RouteContext, "eligible", lambda self, crit: (self.forget, self.unknown))


def _top1(hf, tp):
    with torch.no_grad():
        logits = hf(torch.tensor([tp.ids])).logits[0]
    return all(int(logits[p - 1].argmax()) == tp.ids[p] for p in tp.fact_positions)


def test_quantize_route_matches_independent_quantisation(tiny_llama, tiny_probes, everything_eligible):
    from transformers import AutoModelForCausalLM

    an = Analysis(tiny_llama, tiny_probes[:2], fmt="plain")
    table = recover(an, tiny_llama, tiny_probes[:2], unknown=tiny_probes[2:], routes=["quantize"],
                    criteria=["teacher_forced"], options={"quantize": {"bits": (2,), "group_size": 16}})
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama.source).eval()
    for layer in hf.model.layers:
        for mod in layer.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.data = _naive_rtn(mod.weight.data.double(), 2, 16).float()
    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    row = table.iloc[0]
    assert row.recovered_k == sum(_top1(hf, tp) for tp in tps[:2]) and row.recovered_n == 2
    assert row.control_k == sum(_top1(hf, tp) for tp in tps[2:]) and row.base_kept_n == 2
    assert row.treatment.startswith("int2")


def test_in_context_route_scores_the_few_shot_prompt(tiny_llama, tiny_probes, everything_eligible):
    from unpact_mech.scoring import fact_top1, score_probes

    an = Analysis(tiny_llama, tiny_probes[:1], fmt="plain")
    table = recover(an, tiny_llama, tiny_probes[:1], unknown=tiny_probes[1:2], shots=tiny_probes[2:4],
                    routes=["in_context"], criteria=["teacher_forced"], options={"in_context": {"shots": 2}})
    shot = few_shot(tiny_probes[0], tiny_probes[2:4])
    assert shot.prompt.startswith("Question: " + tiny_probes[2].prompt) and shot.answer == tiny_probes[0].answer
    tp = tokenize_probes(tiny_llama, [shot], "plain")[0]
    assert table.iloc[0].recovered_k == int(fact_top1(tp, score_probes(tiny_llama, [tp])[0]))


def test_relearn_route_trains_on_retain_only(tiny_llama, tiny_probes, everything_eligible):
    from unpact_mech.scoring import score_probes

    def answer_lp(subject, tps):
        return torch.tensor([s.lp for s in score_probes(subject, tps)])

    tps = tokenize_probes(tiny_llama, tiny_probes, "plain")
    before = answer_lp(tiny_llama, tps)
    an = Analysis(tiny_llama, tiny_probes[:1], fmt="plain")
    table = recover(an, tiny_llama, tiny_probes[:1], unknown=tiny_probes[3:], retain=tiny_probes[1:3],
                    routes=["relearn"], criteria=["teacher_forced"], options={"relearn": {"steps": (1, 3), "lr": 1e-2}})
    assert list(table.treatment.str.split().str[0]) == ["1", "3"] and (table.n == 1).all()
    assert torch.equal(answer_lp(tiny_llama, tps), before)  # trained a fresh copy, not the subject


def test_relearn_route_equals_an_independent_training_loop(tiny_llama, tiny_probes, everything_eligible):
    """The route's flags after k steps equal a hand-written loop: a fresh copy, AdamW at the same rate, full-batch
    loss = sum of -log p over every retain answer token / number of those tokens, each sequence run unpadded. The
    retain set holds the forget question under another id, so relearning can restore it (not a test of zeros)."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    forget = tiny_probes[0]
    retain = [dataclasses.replace(forget, id="t0-again", split="retain"), tiny_probes[1]]
    an = Analysis(tiny_llama, [forget], fmt="plain")
    table = recover(an, tiny_llama, [forget], unknown=tiny_probes[3:], retain=retain, routes=["relearn"],
                    criteria=["teacher_forced"], options={"relearn": {"steps": (1, 4, 5), "lr": 3e-2}})
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama.source)
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-2)
    train = tokenize_probes(tiny_llama, retain, "plain")
    f_tp, c_tp = tokenize_probes(tiny_llama, [forget, tiny_probes[3]], "plain")
    flags = {}
    for k in range(1, 6):
        opt.zero_grad()
        total, count = 0.0, 0
        for tp in train:
            logp = torch.log_softmax(hf(torch.tensor([tp.ids])).logits[0].float(), -1)
            for p in range(tp.prompt_len, len(tp.ids)):
                total = total - logp[p - 1, tp.ids[p]]
                count += 1
        (total / count).backward()
        opt.step()
        flags[k] = (_top1(hf.eval(), f_tp), _top1(hf, c_tp))
        hf.train()
    got = {int(r.treatment.split()[0]): (bool(r.recovered_k), bool(r.control_k)) for r in table.itertuples()}
    assert got == {k: flags[k] for k in (1, 4, 5)}
    assert not flags[1][0] and flags[4][0]  # restored between 1 and 4 steps: the comparison is not between zeros


def test_routes_refuse_bad_input(tiny_llama, tiny_probes):
    an = Analysis(tiny_llama, tiny_probes[:1], fmt="plain")
    with pytest.raises(UnpactError, match="disjoint from the forget set"):
        recover(an, tiny_llama, tiny_probes[:2], retain=tiny_probes[1:2], routes=["relearn"])
    with pytest.raises(UnpactError, match="unknown recovery route"):
        recover(an, tiny_llama, tiny_probes[:1], routes=["prayer"])
    with pytest.raises(UnpactError, match="needs retain probes"):
        recover(an, tiny_llama, tiny_probes[:1], routes=["relearn"])
