"""Words of a prompt and which of them are function words (finding 3's "indiscriminate" penalisation).

A *word* is a maximal run of letters/digits with inner apostrophes or hyphens (``don't``, ``Saint-Exupery``),
or one punctuation character (``WORD``). Tokens are grouped into words by their character offsets
(``TokenizedProbe.words``), so a word split into several sub-word tokens is classified once, as a whole.

``FUNCTION_WORDS`` is the closed-class English vocabulary: articles and determiners, pronouns, prepositions,
conjunctions, auxiliary and modal verbs, wh-words and a few particles ("not", "to", "there"). Matching is
case-insensitive on the whole word: "The" is a function word, "Theory" and "Berlin" are not. Punctuation is
its own kind, not a function word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|[^\w\s]")

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no all both either neither
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
myself yourself himself herself itself ourselves themselves one
of in on at to for by with from into onto upon about above below over under between among through during
before after against without within along across behind beyond near off out up down since until till via per
than as like
and or but nor so yet if because although though while whereas unless whether
is are was were be been being am do does did doing done have has had having
will would shall should can could may might must
what which who whom whose when where why how
not there here then
""".split())

WordKind = Literal["function word", "punctuation", "content word"]


def word_kind(word: str) -> WordKind:
    """Function word (closed-class list, case-insensitive), punctuation (no letter or digit), or content word."""
    if not any(ch.isalnum() for ch in word):
        return "punctuation"
    return "function word" if word.lower() in FUNCTION_WORDS else "content word"


def function_word_positions(words: Sequence[tuple[str, Sequence[int]]]) -> list[int]:
    """All token positions of the function words among ``words`` (``TokenizedProbe.words``), in order."""
    return sorted(p for w, pos in words if word_kind(w) == "function word" for p in pos)
