import json

import pytest

from unpact_mech.probes import Probe, ProbeError, load_probes, tokenize_probe


def test_plain_format_marks_only_prompt_tokens(tiny_llama, tiny_probes):
    tp = tokenize_probe(tiny_llama.tokenizer, tiny_probes[0], "plain")
    assert tp.format == "plain"
    words = [tp.tokens[i].strip() for i in tp.attributable]
    assert words == ["what", "is", "the", "capital", "of", "france", "?"]
    # scaffolding ("Question", ":", "answer") is not attributable but can be switched on
    tp_all = tokenize_probe(tiny_llama.tokenizer, tiny_probes[0], "plain", attribute_scaffolding=True)
    assert len(tp_all.attributable) > len(tp.attributable)
    assert [tp.tokens[i] for i in tp.fact_positions] == ["paris"]
    assert tp.ids[tp.prompt_len :] == tuple(tiny_llama.tokenizer("the capital of france is paris .")["input_ids"])


@pytest.mark.slow
def test_chat_format_excludes_template_and_system_prompt(smol):
    p = Probe("f", "What is the capital of France?", "The capital of France is Paris.", fact="Paris")
    tp = tokenize_probe(smol.tokenizer, p)
    assert tp.format == "chat"
    assert "".join(tp.tokens[i] for i in tp.attributable) == "What is the capital of France?"
    assert "".join(tp.tokens[tp.prompt_len :]) == "The capital of France is Paris."
    assert [tp.tokens[i] for i in tp.fact_positions] == [" Paris"]
    assert tp.tokens[0] == "<|im_start|>" and 0 not in tp.attributable


def test_errors_name_the_problem(tiny_llama):
    with pytest.raises(ProbeError, match="empty prompt"):
        Probe("x", "  ", "a")
    with pytest.raises(ProbeError, match="empty answer"):
        Probe("x", "q", "")
    with pytest.raises(ProbeError, match="not inside answer"):
        Probe("x", "q", "paris", fact="rome")
    long = Probe("long", " ".join(["the"] * 200), "paris")
    with pytest.raises(ProbeError, match="longer than the model context of 128"):
        tokenize_probe(tiny_llama.tokenizer, long, "plain", max_len=tiny_llama.n_ctx)
    with pytest.raises(ProbeError, match="no chat template"):
        tokenize_probe(tiny_llama.tokenizer, Probe("x", "what", "paris"), "chat")


def test_load_probes_reports_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "q", "answer": "a"}) + "\n" + json.dumps({"id": "b"}) + "\n")
    with pytest.raises(ProbeError, match=r"p.jsonl:2: .*lacks field"):
        load_probes(f)
