"""``unpact`` command line (``main``): parse, check, run one command, print a user error as one line (exit 2).

Every option is checked when parsed (``unpact_mech.core.options``), options a run would ignore are refused, and the
model specs are checked, all before any model or data loads. Ctrl-C prints one line (what was kept, how to go
on) and exits 130. Only this package imports inside functions, so that start-up stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from unpact_mech.cli import study as _study  # noqa: F401  (registers study, evaluate, data, merge)
from unpact_mech.cli.commands import COMMANDS, _params
from unpact_mech.cli.parser import build_parser
from unpact_mech.cli.plan import PlanShown, check_plannable
from unpact_mech.cli.scale import check_executor
from unpact_mech.core.errors import UnpactError
from unpact_mech.core.options import resolve_routed

INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _check_specs(args: argparse.Namespace) -> None:
    """Every model spec of the command, checked without loading anything (a missing --unlearned is found before
    --base loads)."""
    from unpact_mech.model.loading import check_spec

    for dest in ("model", "base", "unlearned", "retain_model"):
        spec = getattr(args, dest, None)
        for one in spec if isinstance(spec, list) else [spec]:
            if isinstance(one, tuple):  # NAME=SPEC
                one = one[1]
            if isinstance(one, str):
                check_spec(one)


def _check_placement(args: argparse.Namespace) -> None:
    """--device, --device-map and --max-memory together make sense before a model loads."""
    if "device_map" in vars(args):
        from unpact_mech.model.loading import placement_kwargs

        placement_kwargs(args.device, args.device_map, None, args.max_memory)


def _interrupted(args: argparse.Namespace) -> str:
    """What an interrupted command kept, and how to go on."""
    if args.cmd == "unlearn":
        from unpact_mech.unlearning.resume import ResumeFiles

        files = ResumeFiles.beside(Path(args.out))
        if files.exists():
            return f"the resume state {files.meta} was kept; rerun the same command to resume from it"
        return f"no checkpoint was written ({args.out}); rerun the same command to start over"
    if args.cmd == "demo":
        return f"finished stages are kept in {args.out}; rerun the same command to go on from them"
    out = getattr(args, "out", None)
    return f"nothing was written{f' to {out}' if out else ''}; rerun the command to start over"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Errors the user can fix (``UnpactError``, unreadable files) print one line and return 2
    (``--debug``: with the traceback); an interrupt prints one line and returns 130; anything else is an
    internal error and keeps its traceback. A value argparse refuses returns 2 too (``--help`` returns 0)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    logging.getLogger("unpact_mech").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        resolve_routed(args)
        if "alpha" in vars(args):
            _params(args)  # KeyToken parameters are checked before any model loads
        _check_specs(args)
        _check_placement(args)
        check_executor(args)
        check_plannable(args)
        return COMMANDS[args.cmd](args)
    except PlanShown:
        return 0
    except (UnpactError, OSError) as err:
        if args.debug:
            traceback.print_exc()
        msg = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.filename else str(err)
        print(f"unpact {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"\nunpact {args.cmd}: interrupted: {_interrupted(args)}", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
