import math

import pytest
import torch
import torch.nn.functional as F

from unpact_mech.model.loading import load_model, read_provenance
from unpact_mech.probes import Probe
from unpact_mech.unlearning import METHODS, UnlearningError, collate, to_examples, unlearn
from unpact_mech.unlearning import losses as L


@pytest.fixture(scope="module")
def hf_pair(tiny_llama):
    model, ref = tiny_llama.load_hf_model(), tiny_llama.load_hf_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    return model, ref


@pytest.fixture(scope="module")
def batch(tiny_llama, tiny_probes):
    return collate(to_examples(tiny_llama.tokenizer, tiny_probes[:3], "plain"), 0)


def hand_nll(model, batch):
    """Per-sequence sum of NLL over labelled tokens, one token at a time."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][r].sum())
        ids = batch["input_ids"][r, :n]
        logits = model(input_ids=ids[None]).logits[0]
        total = 0.0
        for t in range(1, n):
            if batch["labels"][r, t] != -100:
                total = total - torch.log_softmax(logits[t - 1].double(), -1)[ids[t]]
        out.append(total)
    return torch.stack(out)


def hand_token_logps(model, batch, r):
    """log-softmax rows (float64) of sequence r, unpadded, one forward per sequence."""
    n = int(batch["attention_mask"][r].sum())
    return torch.log_softmax(model(input_ids=batch["input_ids"][r : r + 1, :n]).logits[0].double(), -1)


def test_losses_match_hand_computation(hf_pair, batch, tiny_llama, tiny_probes):
    """Every loss against its formula written out here, one token at a time (open-unlearning conventions by
    default; the first forms under loss_convention="unpact_v1")."""
    model, ref = hf_pair
    with torch.no_grad():
        nll, nll_ref = hand_nll(model, batch), hand_nll(ref, batch)
        n = (batch["labels"][:, 1:] != -100).sum(-1)
        assert len(set(n.tolist())) > 1  # answers of different lengths: per-token mean != mean of sums
        assert torch.allclose(L.sequence_nll(model, batch).double(), nll, atol=1e-4)
        # open-unlearning: outputs.loss = sum of token NLLs / number of labelled tokens in the batch
        token_mean = float(nll.sum() / n.sum())
        assert abs(float(L.ga(model, batch)) + token_mean) < 1e-5
        assert abs(float(L.gdr(model, batch)) - token_mean) < 1e-5
        # unpact_v1: mean over sequences of the summed NLL
        assert abs(float(L.ga(model, batch, "unpact_v1")) + float(nll.mean())) < 1e-4
        assert abs(float(L.gdr(model, batch, "unpact_v1")) - float(nll.mean())) < 1e-4
        beta = 0.1
        ratios = (-nll + nll_ref).tolist()  # log pi - log pi_ref per sequence
        npo = -(2 / beta) * sum(math.log(1 / (1 + math.exp(beta * r))) for r in ratios) / len(ratios)
        assert abs(float(L.npo(model, ref, batch, beta)) - float(npo)) < 1e-4
        sim = -(2 / 2.5) * sum(math.log(1 / (1 + math.exp(-2.5 * (float(x) / int(k) - 0.5))))
                               for x, k in zip(nll, n)) / len(n)
        assert abs(float(L.simnpo(model, batch, 2.5, 0.5)) - sim) < 1e-4
        # DPO with preferred and rejected answers that differ (IdkDPO's refusals vs the forget answers)
        from dataclasses import replace

        pref = collate(to_examples(tiny_llama.tokenizer, [replace(p, answer="I don't know.", fact=None)
                                                          for p in tiny_probes[:3]], "plain"), 0)
        w, w_ref = hand_nll(model, pref), hand_nll(ref, pref)
        margins = [beta * ((-a + b) - (-c + d)) for a, b, c, d in zip(w.tolist(), w_ref.tolist(), nll.tolist(),
                                                                     nll_ref.tolist())]
        assert max(abs(m) for m in margins) > 1e-3  # the two sides really differ
        dpo = -(2 / beta) * sum(math.log(1 / (1 + math.exp(-m))) for m in margins) / len(margins)
        assert abs(float(L.dpo(model, ref, pref, batch, beta)) - dpo) < 1e-4
        # KL, open-unlearning: KL(ref || current) per position, averaged over every unmasked position
        kls_ou, kls_v1 = [], []
        for r in range(batch["input_ids"].shape[0]):
            lp, lq = hand_token_logps(model, batch, r), hand_token_logps(ref, batch, r)
            for t in range(lp.shape[0]):
                kls_ou.append(sum(float(lq[t, v].exp() * (lq[t, v] - lp[t, v])) for v in range(lp.shape[1])))
                if t >= 1 and batch["labels"][r, t] != -100:  # unpact_v1: KL(current || ref) on answer tokens
                    kls_v1.append(float((lp[t - 1].exp() * (lp[t - 1] - lq[t - 1])).sum()))
        assert abs(float(L.klr(model, ref, batch)) - sum(kls_ou) / len(kls_ou)) < 1e-5
        assert abs(float(L.klr(model, ref, batch, "unpact_v1")) - sum(kls_v1) / len(kls_v1)) < 1e-5
        assert float(L.klr(ref, ref, batch)) == pytest.approx(0.0, abs=1e-6)
        # on an unpadded batch this is exactly open-unlearning's call on the flattened logits
        one = {k: v[:1, : int(batch["attention_mask"][0].sum())] for k, v in batch.items()}
        cur = torch.log_softmax(model(input_ids=one["input_ids"]).logits.view(-1, model.config.vocab_size), -1)
        tgt = torch.log_softmax(ref(input_ids=one["input_ids"]).logits.view(-1, model.config.vocab_size), -1)
        ou = F.kl_div(cur, tgt, reduction="batchmean", log_target=True)
        assert abs(float(L.klr(model, ref, one)) - float(ou)) < 1e-5


def test_non_finite_weights_name_float16_training_as_the_cause(tiny_llama_dir, tiny_probes, tmp_path):
    """A step that overflows float16 weights (largest 65504) says float16 training is the cause and names the dtypes
    that fix it; in float32 and bfloat16 the message keeps asking for a lower rate."""
    half = load_model(str(tiny_llama_dir), dtype="float16")
    with pytest.raises(UnlearningError, match=r"training in float16 is unstable.*bfloat16 \(--dtype bfloat16\) or float32"):
        unlearn(half, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "h", steps=1, lr=1e6, progress=False)
    assert not (tmp_path / "h").exists()
    from unpact_mech.unlearning.trainer import _nonfinite_fix

    for dtype in (torch.float32, torch.bfloat16):  # elsewhere the advice is the caller's own (the rate)
        assert _nonfinite_fix([torch.nn.Parameter(torch.ones(2, dtype=dtype))], "Lower the learning rate") == \
            "Lower the learning rate"


def test_loss_convention_is_validated_and_recorded(tiny_llama, tiny_probes, tmp_path):
    from unpact_mech.unlearning import resolve_config

    with pytest.raises(UnlearningError, match="loss_convention must be one of"):
        resolve_config("ga_gdr", True, loss_convention="sum")
    out = unlearn(tiny_llama, "ga_klr", tiny_probes[:2], tiny_probes[2:4], tmp_path / "c", steps=1, progress=False,
                  loss_convention="unpact_v1")
    assert read_provenance(out)["hyperparameters"]["loss_convention"] == "unpact_v1"


def test_rmu_loss_matches_hand_computation(hf_pair, batch, tiny_probes, tiny_llama):
    """RMU at layer 1: forget MSE to c*u on each example's own tokens, retain MSE to the frozen reference."""
    model, ref = hf_pair
    retain = collate(to_examples(tiny_llama.tokenizer, tiny_probes[3:], "plain"), 0)
    control = 3.0 * torch.ones(model.config.hidden_size) / model.config.hidden_size**0.5
    layer = 1
    with torch.no_grad():
        f, r = L.rmu(model, ref, batch, retain, layer, control, alpha=10.0)
        num, cnt = 0.0, 0
        for row in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][row].sum())
            h = model(input_ids=batch["input_ids"][row : row + 1, :n], output_hidden_states=True).hidden_states[layer + 1][0]
            for pos in range(n):
                if batch["content_mask"][row, pos]:
                    num += float(((h[pos] - control) ** 2).mean())
                    cnt += 1
        assert cnt == int(batch["content_mask"].sum()) and cnt < int(batch["attention_mask"].sum())
        assert abs(float(f) - num / cnt) < 1e-4
        num, cnt = 0.0, 0
        for row in range(retain["input_ids"].shape[0]):
            n = int(retain["attention_mask"][row].sum())
            ids = retain["input_ids"][row : row + 1, :n]
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
            h0 = ref(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
            num += float(((h - h0) ** 2).mean(-1).sum())
            cnt += n
        assert abs(float(r) - 10.0 * num / cnt) < 1e-4
        # the content mask is the question and the answer: the plain template ("Question:", "Answer:") is out
        tp_tokens = [tiny_llama.tokenizer.convert_ids_to_tokens(int(t)) for t, m in
                     zip(batch["input_ids"][0], batch["content_mask"][0]) if m]
        assert "capital" in tp_tokens and "paris" in tp_tokens

def test_registry_names():
    assert {"ga", "npo", "ga_gdr", "ga_klr", "npo_gdr", "npo_klr", "task_vector", "rmu", "simnpo", "idk_dpo"} <= set(METHODS)


def _weights(path):
    return {k: v.clone() for k, v in load_model(str(path)).load_hf_model().state_dict().items()}


@pytest.mark.parametrize("method", ["ga_gdr", "npo_klr", "simnpo", "idk_dpo", "rmu", "task_vector"])
def test_methods_run_and_change_weights(method, tiny_llama, tiny_probes, tmp_path):
    kw = {"rmu_layer": 1} if method == "rmu" else {}
    out = unlearn(tiny_llama, method, tiny_probes[:2], tiny_probes[2:], tmp_path / method, steps=2, lr=1e-3,
                  batch_size=2, progress=False, fmt="plain", **kw)
    prov = read_provenance(out)
    assert prov["method"] == method and prov["steps"] == 2 and prov["forget_hash"] and prov["retain_hash"]
    before = tiny_llama.load_hf_model().state_dict()
    after = _weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    if method == "rmu":  # only the chosen MLP down-projections (layers 0-1 for rmu_layer 1)
        assert changed == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}


