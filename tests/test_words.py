"""Word-level function words: sub-word tokens grouped into words by character offsets, matched on the word."""

import pytest

from unpact_mech.probes import Probe, tokenize_probe
from unpact_mech.probes.words import FUNCTION_WORDS, WORD, function_word_positions, word_kind


def test_word_kinds_on_whole_words():
    assert word_kind("The") == word_kind("of") == "function word"
    assert word_kind("Theory") == word_kind("Berlin") == word_kind("Kyrgyzstan") == "content word"
    assert word_kind("?") == word_kind(",") == "punctuation"
    assert {"a", "the", "of", "is", "what", "who", "and", "not"} <= FUNCTION_WORDS
    assert [m.group() for m in WORD.finditer("Who wrote Don't-Stop, 1984?")] == ["Who", "wrote", "Don't-Stop", ",",
                                                                                 "1984", "?"]


@pytest.mark.slow
def test_subword_tokens_are_grouped_into_words_smollm2(smol):
    """With SmolLM2's BPE, "Theory" is "The"+"ory" and "Kyrgyzstan" two tokens: each is one content word, and only
    the real function words' tokens are function-word positions (a token-level match would call "The" one)."""
    tp = tokenize_probe(smol.tokenizer, Probe("x", "Theory of the capital of Kyrgyzstan?", "A."))
    words = dict((w, pos) for w, pos in tp.words)
    assert list(words) == ["Theory", "of", "the", "capital", "Kyrgyzstan", "?"]  # "of" twice: dict keeps the last
    assert len(words["Theory"]) == 2 and len(words["Kyrgyzstan"]) == 2
    assert [tp.tokens[p].strip() for p in words["Theory"]] == ["The", "ory"]
    fw = function_word_positions(tp.words)
    assert [tp.tokens[p].strip() for p in fw] == ["of", "the", "of"]
    assert all(p in tp.attributable for w, pos in tp.words for p in pos)
    assert sorted(p for _, pos in tp.words for p in pos) == list(tp.attributable)  # every prompt token in one word
    plain = tokenize_probe(smol.tokenizer, Probe("x", "Theory of the capital of Kyrgyzstan?", "A."), fmt="plain")
    assert [w for w, _ in plain.words] == [w for w, _ in tp.words]


def test_words_on_a_word_level_tokenizer(tiny_llama):
    tp = tokenize_probe(tiny_llama.tokenizer, Probe("x", "what is the capital of france ?", "paris ."), fmt="plain")
    assert [w for w, _ in tp.words] == ["what", "is", "the", "capital", "of", "france", "?"]
    assert [tp.tokens[p] for p in function_word_positions(tp.words)] == ["what", "is", "the", "of"]
