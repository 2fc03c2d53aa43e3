"""The tokens open-unlearning labels in an example, so that metrics score, and unlearning trains on, the same set.

* QA (``src/data/utils.py: preprocess_chat_instance``): the whole conversation is tokenized at once, EOS is
  appended unless it already ends the sequence, and labels are ``chat_ids[len(prompt_ids):]``, where
  ``prompt_ids`` is the prompt tokenized on its own.

  - chat format: the template rendered with the answer turn against the template with the generation prompt
    (``apply_chat_template``); on SmolLM2: the answer, ``<|im_end|>``, ``\\n``, ``<|im_end|>``.
  - plain format: open-unlearning's tag configs (``configs/model/Llama-2-7b-hf.yaml``, ``phi-1_5.yaml``:
    ``Question: `` / ``\\n`` / ``Answer: ``), so ``Question: q\\nAnswer: a`` against ``Question: q\\nAnswer: ``.
    The prompt's trailing space is a token of its own, while in the joint text it joins the answer's first
    word: on BPE and SentencePiece tokenizers the answer's first token is therefore *not* labelled, as in the
    reference (its comment calls this a tokenization mismatch). ``loss_convention='unpact_v1'`` and the findings'
    LP keep every answer token.
* raw text (``fmt='raw'``, MUSE's passages and MIA sets): the continuation after the prefix, no EOS
  (``preprocess_pretraining_instance``).

Sequence-level metrics average over every labelled token (``utils.py: evaluate_probability``); token-level ones
(Min-K%, Min-K%++, exact memorisation, extraction strength) drop the last labelled token
(``utils.py: tokenwise_logprobs``, ``tokenwise_vocab_logprobs``: "-1 to ignore eos prediction"), which in raw text
is a real answer token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from unpact_mech.probes import PLAIN_TEMPLATE, ProbeError, TokenizedProbe, chat_text


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def tag_text(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt text of open-unlearning's tag configs (``configs/model/Llama-2-7b-hf.yaml``: ``Question: `` /
    ``\\n`` / ``Answer: `` / ``\\n\\n``), also MUSE's ``metrics/knowmem.py`` format: ``Question: q\\nAnswer: a\\n\\n``
    per in-context example, then ``Question: question\\nAnswer: ``."""
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots) + PLAIN_TEMPLATE.format(prompt=question) + " "


def reference_ids(tokenizer: Any, pairs: Sequence[tuple[str, str]], chat: bool, probe_id: str | None = None
                  ) -> tuple[list[int], list[int]]:
    """``preprocess_chat_instance``'s ``(chat_ids, prompt_ids)`` of the last (question, answer) pair, the earlier
    pairs as in-context examples: the whole conversation tokenized at once, EOS appended unless last; labels are
    ``chat_ids[len(prompt_ids):]``. ``chat``: the model's template (``apply_chat_template``); else
    :func:`tag_text` with special tokens. With ``probe_id``, a chat template that does not render the answer turn
    as the prompt followed by the answer is refused, naming the probe."""
    question, answer = pairs[-1]
    if chat:
        turns = [m for q, a in pairs for m in (("user", q), ("assistant", a))]
        full, prompt = chat_text(tokenizer, turns, False), chat_text(tokenizer, turns[:-1], True)
        if probe_id is not None and (not full.startswith(prompt) or full.find(answer, len(prompt)) < 0):
            raise ProbeError(
                f"probe '{probe_id}': the chat template does not render the answer turn as the prompt followed by "
                "the answer, so its labelled tokens cannot be found; use fmt='plain' (to unlearn: or "
                "loss_convention='unpact_v1', answer tokens only)")
        ids, prompt_ids = _ids(tokenizer, full, False), _ids(tokenizer, prompt, False)
    else:
        text = tag_text(question, pairs[:-1])
        ids, prompt_ids = _ids(tokenizer, text + answer, True), _ids(tokenizer, text, True)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and ids[-1] != eos:
        ids.append(eos)
    return ids, prompt_ids


def reference_sequence(tokenizer: Any, tp: TokenizedProbe) -> tuple[list[int], int]:
    """open-unlearning's ``(input_ids, len(prompt_ids))`` of a QA probe (module docstring, :func:`reference_ids`):
    labels are ``input_ids[len(prompt_ids):]``."""
    ids, prompt_ids = reference_ids(tokenizer, [(tp.probe.prompt, tp.probe.answer)], tp.format == "chat",
                                    tp.probe.id)
    return ids, len(prompt_ids)


def labelled(tokenizer: Any, tp: TokenizedProbe) -> TokenizedProbe:
    """``tp`` as open-unlearning feeds it, with its labelled tokens as the answer span (:func:`reference_sequence`);
    raw text unchanged. Positions (attributable, words, fact tokens) stay where the two tokenizations agree: the
    fact tokens keep the answer's first token even where it is not labelled."""
    if tp.format == "raw":
        return tp
    ids, n = reference_sequence(tokenizer, tp)
    if tuple(ids) == tp.ids and n == tp.prompt_len:
        return tp
    same = next((i for i, (a, b) in enumerate(zip(ids, tp.ids)) if a != b), min(len(ids), len(tp.ids)))
    keep = min(same, n)
    facts = tuple(i for i in tp.fact_positions if i < same)
    return replace(tp, ids=tuple(ids), prompt_len=n,
                   tokens=tp.tokens[:same] + tuple(tokenizer.decode([t]) for t in ids[same:]),
                   attributable=tuple(i for i in tp.attributable if i < keep),
                   words=tuple((w, pos) for w, pos in tp.words if all(i < keep for i in pos)),
                   fact_positions=facts or tuple(range(n, len(ids))))