def test_reference_model_stays_frozen(tiny_llama, tiny_probes, tmp_path):
    seen = {}

    def grab(step, rec):
        seen[step] = rec

    out = unlearn(tiny_llama, "npo_klr", tiny_probes[:2], tiny_probes[2:], tmp_path / "m", steps=3, lr=1e-3,
                  progress=False, fmt="plain", on_step=grab)
    assert len(seen) == 3
    # KL to the reference is 0 at step 1 only if the reference is the unchanged start
    assert seen[1]["retain"] == pytest.approx(0.0, abs=1e-6) and seen[3]["retain"] > 0
    assert read_provenance(out)["steps"] == 3


def test_task_vector_zero_scale_is_identity(tiny_llama, tiny_probes, tmp_path):
    out = unlearn(tiny_llama, "task_vector", tiny_probes[:2], [], tmp_path / "tv", steps=2, lr=1e-3, tv_scale=0.0,
                  progress=False, fmt="plain")
    before = tiny_llama.load_hf_model().state_dict()
    after = _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("target, max_scale, expect", [(0.3, 8.0, 1.75), (0.0, 2.0, None)])
def test_task_vector_scale_is_calibrated_by_bisection(target, max_scale, expect):
    """Forget accuracy written as 1 - a/2.5 (a read back from the weights): the smallest scale reaching the
    target is 1.75; bisection lands within its stated precision above it, and a missed target is reported."""
    from unpact_mech.unlearning.config import UnlearnConfig
    from unpact_mech.unlearning.methods import METHODS, State

    ref = torch.nn.Linear(3, 2)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), ref.parameters()):
            p.copy_(p0 + 0.5)  # theta_ft - theta_0 = 0.5 everywhere

    def acc() -> float:
        a = float((ref.weight[0, 0] - model.weight[0, 0]) / 0.5)
        return max(0.0, 1 - a / 2.5)

    cfg = UnlearnConfig(target_forget_acc=target, tv_max_scale=max_scale, tv_bisect_steps=6)
    s = State(model, ref, cfg, {"forget_accuracy": acc})
    METHODS["task_vector"]().finish(s)
    res = s.extra["resolved"]
    a = res["tv_scale"]
    if expect is None:
        assert not res["tv_target_reached"] and a == max_scale
    else:
        assert res["tv_target_reached"] and expect <= a <= expect + 1 / 64 + 1e-9  # bracket [1, 2] halved 6 times
        assert acc() <= target
    assert torch.allclose(model.weight, ref.weight - a * 0.5)


