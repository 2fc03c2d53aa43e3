"""Recovery routes: the RTN formula against a naive loop, and each route's flags against an independent
recomputation on tiny models (eligibility forced to every probe, since tiny random models know no facts)."""

import pytest
import torch

from unpact_mech.analysis import Analysis
from unpact_mech.core.errors import UnpactError
from unpact_mech.core.stats import newcombe, wilson
from unpact_mech.probes import tokenize_probes
from unpact_mech.routes import (
    RouteContext,
    few_shot,
    quantize_bnb_,
    quantize_rtn_,
    quantize_treatments,
    quantized_subject,
    recover,
)


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


# The 4-bit code books, written out: NF4 from the QLoRA paper (Dettmers et al. 2023, appendix E), FP4 as
# bitsandbytes' functional.get_4bit_type("fp4") lists it (sign bit, 2 exponent bits, 1 mantissa bit, bias 3).
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
FP4 = [0.0, 0.0052083333, 0.6666666667, 1.0, 0.3333333333, 0.5, 0.1666666667, 0.25]
FP4 = FP4 + [-v for v in FP4]


def _naive_4bit(w, codes, block=64):
    """Blocks of 64 consecutive weights (row-major), each scaled by its absmax and rounded to the nearest code."""
    flat, out = w.flatten().tolist(), []
    for b0 in range(0, len(flat), block):
        g = flat[b0 : b0 + block]
        a = max(abs(x) for x in g) or 1.0
        out += [a * min(codes, key=lambda c, x=x: abs(x / a - c)) for x in g]
    return torch.tensor(out, dtype=w.dtype).reshape(w.shape)


@pytest.mark.parametrize("kind,codes", [("nf4", NF4), ("fp4", FP4)])
def test_bnb_4bit_equals_the_written_out_code_book(kind, codes):
    torch.manual_seed(1)
    w = torch.randn(6, 128)  # rows of 2 blocks each, as in every SmolLM2 / Gemma-3 linear layer (in_features % 64 == 0)
    got = quantize_bnb_(w.clone(), kind)
    assert torch.allclose(got, _naive_4bit(w, codes), atol=1e-5)
    assert 0 < (got - w).abs().max() < w.abs().max()


def test_bnb_int8_equals_row_absmax_rounding():
    torch.manual_seed(2)
    w = torch.randn(5, 40)
    h = w.half().float()  # Int8Params quantises the fp16 weight
    a = h.abs().amax(1, keepdim=True)
    assert torch.allclose(quantize_bnb_(w.clone(), "int8"), torch.round(h * 127 / a) * a / 127, atol=1e-6)
    with pytest.raises(UnpactError, match="unknown bitsandbytes format"):
        quantize_bnb_(w.clone(), "int3")


