"""The one error type for everything a user can cause (bad input, files, settings, degenerate runs).

The CLI prints an :class:`UnpactError` as one line and exits 2 (``--debug`` adds the traceback); any other
exception is an internal error and keeps its traceback (exit 1). Subclasses say which part of the toolkit
refused; every message names the problem and the fix.
"""

from __future__ import annotations

import math
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


def check_finite_factor(factor: Any, what: str = "emphasis factor") -> float:
    """``factor`` as a float if it is finite and > 0, else one clear error."""
    try:
        f = float(factor)
    except (TypeError, ValueError) as err:
        raise UnpactError(f"{what} must be a number, got {factor!r}") from err
    if not math.isfinite(f) or f <= 0:
        raise UnpactError(f"{what} must be finite and > 0, got {factor!r}")
    return f


class ModelSpecError(UnpactError):
    """A model spec that cannot be resolved or loaded."""