def test_same_seed_same_result_and_calibration(tiny_llama, tiny_probes, tmp_path):
    a = unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "a", steps=3, lr=1e-3,
                progress=False, fmt="plain", seed=7)
    b = unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "b", steps=3, lr=1e-3,
                progress=False, fmt="plain", seed=7)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "c", steps=50, lr=1e-2,
                progress=False, fmt="plain", target_forget_acc=0.0)
    prov = read_provenance(c)
    assert prov["stopped_at"] is not None and prov["steps"] == prov["stopped_at"] < 50
    assert prov["forget_fact_acc_after"] == 0.0


def test_nan_loss_stops_with_clear_error(tiny_llama, tiny_probes, tmp_path, monkeypatch):
    with pytest.raises(UnlearningError, match="gamma, alpha, beta, delta and tv_scale must be finite"):
        unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "n", steps=2,
                progress=False, fmt="plain", gamma=float("nan"))  # refused before any model is copied
    real = L.ga
    monkeypatch.setattr(L, "ga", lambda model, batch, *a: real(model, batch, *a) * float("nan"))
    with pytest.raises(UnlearningError, match="loss became nan at step 1"):
        unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "n", steps=2,
                progress=False, fmt="plain")
    assert not (tmp_path / "n").exists()
    with pytest.raises(KeyError, match="unknown unlearning method"):
        unlearn(tiny_llama, "forgetful", tiny_probes, tiny_probes, tmp_path / "x")