def test_quantized_subject_equals_bitsandbytes_own_layers(tiny_llama):
    """Every decoder linear layer of the quantised copy equals what BitsAndBytesConfig's parameter classes store
    (Params4bit without double quantisation, Int8Params), dequantised by bitsandbytes itself; the LM head and
    embeddings stay as they were."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_f

    base = tiny_llama.load_hf_model()
    for kind in ("nf4", "int8"):
        q = quantized_subject(tiny_llama, quantizer=kind).backend.model  # the quantised copy in memory
        ours = dict(q.named_parameters())
        n = 0
        for name, mod in base.base_model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            w = mod.weight.data
            if kind == "nf4":
                p = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4", blocksize=64,
                                      compress_statistics=False)._quantize("cpu")
                ref = bnb_f.dequantize_4bit(p.data, p.quant_state)
            else:
                p = bnb.nn.Int8Params(w.clone().half(), requires_grad=False)._quantize("cpu")
                ref = bnb_f.int8_vectorwise_dequant(p.CB, p.SCB)
            key = next(k for k in ours if k.endswith(f"{name}.weight"))
            assert torch.equal(ours[key].data, ref.to(w.dtype)), (kind, name)
            n += 1
        assert n >= 7  # q, k, v, o, gate, up, down of the tiny model's layers
        assert torch.equal(q.get_output_embeddings().weight, base.get_output_embeddings().weight)
    assert quantize_treatments(["rtn", "nf4"], [8, 4], 64) == [
        ("rtn", 8, "int8 (RTN, group 64)"), ("rtn", 4, "int4 (RTN, group 64)"), ("nf4", 4, "bitsandbytes NF4, block 64")]


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
                    criteria=["teacher_forced"], options={"quantize": {"bits": (2,), "group_size": 16, "quantizers": ("rtn",)}})
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


def _cloze_right(hf, tok_model, probe):
    """The gold choice has the largest summed log-likelihood as the continuation of the prompt (naive, per choice)."""
    from unpact_mech.probes import Probe

    lls = []
    for c in probe.meta["choices"]:
        tp = tokenize_probes(tok_model, [Probe("x", probe.prompt, c)], "plain")[0]
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([tp.ids])).logits[0].double(), -1)[tp.prompt_len - 1:-1]
        lls.append(float(lp.gather(1, torch.tensor(tp.answer_ids)[:, None]).sum()))
    return max(range(len(lls)), key=lls.__getitem__) == probe.meta["answer_index"]


def test_routes_under_multiple_choice(tiny_llama, everything_eligible):
    """On probes with choices the quantize route's multiple_choice flags equal a naive RTN copy of the weights
    judged by a naive per-choice cloze loop; the relearn route keeps its collateral-damage control under
    multiple_choice only where the collateral facts have choices (here they do not: teacher_forced only)."""
    from transformers import AutoModelForCausalLM

    from unpact_mech.probes import Probe

    words = ["paris", "tokyo", "shakespeare", "mars"]
    qs = ["what is the capital of france ?", "what is the capital of japan ?", "who wrote hamlet ?",
          "what is the red planet ?"]
    mc = [Probe(f"m{i}", q, words[i], "forget", meta={"choices": words[i:] + words[:i], "answer_index": 0})
          for i, q in enumerate(qs)]
    plain = [Probe(f"c{i}", p.prompt, p.answer, "general") for i, p in enumerate(mc)]
    an = Analysis(tiny_llama, mc[:2], fmt="plain")
    table = recover(an, tiny_llama, mc[:2], unknown=mc[2:], retain=plain[:2], routes=["quantize", "relearn"],
                    criteria=["teacher_forced", "multiple_choice"], collateral=plain[2:],
                    options={"quantize": {"bits": (2,), "group_size": 16, "quantizers": ("rtn",)}, "relearn": {"steps": (1,), "lr": 1e-2}})
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama.source).eval()
    for layer in hf.model.layers:
        for mod in layer.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.data = _naive_rtn(mod.weight.data.double(), 2, 16).float()
    q = table[(table.route == "quantize") & (table.criterion == "multiple_choice")].iloc[0]
    assert (q.recovered_k, q.recovered_n) == (sum(_cloze_right(hf, tiny_llama, p) for p in mc[:2]), 2)
    assert (q.control_k, q.control_n) == (sum(_cloze_right(hf, tiny_llama, p) for p in mc[2:]), 2)
    assert q.base_kept_k == q.recovered_k  # the base is the unlearned model here
    r = table[table.route == "relearn"]
    assert set(r[r.criterion == "teacher_forced"].control_kind) == {"unknown facts", "collateral damage"}
    assert set(r[r.criterion == "multiple_choice"].control_kind) == {"unknown facts"}


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


def test_relearn_route_equals_an_independent_training_loop(tiny_llama, tiny_probes, everything_eligible,
                                                           monkeypatch):
    """The route's flags after k steps equal a hand-written loop: a fresh copy, AdamW at the same rate, full-batch
    loss = sum of -log p over every retain answer token and the EOS after it (open-unlearning's labels) / number
    of those tokens, each sequence run unpadded. The retain set holds the forget question under another id, so
    relearning can restore it (not a test of zeros). Both controls (unknown facts; collateral damage, every
    collateral fact counted as lost here) are the same loop's flags on their facts."""
    monkeypatch.setattr(RouteContext, "collateral_lost", lambda self, crit: self.collateral)
    import dataclasses

    from transformers import AutoModelForCausalLM

    forget = tiny_probes[0]
    retain = [dataclasses.replace(forget, id="t0-again", split="retain"), tiny_probes[1]]
    an = Analysis(tiny_llama, [forget], fmt="plain")
    table = recover(an, tiny_llama, [forget], unknown=tiny_probes[3:], retain=retain, routes=["relearn"],
                    criteria=["teacher_forced"], options={"relearn": {"steps": (1, 4, 5), "lr": 3e-2}},
                    collateral=tiny_probes[2:3])
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama.source)
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-2)
    train = tokenize_probes(tiny_llama, retain, "plain")
    f_tp, c_tp, g_tp = tokenize_probes(tiny_llama, [forget, tiny_probes[3], tiny_probes[2]], "plain")
    eos = tiny_llama.tokenizer.eos_token_id
    flags, collateral = {}, {}
    for k in range(1, 6):
        opt.zero_grad()
        total, count = 0.0, 0
        for tp in train:
            ids = list(tp.ids) + [eos]
            logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), -1)
            for p in range(tp.prompt_len, len(ids)):
                total = total - logp[p - 1, ids[p]]
                count += 1
        (total / count).backward()
        opt.step()
        flags[k] = (_top1(hf.eval(), f_tp), _top1(hf, c_tp))
        collateral[k] = (flags[k][0], _top1(hf, g_tp))
        hf.train()
    assert set(table.control_kind) == {"unknown facts", "collateral damage"}
    for kind, want in (("unknown facts", flags), ("collateral damage", collateral)):
        got = {int(r.treatment.split()[0]): (bool(r.recovered_k), bool(r.control_k))
               for r in table[table.control_kind == kind].itertuples()}
        assert got == {k: want[k] for k in (1, 4, 5)}, kind
    assert not flags[4][0] and flags[5][0]  # restored between 4 and 5 steps: the comparison is not between zeros


