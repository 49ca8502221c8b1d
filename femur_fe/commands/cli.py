"""The ``femur-fe`` command line: one entry point with subcommands.

Each subcommand lives in ``femur_fe/commands/<name>.py`` and defines
``register(subparsers)`` (adds its parser and sets ``func``). Errors derived from
:class:`femur_fe.errors.FemurFeError` and file-system errors are printed as one clear line
(exit 2), never as a traceback; any other exception is a bug and is printed as one line too
(exit 3); set ``FEMUR_FE_DEBUG=1`` to see the traceback. Named warnings of a run
(:mod:`femur_fe.diagnostics`) are printed by the commands after their numbers.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .._version import __version__
from ..errors import FemurFeError
from . import (
    batch,
    check,
    compare,
    demo,
    export,
    info,
    make_bone,
    mesh,
    regions,
    run,
    sweep,
    verify,
    view,
)

#: subcommand modules in help order
COMMANDS = (demo, info, make_bone, mesh, check, regions, run, compare, sweep, batch, view, export, verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="femur-fe",
        description="Finite-element bone strength for femur and vertebra (units: mm, N, MPa, g/cm^3).",
    )
    parser.add_argument("--version", action="version", version=f"femur_fe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS:
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except BrokenPipeError:  # the output went to a reader that stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (FemurFeError, OSError) as exc:
        if os.environ.get("FEMUR_FE_DEBUG") == "1":
            raise
        print(f"femur-fe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"femur-fe {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        print(f"femur-fe {args.command}: error: out of memory ({exc}); the model is too large for this machine: "
              "use a larger element size (--size) or a smaller region", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, and how to get the traceback to report it
        if os.environ.get("FEMUR_FE_DEBUG") == "1":
            raise
        print(f"femur-fe {args.command}: internal error ({type(exc).__name__}: {exc}); this is a bug in femur_fe: "
              "rerun with FEMUR_FE_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 3
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
