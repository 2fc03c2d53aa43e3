"""The one error type for everything a user can cause (bad input, files, settings, degenerate runs).

The CLI prints an :class:`UnpactError` as one line and exits 2 (``--debug`` adds the traceback); any other
exception is an internal error and keeps its traceback (exit 1). Subclasses say which part of the toolkit
refused; every message names the problem and the fix.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any


class UnpactError(ValueError):
    """Something the user can fix; the message says what and how."""


class UnknownNameError(UnpactError, KeyError):
    """An unknown registered name (method, benchmark, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NonFiniteError(UnpactError):
    """A model produced NaN or infinite numbers (its weights or an intervention are broken)."""


class OutputError(UnpactError):
    """An output path that cannot or may not be written."""


MAX_FACTOR = 1000.0  # emphasis scales embeddings by the factor: beyond this they overflow in half precision


_DECIMAL = re.compile(r"\s*[+-]?[0-9]+\s*")  # ASCII digits only: int() would also take "1_0" and "١"
_NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")  # finite decimal notation


def _say(what: str, rule: str, got: Any) -> UnpactError:
    return UnpactError(f"{what + ' ' if what else ''}must be {rule}, got {got!r}")


def check_int(value: Any, what: str = "", lo: int = 1, hi: int | None = None) -> int:
    """``value`` (an int, or its decimal text) as an int in ``[lo, hi]``; fractions, bools and text refused."""
    rule = f"a whole number >= {lo}" if hi is None else f"a whole number in {lo}..{hi}"
    if isinstance(value, (bool, float)) or (isinstance(value, str) and not _DECIMAL.fullmatch(value)):
        raise _say(what, rule, value)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise _say(what, rule, value) from None
    if n < lo or (hi is not None and n > hi):
        raise _say(what, rule, value)
    return n


def check_float(value: Any, what: str = "", lo: float = 0.0, hi: float = math.inf, lo_open: bool = True,
                hi_open: bool = False) -> float:
    """``value`` as a finite float in the interval ``lo..hi`` (each end open or closed); NaN and inf refused."""
    rule = (f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}" if math.isfinite(hi)
            else f"a finite number {'>' if lo_open else '>='} {lo:g}")
    try:
        if isinstance(value, bool) or (isinstance(value, str) and not _NUMBER.fullmatch(value)):
            raise TypeError
        f = float(value)
    except (TypeError, ValueError):
        raise _say(what, rule, value) from None
    if not math.isfinite(f) or f < lo or f > hi or (lo_open and f == lo) or (hi_open and f == hi):
        raise _say(what, rule, value)
    return f


def check_unique(items: Sequence[Any], what: str = "") -> list[Any]:
    """A non-empty list with no item twice (a repeated item would give every row twice)."""
    items = list(items)
    if not items:
        raise UnpactError(f"{what + ' ' if what else ''}must name at least one value, got none")
    twice = sorted({str(x) for x in items if items.count(x) > 1})
    if twice:
        raise UnpactError(f"{what + ' ' if what else ''}names {', '.join(twice)} more than once; give each once")
    return items


def check_choices(items: Sequence[str], choices: Sequence[str], what: str = "") -> list[str]:
    """Unique, non-empty ``items``, each one of ``choices``."""
    bad = [x for x in items if x not in choices]
    if bad:
        raise UnpactError(f"{what + ' ' if what else ''}has unknown value(s) {', '.join(map(repr, bad))}; choose "
                          f"from {', '.join(choices)}")
    return check_unique(items, what)


def check_finite_factor(factor: Any, what: str = "emphasis factor") -> float:
    """``factor`` as a float if it is finite, > 0 and <= MAX_FACTOR, else one clear error."""
    return check_float(factor, what, 0.0, MAX_FACTOR)


class ModelSpecError(UnpactError):
    """A model spec that cannot be resolved or loaded."""


def renamed(new_value: Any, old_value: Any, new: str, old: str, default: Any) -> Any:
    """The value of an option renamed from ``old`` to ``new``: ``old`` works for one release with a
    ``DeprecationWarning`` (at the caller's caller); giving both is refused; neither gives ``default``."""
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise UnpactError(f"give {new}= (the new name of {old}=), not both")
    warnings.warn(f"{old}= is now {new}=; the old name is removed in the next release", DeprecationWarning,
                  stacklevel=3)
    return old_value