def test_routes_refuse_bad_input(tiny_llama, tiny_probes):
    an = Analysis(tiny_llama, tiny_probes[:1], fmt="plain")
    with pytest.raises(UnpactError, match="disjoint from the forget set"):
        recover(an, tiny_llama, tiny_probes[:2], retain=tiny_probes[1:2], routes=["relearn"])
    with pytest.raises(UnpactError, match="unknown recovery route"):
        recover(an, tiny_llama, tiny_probes[:1], routes=["prayer"])
    with pytest.raises(UnpactError, match="needs retain probes"):
        recover(an, tiny_llama, tiny_probes[:1], routes=["relearn"])
    with pytest.raises(UnpactError, match="collateral-damage facts must not be trained on"):
        recover(an, tiny_llama, tiny_probes[:1], retain=tiny_probes[1:3], routes=["relearn"],
                collateral=tiny_probes[2:])


def test_each_route_holds_its_defaults_once_and_the_cli_reads_them():
    """The options dataclasses are the one home of the routes' defaults: `unpact recover` without route flags
    parses to exactly them (before: the CLI's emphasis factors were (1, 8) against the route's (1, 2, 4, 8), and
    the quantizers ("rtn", "nf4") against ("rtn",))."""
    from unpact_mech.cli.parser import build_parser
    from unpact_mech.core.options import resolve_routed
    from unpact_mech.routes import (
        RECOVERY_ROUTES,
        ROUTE_OPTIONS,
        EmphasisOptions,
        InContextOptions,
        QuantizeOptions,
        RelearnOptions,
    )

    a = build_parser().parse_args(["recover", "--base", "b", "--unlearned", "u", "--probes", "p"])
    resolve_routed(a)  # the route-gated flags' defaults, as main fills them
    assert a.routes == list(RECOVERY_ROUTES) and set(a.routes) == {"emphasis", "quantize", "relearn", "in_context"}
    assert tuple(a.factors) == EmphasisOptions().factors == (1.0, 2.0, 4.0, 8.0)
    assert a.draws == EmphasisOptions().n_draws == 3
    assert (tuple(a.bits), tuple(a.quantizers)) == (QuantizeOptions().bits, QuantizeOptions().quantizers) == (
        (8, 4), ("rtn", "nf4"))
    assert (tuple(a.relearn_steps), a.relearn_lr) == (RelearnOptions().steps, RelearnOptions().lr) == ((1, 2, 4), 1e-5)
    assert a.shots == InContextOptions().shots == 3
    assert {r: ROUTE_OPTIONS[r] for r in RECOVERY_ROUTES} == {"emphasis": EmphasisOptions, "quantize": QuantizeOptions,
                                                             "relearn": RelearnOptions, "in_context": InContextOptions}


def test_route_options_are_typed_and_refuse_what_they_do_not_know():
    from unpact_mech.routes import QuantizeOptions, RelearnOptions
    from unpact_mech.routes.base import route_options

    got = route_options({"quantize": {"bits": [4], "quantizers": ["rtn"]}}, ["quantize", "relearn"])
    assert got == {"quantize": QuantizeOptions(bits=(4,), quantizers=("rtn",)), "relearn": RelearnOptions()}
    with pytest.raises(UnpactError, match=r"the quantize route.s options: unknown option\(s\) .bitz.; options are "
                                          r"criteria, quantizers, bits, group_size"):
        route_options({"quantize": {"bitz": (4,)}}, ["quantize"])
    with pytest.raises(UnpactError, match=r"unknown route\(s\) \['quantise'\]"):
        route_options({"quantise": {}}, ["quantize"])
    with pytest.raises(UnpactError, match="the quantize route takes QuantizeOptions, not RelearnOptions"):
        route_options({"quantize": RelearnOptions()}, ["quantize"])
