"""What the toolkit tells the user while it works, through :mod:`logging` (logger ``unpact_mech``).

Progress lines (``say``) are INFO records; by default one handler writes them to the *current* ``sys.stdout``
(looked up at each record, so a notebook cell or a captured stream sees them), and warnings, errors and lines
marked ``stderr`` (announcements that must not mix with a command's printed table) to ``sys.stderr``.
Silence it with ``logging.getLogger("unpact_mech").setLevel(logging.WARNING)``, or replace the handler; the CLI
configures the level (``unpact --quiet``).
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("unpact_mech")


class ConsoleHandler(logging.Handler):
    """INFO to the current ``sys.stdout``; WARNING and above, and records with ``stderr=True``, to ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        to_err = record.levelno >= logging.WARNING or bool(getattr(record, "stderr", False))
        stream = sys.stderr if to_err else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging's contract: a broken stream never breaks the computation
            self.handleError(record)


if not any(isinstance(h, ConsoleHandler) for h in LOGGER.handlers):
    LOGGER.addHandler(ConsoleHandler())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # one copy of each line, whatever the root logger does


def say(message: str, stderr: bool = False) -> None:
    """One progress line (INFO) of the toolkit; ``stderr``: beside a command's printed output, not in it."""
    LOGGER.info(message, extra={"stderr": stderr})


def warn(message: str) -> None:
    """A result the user should know is degenerate (WARNING, to stderr)."""
    LOGGER.warning(message)
