"""The tokens open-unlearning labels in an example, so that metrics score, and unlearning trains on, the same set.

* QA (chat and plain formats): the answer, then the chat template's closing tokens of the assistant turn (chat),
  then EOS unless the sequence already ends with it (``src/data/utils.py: preprocess_chat_instance``: labels are
  ``chat_ids[len(prompt_ids):]``, with EOS appended to ``chat_ids``). On SmolLM2's chat template: the answer,
  ``<|im_end|>``, ``\\n``, ``<|im_end|>``.
* raw text (``fmt='raw'``, MUSE's passages and MIA sets): the continuation after the prefix, no EOS
  (``preprocess_pretraining_instance``).

Sequence-level metrics average over every labelled token (``utils.py: evaluate_probability``); token-level ones
(Min-K%, Min-K%++, exact memorisation, extraction strength) drop the last labelled token
(``utils.py: tokenwise_logprobs``, ``tokenwise_vocab_logprobs``: "-1 to ignore eos prediction"), which in raw text
is a real answer token.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from unpact_mech.probes import ProbeError, TokenizedProbe, chat_text, render_prompt


def closing_ids(tokenizer: Any, tp: TokenizedProbe) -> list[int]:
    """The labelled tokens open-unlearning puts after a QA answer: the chat template's text after the assistant
    answer (``apply_chat_template(..., add_generation_prompt=False)`` minus the rendered prompt and the answer),
    then EOS unless the sequence already ends with it."""
    tail: list[int] = []
    if tp.format == "chat":
        prompt = render_prompt(tokenizer, tp.probe.prompt, "chat")[0]
        full = chat_text(tokenizer, [("user", tp.probe.prompt), ("assistant", tp.probe.answer)], False)
        at = full.find(tp.probe.answer, len(prompt)) if full.startswith(prompt) else -1
        if at < 0:
            raise ProbeError(
                f"probe '{tp.probe.id}': the chat template does not render the answer turn as the prompt followed by "
                "the answer, so its closing tokens cannot be found; use fmt='plain' (to unlearn: or "
                "loss_convention='unpact_v1', answer tokens only)")
        tail = list(tokenizer(full[at + len(tp.probe.answer):], add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and (list(tp.ids) + tail)[-1] != eos:
        tail.append(eos)
    return tail


def labelled(tokenizer: Any, tp: TokenizedProbe) -> TokenizedProbe:
    """``tp`` with open-unlearning's labelled tokens as its answer span: the answer plus :func:`closing_ids` for
    QA formats, the answer alone for raw text."""
    tail = [] if tp.format == "raw" else closing_ids(tokenizer, tp)
    if not tail:
        return tp
    return replace(tp, ids=tp.ids + tuple(tail), tokens=tp.tokens + tuple(tokenizer.convert_ids_to_tokens(tail)))
