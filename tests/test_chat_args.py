"""A model's chat arguments (open-unlearning's ``template_args``: a system turn and the template's date string)
rendered into every chat prompt and the labelled tokens, kept with its checkpoints, and set from the CLI."""

from __future__ import annotations

import pytest

from unpact_mech.cli.parser import build_parser
from unpact_mech.cli.scale import load_kwargs
from unpact_mech.core.errors import UnpactError
from unpact_mech.model.chat import ChatArgs, chat_args, set_chat_args
from unpact_mech.model.checkpoints import read_provenance, save_checkpoint
from unpact_mech.model.loading import load_like, load_model
from unpact_mech.probes import Probe, tokenize_probe
from unpact_mech.probes.labels import labelled

# Llama-3.1-Instruct's template, trimmed of tool use: a system header with the knowledge cutoff and date_string
LLAMA3_STYLE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


# Gemma-3's template, trimmed of images: a system message folded into the first user turn, "model" turns
GEMMA3_STYLE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def _word_tokenizer(specials: list[str], words: str, bos: str, eos: str, template: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*specials, "<unk>", *dict.fromkeys(words.split())])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token="<unk>",
                                  additional_special_tokens=[t for t in specials if t not in (bos, eos)])
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def llama3_tok():
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    words = ("system user assistant Cutting Knowledge Date : December 2023 Today 10 Apr 2025 26 Jul 2024 You are a "
             "helpful . what is the capital of france ? paris")
    return _word_tokenizer(specials, words, specials[0], specials[1], LLAMA3_STYLE)


def test_system_prompt_and_date_string_in_the_scored_tokens(llama3_tok):
    tok = llama3_tok
    probe = Probe("q", "what is the capital of france ?", "paris")
    set_chat_args(tok, ChatArgs("You are a helpful assistant.", "10 Apr 2025"))  # configs/model/Llama-3.2-1B-Instruct.yaml
    try:
        tp = labelled(tok, tokenize_probe(tok, probe, "chat"))
    finally:
        set_chat_args(tok, None)
    prompt = ["<|begin_of_text|>", "<|start_header_id|>", "system", "<|end_header_id|>", "Cutting", "Knowledge", "Date",
              ":", "December", "2023", "Today", "Date", ":", "10", "Apr", "2025", "You", "are", "a", "helpful",
              "assistant", ".", "<|eot_id|>", "<|start_header_id|>", "user", "<|end_header_id|>", "what", "is", "the",
              "capital", "of", "france", "?", "<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>"]
    scored = ["paris", "<|eot_id|>", "<|end_of_text|>"]  # the answer, the turn's closing token, then EOS appended
    assert tok.convert_ids_to_tokens(list(tp.ids)) == prompt + scored
    assert tp.prompt_len == len(prompt)
    assert [tp.tokens[i] for i in tp.attributable] == ["what", "is", "the", "capital", "of", "france", "?"]
    # without them: the template's own date, no system text
    plain = tokenize_probe(tok, probe, "chat")
    assert tok.convert_ids_to_tokens(list(plain.ids))[10:16] == ["Today", "Date", ":", "26", "Jul", "2024"]
    assert "You" not in tok.convert_ids_to_tokens(list(plain.ids))


def test_chat_args_travel_with_checkpoints_and_come_from_the_cli(tiny_llama_dir, tmp_path):
    chat = ChatArgs("You are a helpful assistant.", "10 Apr 2025")
    m = load_model(str(tiny_llama_dir), chat=chat)
    assert chat_args(m.tokenizer) == chat and chat_args(load_model(str(tiny_llama_dir)).tokenizer) == ChatArgs()
    out = save_checkpoint(m.load_hf_model(), m.tokenizer, tmp_path / "ckpt", {"method": "none"})
    assert read_provenance(out)["chat"] == {"system_prompt": "You are a helpful assistant.", "date_string": "10 Apr 2025"}
    assert chat_args(load_model(str(out)).tokenizer) == chat  # a checkpoint is prompted as its model was
    assert chat_args(load_like(str(tiny_llama_dir), m).tokenizer) == chat  # compared as the model it is compared with
    a = build_parser().parse_args(["attribute", "--model", "x", "--prompt", "p", "--answer", "a",
                                   "--system-prompt", "You are a helpful assistant.", "--date-string", "10 Apr 2025"])
    assert load_kwargs(a)["chat"] == chat
    assert "chat" not in load_kwargs(build_parser().parse_args(["attribute", "--model", "x", "--prompt", "p",
                                                                "--answer", "a"]))
    with pytest.raises(UnpactError, match="system_prompt must be a non-empty string"):
        ChatArgs(" ")


def test_gemma3_style_template_folds_the_system_turn_into_the_user_turn():
    """Gemma-3's template has no system role: the system text opens the first user turn. It is scaffolding (not
    attributable), and the scored tokens are the answer, ``<end_of_turn>`` and EOS."""
    tok = _word_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
                          "user model You are a helpful assistant . what is the capital of france ? paris", "<bos>",
                          "<eos>", GEMMA3_STYLE)
    set_chat_args(tok, ChatArgs("You are a helpful assistant."))
    try:
        tp = labelled(tok, tokenize_probe(tok, Probe("q", "what is the capital of france ?", "paris"), "chat"))
    finally:
        set_chat_args(tok, None)
    prompt = ["<bos>", "<start_of_turn>", "user", "You", "are", "a", "helpful", "assistant", ".", "what", "is", "the",
              "capital", "of", "france", "?", "<end_of_turn>", "<start_of_turn>", "model"]
    assert tok.convert_ids_to_tokens(list(tp.ids)) == [*prompt, "paris", "<end_of_turn>", "<eos>"]
    assert tp.prompt_len == len(prompt)
    assert [tp.tokens[i] for i in tp.attributable] == ["what", "is", "the", "capital", "of", "france", "?"]
