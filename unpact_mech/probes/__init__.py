"""Probes (a prompt and the answer whose log-prob we study) and their tokenised form.

Formatting lives here: ``chat`` renders the prompt with the tokenizer's chat template (instruct models),
``plain`` uses ``Question: ...\\nAnswer:`` and ``raw`` the prompt text as it is (a benchmark that writes its own
prompt, as lm-evaluation-harness's WMDP task does; BOS added where the tokenizer adds one). Only the tokens of the user's prompt text are *attributable*
(leave-one-out deletes them, emphasis scales them); template scaffolding, the system prompt and BOS are not,
unless ``attribute_scaffolding=True``. A model's :class:`ChatArgs` (a system turn, the template's date string)
are rendered with every chat prompt of its tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unpact_mech.core.errors import UnpactError
from unpact_mech.core.io import atomic_write_text
from unpact_mech.model.chat import chat_args
from unpact_mech.model.subject import Subject
from unpact_mech.probes.words import WORD

Format = str  # "chat" | "plain" | "raw" | "auto", checked at run time by _resolve_format
FORMATS = ("auto", "chat", "plain", "raw")
PLAIN_TEMPLATE = "Question: {prompt}\nAnswer:"


def chat_text(tokenizer: Any, turns: Sequence[tuple[str, str]], generation_prompt: bool) -> str:
    """The chat template over ``(role, content)`` turns, after the system turn of the tokenizer's
    :class:`ChatArgs` and with its date string (``preprocess_chat_instance``'s rendering)."""
    args = chat_args(tokenizer)
    msgs = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    msgs += [{"role": r, "content": c} for r, c in turns]
    extra = {"date_string": args.date_string} if args.date_string else {}
    return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt, **extra))


class ProbeError(UnpactError):
    """A probe that cannot be used (empty text, too long, fact not inside the answer...)."""


SPLITS = ("forget", "retain", "general")  # what the analyses do with a probe: test forgetting, keep, control


