"""``unpact`` command line (``main``): parse, run one command, print a user error as one line (exit 2).

Only this package imports inside functions, so that start-up stays fast.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

from unpact_mech.cli.commands import COMMANDS, _params
from unpact_mech.cli.parser import build_parser
from unpact_mech.errors import UnpactError


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Errors the user can fix (``UnpactError``, unreadable files) print one line and return 2
    (``--debug``: with the traceback); anything else is an internal error and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        if "alpha" in vars(args):
            _params(args)  # KeyToken parameters are checked before any model loads
        return COMMANDS[args.cmd](args)
    except (UnpactError, OSError) as err:
        if args.debug:
            traceback.print_exc()
        msg = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.filename else str(err)
        print(f"unpact {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
