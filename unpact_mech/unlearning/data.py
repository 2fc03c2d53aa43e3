"""Unlearning data: probes (QA) or raw text (loss on all tokens) -> padded batches.

Which QA tokens carry a label depends on ``loss_convention``:

* ``"open_unlearning"`` (default): the sequence and labels of ``preprocess_chat_instance``
  (:func:`unpact_mech.probes.labels.reference_sequence`, the same tokens the open-unlearning metrics score): the
  answer, the chat template's closing tokens and EOS; in the plain format the answer but its first token (joined
  to the prompt's trailing space, as in the reference), then EOS.
* ``"unpact_v1"``: the answer tokens only (this toolkit's first form).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from unpact_mech.probes import Probe, tokenize_probe
from unpact_mech.probes.labels import labelled
from unpact_mech.unlearning.config import UnlearningError
from unpact_mech.unlearning.losses import Batch, check_convention

REFUSALS = ("I don't know.", "I'm not sure about that.", "I cannot answer that.", "I have no idea.")


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    fact_positions: tuple[int, ...] = ()
    # positions that belong to this example's content (QA: question + answer, not the shared chat template;
    # raw text: all but the first token); RMU's forget term acts only here
    content: tuple[int, ...] = ()


def qa_example(tokenizer: Any, probe: Probe, fmt: str = "auto", answer: str | None = None,
               convention: str = "open_unlearning") -> Example:
    """One QA example; labels per ``convention`` (module docstring). RMU's ``content`` is the question and the
    answer, never the template (shared with every other example)."""
    check_convention(convention)
    p = probe if answer is None else replace(probe, answer=answer, fact=None)
    tp = tokenize_probe(tokenizer, p, fmt)
    lab = labelled(tokenizer, tp) if convention == "open_unlearning" else tp
    labels = [-100] * lab.prompt_len + list(lab.answer_ids)
    content = tuple(lab.attributable) + tuple(range(tp.prompt_len, min(len(tp.ids), len(lab.ids))))
    return Example(list(lab.ids), labels, lab.fact_positions, content)


def text_example(tokenizer: Any, text: str, max_len: int = 256) -> Example:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_len]
    if len(ids) < 2:
        raise UnlearningError(f"raw text too short to train on: {text[:40]!r}")
    return Example(ids, list(ids), (), tuple(range(1, len(ids))))


def to_examples(tokenizer: Any, data: Sequence[Probe | str], fmt: str = "auto",
                convention: str = "open_unlearning") -> list[Example]:
    if not data:
        raise UnlearningError("no training examples: give at least one probe or text (an empty forget or retain set)")
    return [qa_example(tokenizer, d, fmt, convention=convention) if isinstance(d, Probe) else text_example(tokenizer, d)
            for d in data]


def collate(examples: Sequence[Example], pad_id: int, device: Any = None) -> Batch:
    """Right-padded batch; an example with no labelled target token is refused (its loss would be undefined)."""
    empty = [r for r, e in enumerate(examples) if all(x == -100 for x in e.labels[1:])]
    if empty:
        raise UnlearningError(f"training example(s) {empty} have no labelled token to train on (every label after "
                              "the first is -100); give each example at least one answer token")
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    content = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        ids[r, : len(e.ids)] = torch.tensor(e.ids)
        labels[r, : len(e.ids)] = torch.tensor(e.labels)
        mask[r, : len(e.ids)] = 1
        content[r, list(e.content)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "content_mask": content}
    return batch if device is None else {k: v.to(device) for k, v in batch.items()}
