"""What a model's configuration adds to its chat template: a system turn and the template's date string, held
with the tokenizer so that every prompt it renders carries them (no heavy imports: checkpoints read it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unpact_mech.core.errors import UnpactError

CHAT_ARGS_ATTR = "_unpact_chat_args"


@dataclass(frozen=True)
class ChatArgs:
    """What a model's configuration adds to its chat template when prompts are rendered: a system turn and the
    template's ``date_string`` variable (open-unlearning's ``template_args``, ``configs/model/*.yaml``: e.g.
    Llama-3.2-1B-Instruct ``"You are a helpful assistant."`` and ``"10 Apr 2025"``)."""

    system_prompt: str | None = None
    date_string: str | None = None

    def __post_init__(self) -> None:
        for name in ("system_prompt", "date_string"):
            val = getattr(self, name)
            if val is not None and (not isinstance(val, str) or not val.strip()):
                raise UnpactError(f"chat {name} must be a non-empty string or None, got {val!r}")


def set_chat_args(tokenizer: Any, args: ChatArgs | None) -> None:
    """Render every chat prompt of ``tokenizer`` with ``args`` (None: the template's own defaults)."""
    setattr(tokenizer, CHAT_ARGS_ATTR, args if args is not None and args != ChatArgs() else None)


def chat_args(tokenizer: Any) -> ChatArgs:
    return getattr(tokenizer, CHAT_ARGS_ATTR, None) or ChatArgs()