@dataclass(frozen=True)
class Probe:
    """One question/answer pair. ``fact`` is the span of ``answer`` that carries the fact (default: all)."""

    id: str
    prompt: str
    answer: str
    split: str = "forget"
    fact: str | None = None
    domain: str | None = None
    keywords: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("prompt", "answer", "split"):
            if not isinstance(getattr(self, name), str):
                raise ProbeError(f"probe '{self.id}': field '{name}' must be a string, got "
                                 f"{type(getattr(self, name)).__name__} {getattr(self, name)!r}")
        for name in ("fact", "domain"):
            val = getattr(self, name)
            if val is not None and not isinstance(val, str):
                raise ProbeError(f"probe '{self.id}': field '{name}' must be a string or null, got {val!r}")
        if not all(isinstance(k, str) for k in self.keywords):
            raise ProbeError(f"probe '{self.id}': 'keywords' must be a list of strings")
        if not str(self.id):
            raise ProbeError("probe has an empty id")
        if self.split not in SPLITS:
            raise ProbeError(f"probe '{self.id}': unknown split {self.split!r}; splits are {', '.join(SPLITS)}")
        if not self.prompt or not self.prompt.strip():
            raise ProbeError(f"probe '{self.id}': empty prompt")
        if not self.answer or not self.answer.strip():
            raise ProbeError(f"probe '{self.id}': empty answer")
        if self.fact is not None and self.fact not in self.answer:
            raise ProbeError(f"probe '{self.id}': fact span {self.fact!r} is not inside answer {self.answer!r}")

    @classmethod
    def from_dict(cls, d: Any) -> Probe:  # any parsed JSON value: checked here
        known = {"id", "prompt", "answer", "split", "fact", "domain", "keywords"}
        if not isinstance(d, dict):
            raise ProbeError(f"a probe record must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("id", "prompt", "answer") if k not in d]
        if missing:
            raise ProbeError(f"probe record {d!r} lacks field(s) {missing}; expected id, prompt, answer")
        if not isinstance(d["id"], (str, int)) or isinstance(d["id"], bool):
            raise ProbeError(f"probe id must be a string or an integer, got {d['id']!r}")
        if not isinstance(d.get("keywords") or [], list) or not isinstance(d.get("meta") or {}, dict):
            raise ProbeError(f"probe '{d['id']}': 'keywords' must be a list and 'meta' an object")
        for name in ("prompt", "answer", "split", "fact", "domain"):
            val = d.get(name)
            if not isinstance(val, str) and (name in ("prompt", "answer", "split") and name in d or val is not None):
                raise ProbeError(f"probe '{d['id']}': field '{name}' must be a string, got {type(val).__name__} {val!r}")
        if not all(isinstance(k, str) for k in d.get("keywords") or []):
            raise ProbeError(f"probe '{d['id']}': 'keywords' must be a list of strings")
        meta = {k: v for k, v in d.items() if k not in known and k != "meta"} | dict(d.get("meta") or {})
        return cls(
            id=str(d["id"]),
            prompt=d["prompt"],
            answer=d["answer"],
            split=d.get("split", "forget"),
            fact=d.get("fact"),
            domain=d.get("domain"),
            keywords=tuple(d.get("keywords") or ()),
            meta=meta,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keywords"] = list(self.keywords)
        return d


def load_probes(path: str | Path) -> list[Probe]:
    """Read probes from a JSON-lines file (fields: id, prompt, answer; optional split, fact, domain)."""
    path = Path(path)
    if path.is_dir():
        raise ProbeError(f"probe file '{path}' is a directory; give a JSON-lines file")
    if not path.is_file():
        raise ProbeError(f"probe file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ProbeError(f"probe file '{path}' is not UTF-8 text ({err.reason} at byte {err.start}); "
                         "save it as UTF-8") from err
    probes = []
    for n, line in enumerate(text.split("\n"), 1):  # JSON lines end at \n only: U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            probes.append(Probe.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ProbeError) as err:
            raise ProbeError(f"{path}:{n}: {err}") from err
    if not probes:
        raise ProbeError(f"probe file '{path}' holds no probes")
    check_unique_ids(probes, str(path))
    return probes


def check_unique_ids(probes: Sequence[Probe], where: str = "the probe set") -> None:
    """Refuse duplicate probe ids (rows of different probes would be mixed under one id)."""
    seen: dict[str, int] = {}
    for p in probes:
        seen[p.id] = seen.get(p.id, 0) + 1
    dups = sorted(k for k, n in seen.items() if n > 1)
    if dups:
        raise ProbeError(f"{where}: duplicate probe id(s) {dups[:5]}{' ...' if len(dups) > 5 else ''}; ids must be "
                         "unique")


def save_probes(probes: Iterable[Probe], path: str | Path) -> Path:
    """Write probes as JSON lines (atomically)."""
    return atomic_write_text(path, "".join(json.dumps(p.to_dict()) + "\n" for p in probes))


@dataclass(frozen=True)
class TokenizedProbe:
    """Token ids of prompt + answer, with the answer span and which prompt positions are attributable."""

    probe: Probe
    ids: tuple[int, ...]
    prompt_len: int
    attributable: tuple[int, ...]
    tokens: tuple[str, ...]
    fact_positions: tuple[int, ...]
    format: str
    # the user prompt's words (``unpact_mech.probes.words.WORD``) and the attributable positions of each: sub-word
    # tokens grouped by character offsets, so "Berlin" split into "Ber"+"lin" is one word
    words: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def answer_positions(self) -> range:
        return range(self.prompt_len, len(self.ids))

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.prompt_len

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.ids[: self.prompt_len]

    @property
    def answer_ids(self) -> tuple[int, ...]:
        return self.ids[self.prompt_len :]


def _resolve_format(tokenizer: Any, fmt: Format) -> str:
    if fmt == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ProbeError("format 'chat' asked for, but this tokenizer has no chat template; use 'plain'")
    if fmt not in FORMATS:
        raise ProbeError(f"unknown probe format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def render_prompt(tokenizer: Any, prompt: str, fmt: Format = "auto") -> tuple[str, int, int]:
    """Rendered prompt text and the character span [start, end) of the user's prompt inside it."""
    fmt = _resolve_format(tokenizer, fmt)
    if fmt == "chat":
        text = chat_text(tokenizer, [("user", prompt)], generation_prompt=True)
    elif fmt == "plain":
        text = PLAIN_TEMPLATE.format(prompt=prompt)
    else:
        text = prompt
    start = text.rfind(prompt)
    if start < 0:
        raise ProbeError(f"the {fmt} template altered the prompt text {prompt!r}; cannot locate it")
    return text, start, start + len(prompt)


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def tokenize_probe(
    tokenizer: Any,
    probe: Probe,
    fmt: Format = "auto",
    max_len: int | None = None,
    attribute_scaffolding: bool = False,
) -> TokenizedProbe:
    """Tokenise a probe: prompt (rendered) then answer, each tokenised separately and concatenated."""
    fmt_r = _resolve_format(tokenizer, fmt)
    text, c0, c1 = render_prompt(tokenizer, probe.prompt, fmt_r)
    p_ids, p_off = _encode(tokenizer, text)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    attributable = [
        i
        for i, (s, e) in enumerate(p_off)
        if p_ids[i] not in special and (attribute_scaffolding or (e > c0 and s < c1))
    ]
    bos = fmt_r != "chat" and _adds_bos(tokenizer)
    if bos:
        p_ids = [tokenizer.bos_token_id] + p_ids
        attributable = [i + 1 for i in attributable]
    answer_text = probe.answer if fmt_r == "chat" else " " + probe.answer.lstrip()
    a_ids, a_off = _encode(tokenizer, answer_text)
    if not a_ids:
        raise ProbeError(f"probe '{probe.id}': the answer tokenises to nothing")
    if not attributable:
        raise ProbeError(f"probe '{probe.id}': no attributable prompt token")
    ids = p_ids + a_ids
    if max_len is not None and len(ids) > max_len:
        raise ProbeError(
            f"probe '{probe.id}' is {len(ids)} tokens long, longer than the model context of {max_len}"
        )
    words = _group_words(text, c0, c1, p_off, attributable, 1 if bos else 0)
    fact = probe.fact or probe.answer.strip()
    f0 = answer_text.find(fact)
    f1 = f0 + len(fact)
    fact_pos = [len(p_ids) + j for j, (s, e) in enumerate(a_off) if e > f0 and s < f1]
    tokens = tuple(tokenizer.decode([t]) for t in ids)
    return TokenizedProbe(
        probe=probe,
        ids=tuple(ids),
        prompt_len=len(p_ids),
        attributable=tuple(attributable),
        tokens=tokens,
        fact_positions=tuple(fact_pos) or tuple(range(len(p_ids), len(ids))),
        format=fmt_r,
        words=words,
    )


def _group_words(text: str, c0: int, c1: int, offsets: Sequence[tuple[int, int]], attributable: Sequence[int],
                 shift: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Words of ``text[c0:c1]`` with the attributable token positions overlapping each (``shift``: a BOS
    prepended after encoding moves every position by one)."""
    out = []
    for m in WORD.finditer(text, c0, c1):
        s, e = m.span()
        pos = tuple(i for i in attributable if offsets[i - shift][1] > s and offsets[i - shift][0] < e)
        if pos:
            out.append((m.group(), pos))
    return tuple(out)


def tokenize_probes(subject: Subject, probes: Sequence[Probe], fmt: Format = "auto", **kw: Any) -> list[TokenizedProbe]:
    """Tokenise probes for a Subject (checks each against its context length)."""
    return [tokenize_probe(subject.tokenizer, p, fmt, max_len=subject.n_ctx, **kw) for p in probes]


class ProbeSet:
    """Probes and their tokenisation for one tokenizer and format (built once, passed everywhere)."""

    def __init__(self, tprobes: Iterable[TokenizedProbe], fingerprint: str, fmt: str) -> None:
        self.tprobes = list(tprobes)
        check_unique_ids([tp.probe for tp in self.tprobes], "the probe set")
        self.fingerprint, self.fmt = fingerprint, fmt
        self._by_id = {tp.probe.id: tp for tp in self.tprobes}

    @classmethod
    def build(cls, subject: Any, probes: Sequence[Probe | TokenizedProbe], fmt: Format = "auto") -> ProbeSet:
        raw = [p for p in probes if isinstance(p, Probe)]
        tok = iter(tokenize_probes(subject, raw, fmt))
        tps = [p if isinstance(p, TokenizedProbe) else next(tok) for p in probes]
        return cls(tps, subject.tokenizer_fingerprint(), fmt)

    def __len__(self) -> int:
        return len(self.tprobes)

    def __iter__(self) -> Any:
        return iter(self.tprobes)

    @property
    def ids(self) -> list[str]:
        return [tp.probe.id for tp in self.tprobes]

    def get(self, probe: Probe | TokenizedProbe | str) -> TokenizedProbe:
        pid = probe if isinstance(probe, str) else (probe.probe.id if isinstance(probe, TokenizedProbe) else probe.id)
        if pid not in self._by_id:
            raise UnpactError(f"probe '{pid}' is not in this probe set")
        tp = self._by_id[pid]
        if isinstance(probe, Probe) and probe != tp.probe:
            raise UnpactError(f"probe '{pid}' differs from the probe of that id in this probe set")
        return tp

    def select(self, probes: Sequence[Probe | TokenizedProbe | str] | None = None) -> list[TokenizedProbe]:
        """The tokenised probes for ``probes`` (all when None), in the order given."""
        return list(self.tprobes) if probes is None else [self.get(p) for p in probes]