def test_interrupted_run_resumes(tiny_llama, tiny_probes, tmp_path):
    class Stop(Exception):
        pass

    def boom(step, rec):
        if step == 3:
            raise Stop

    kw = dict(steps=4, lr=1e-3, progress=False, fmt="plain", checkpoint_every=2, seed=1)
    with pytest.raises(Stop):
        unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "r", on_step=boom, **kw)
    assert (tmp_path / "r.resume.safetensors").exists() and (tmp_path / "r.resume.json").exists()
    assert not list(tmp_path.glob("*.pt"))  # nothing pickled is written
    steps = []
    resumed = unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "r",
                      on_step=lambda s, r: steps.append(s), **kw)
    assert steps == [3, 4] and not (tmp_path / "r.resume.json").exists()
    straight = unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "s", **kw)
    wa, wb = _weights(resumed), _weights(straight)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-identical


class _Evil:
    """A pickle that writes a marker file when it is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_resume_file_is_refused_and_never_unpickled(tiny_llama, tiny_probes, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    (tmp_path / "r.resume.pt").write_bytes(pickle.dumps({"run_key": _Evil(marker)}))
    with pytest.raises(UnlearningError, match="legacy pickled resume file .*rm "):
        unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "r", steps=1, progress=False,
                fmt="plain")
    assert not marker.exists()
    assert not (tmp_path / "r").exists()


def test_corrupt_resume_file_is_one_clear_error(tiny_llama, tiny_probes, tmp_path):
    (tmp_path / "r.resume.json").write_text("{not json")
    with pytest.raises(UnlearningError, match="unreadable.*start over"):
        unlearn(tiny_llama, "ga_gdr", tiny_probes[:2], tiny_probes[2:], tmp_path / "r", steps=1, progress=False,
                fmt="plain")


def test_reference_model_only_for_methods_that_need_one(tiny_llama, tiny_probes, tmp_path, monkeypatch):
    """GA+GD makes no reference copy; NPO's reference is the subject's own frozen weights (no copy either)."""
    import copy

    from unpact_mech import unlearning as U

    copies = []
    real = copy.deepcopy
    def counting(x, *a):
        if isinstance(x, torch.nn.Module):
            copies.append(type(x).__name__)
        return real(x, *a)

    monkeypatch.setattr(U.trainer.copy, "deepcopy", counting)
    seen = {}
    real_npo = U.L.npo

    def spy(model, ref, forget, beta):
        seen["ref"] = ref
        return real_npo(model, ref, forget, beta)

    monkeypatch.setattr(U.L, "npo", spy)
    for method in ("ga_gdr", "npo_gdr"):
        unlearn(tiny_llama, method, tiny_probes[:2], tiny_probes[2:], tmp_path / method, steps=1, progress=False,
                fmt="plain")
    assert copies == []
    view = seen["ref"]
    shared = {p.data_ptr() for p in tiny_llama.bridge.parameters()}
    assert all(p.data_ptr() in shared for p in view.parameters())
    unlearn(tiny_llama, "task_vector", tiny_probes[:2], [], tmp_path / "tv", steps=1, progress=False, fmt="plain")
    assert len(copies) == 1  # Task Vector needs the starting parameters themselves


def reference_labels(tokenizer, prompt, answer, chat):
    """open-unlearning's labelling, written out from ``src/data/utils.py`` (``preprocess_chat_instance``): the
    whole conversation tokenised, the prompt with the generation prompt tokenised, EOS appended unless last, and
    every token after the prompt labelled. Plain (no chat template): the tags of ``configs/model/Llama-2-7b-hf.yaml``,
    ``Question: q\nAnswer: a`` against ``Question: q\nAnswer: ``, with special tokens, then EOS."""
    if chat:
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        chat_ids = list(tokenizer.apply_chat_template(conv, tokenize=True, return_dict=False))
        prompt_ids = list(tokenizer.apply_chat_template(conv[:1], tokenize=True, add_generation_prompt=True,
                                                        return_dict=False))
    else:
        wrapped = f"Question: {prompt}\nAnswer: "
        chat_ids = tokenizer(wrapped + answer, add_special_tokens=True)["input_ids"]
        prompt_ids = tokenizer(wrapped, add_special_tokens=True)["input_ids"]
    if chat_ids[-1] != tokenizer.eos_token_id:
        chat_ids = chat_ids + [tokenizer.eos_token_id]
    return chat_ids, [-100] * len(prompt_ids) + chat_ids[len(prompt_ids):]


def test_open_unlearning_labels_answer_closing_tokens_and_eos(smol, smol_probes, tiny_llama, tiny_probes):
    """Labels under loss_convention="open_unlearning" equal open-unlearning's on SmolLM2's chat template (answer,
    <|im_end|>, newline, EOS) and on the plain format (the answer but a first token joined to the prompt's space,
    then EOS); "unpact_v1" labels the answer only."""
    from unpact_mech.unlearning import qa_example

    tok = smol.tokenizer
    for p in smol_probes[:25]:
        ids, labels = reference_labels(tok, p.prompt, p.answer, chat=True)
        ex = qa_example(tok, p, "chat")
        assert ex.ids == ids and ex.labels == labels, p.id
        tail = [t for t in ex.labels[-3:]]
        assert tok.convert_ids_to_tokens(tail) == ["<|im_end|>", "Ċ", "<|im_end|>"]
        v1 = qa_example(tok, p, "chat", convention="unpact_v1")
        n_answer = sum(x != -100 for x in v1.labels)
        assert v1.ids == ids[: len(v1.ids)] and sum(x != -100 for x in ex.labels) == n_answer + 3
        assert ex.fact_positions == v1.fact_positions and ex.content == v1.content
    for p in tiny_probes:
        ids, labels = reference_labels(tiny_llama.tokenizer, p.prompt, p.answer, chat=False)
        ex = qa_example(tiny_llama.tokenizer, p, "plain")
        assert ex.ids == ids and ex.labels == labels and ex.labels[-1] == tiny_llama.tokenizer.eos_token_id
    for p in smol_probes[:25]:  # SmolLM2's BPE in the plain format: the answer's first token joins "Answer: "'s space
        ids, labels = reference_labels(tok, p.prompt, p.answer, chat=False)
        ex, v1 = qa_example(tok, p, "plain"), qa_example(tok, p, "plain", convention="unpact_v1")
        assert ex.ids == ids and ex.labels == labels, p.id
        assert sum(x != -100 for x in ex.labels) == sum(x != -100 for x in v1.labels)  # one answer token less, EOS
        assert ex.fact_positions == v1.fact_positions
    ex = qa_example(tok, Probe("h", "Who wrote Hamlet?", "William Shakespeare."), "plain")
    # Question : ĠWho Ġwrote ĠHamlet ? Ċ Answer : ĠWilliam ĠShakespeare . <|im_end|>; "Answer: " alone ends in Ġ (216)
    assert ex.ids == [17872, 42, 6244, 4150, 24630, 47, 198, 21350, 42, 4967, 12081, 30, 2]
    assert ex.labels == [-100] * 10 + [12081, 30, 2]


def test_example_without_labelled_token_is_one_clear_error(hf_pair, batch, tiny_llama, tiny_probes):
    """open-unlearning divides by a zero label count (NaN); a clamp would shift the mean: refused instead."""
    from unpact_mech.unlearning import Example

    model, ref = hf_pair
    empty = Example([1, 5, 6], [-100, -100, -100])
    with pytest.raises(UnlearningError, match=r"example\(s\) \[1\] have no labelled token"):
        collate([to_examples(tiny_llama.tokenizer, tiny_probes[:1], "plain")[0], empty], 0)
    bad = {k: v.clone() for k, v in batch.items()}
    bad["labels"][1] = -100
    for loss in (lambda: L.ga(model, bad), lambda: L.simnpo(model, bad, 4.5, 0.0), lambda: L.npo(model, ref, bad, 0.1)):
        with pytest.raises(UnlearningError, match=r"row\(s\) \[1\] have no labelled token"):
            loss()
    control = torch.ones(model.config.hidden_size)
    with pytest.raises(UnlearningError, match="no position to average over"):
        L.rmu(model, ref, bad, batch, 1, control, 1.0, form="open_unlearning")


def test_simnpo_defaults_follow_open_unlearning_and_rmu_form_is_checked():
    """configs/trainer/SimNPO.yaml: beta 4.5, gamma 0.125, delta 0, alpha 1 (explicit settings still win)."""
    from unpact_mech.unlearning import resolve_config

    _, cfg = resolve_config("simnpo", True)
    assert (cfg.beta, cfg.gamma, cfg.delta, cfg.alpha) == (4.5, 0.125, 0.0, 1.0)
    assert resolve_config("simnpo", True, beta=2.5)[1].beta == 2.5
    assert resolve_config("rmu", True)[1].rmu_form == "wmdp"
    with pytest.raises(UnlearningError, match="rmu_form must be one of"):
        resolve_config("rmu", True, rmu_form="pooled")


def test_rmu_open_unlearning_form_matches_reference(hf_pair, batch, tiny_probes, tiny_llama, tmp_path):
    """open-unlearning's RMU (src/trainer/unlearn/rmu.py, compute_activation_loss): per sequence, the mean over
    its labelled positions (labels != -100, unshifted) of the feature-mean squared difference, then the mean over
    sequences; on a padded batch (rows unpadded here one by one) and on an unpadded one-row batch. It differs from
    the pooled WMDP form on the same batch."""
    model, ref = hf_pair
    retain = collate(to_examples(tiny_llama.tokenizer, tiny_probes[3:] + tiny_probes[:1], "plain"), 0)
    control = 3.0 * torch.ones(model.config.hidden_size) / model.config.hidden_size**0.5
    layer = 1

    def hidden(m, b, row):
        n = int(b["attention_mask"][row].sum())
        return m(input_ids=b["input_ids"][row : row + 1, :n], output_hidden_states=True).hidden_states[layer + 1][0]

    def reference(b, target):
        per_seq = []
        for row in range(b["input_ids"].shape[0]):
            h, t = hidden(model, b, row), target(b, row)
            pos = [i for i in range(h.shape[0]) if b["labels"][row, i] != -100]
            per_seq.append(sum(float(((h[i] - t[i]) ** 2).mean()) for i in pos) / len(pos))
        return sum(per_seq) / len(per_seq)

    with torch.no_grad():
        for fb, rb in ((batch, retain), ({k: v[:1, : int(batch["attention_mask"][0].sum())] for k, v in batch.items()},
                                         {k: v[:1, : int(retain["attention_mask"][0].sum())] for k, v in retain.items()})):
            f, r = L.rmu(model, ref, fb, rb, layer, control, 10.0, form="open_unlearning")
            assert abs(float(f) - reference(fb, lambda b, row: control.expand(int(b["attention_mask"][row].sum()), -1))) < 1e-4
            assert abs(float(r) - 10.0 * reference(rb, lambda b, row: hidden(ref, b, row))) < 1e-4
        f_wmdp, _ = L.rmu(model, ref, batch, retain, layer, control, 10.0)
        assert abs(float(f_wmdp) - float(L.rmu(model, ref, batch, retain, layer, control, 10.0, "open_unlearning")[0])) > 1e-3
    out = unlearn(tiny_llama, "rmu", tiny_probes[:2], tiny_probes[2:4], tmp_path / "r", steps=1, progress=False,
                  rmu_layer=1, rmu_form="open_unlearning")
    assert read_provenance(out)["hyperparameters"]["rmu_form"] == "open_unlearning"
