"""``femur-fe check CASE.toml``: validate a load case and print it fully resolved."""
from __future__ import annotations

import argparse
import json

from .run import case_with_sets


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a load case and print it with every default filled in",
        description=("Read a load-case TOML (or a preset by name, as `run` takes it), validate it (unknown keys, "
                     "types, ranges, region references) and "
                     "print the fully resolved case as TOML (or JSON with --json). Exit code 0 when valid; "
                     "an invalid case prints one line naming the file, table and key, and exits 2."),
    )
    p.add_argument("case", help="load-case TOML file or preset name (e.g. sideways_fall)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a case value by TOML key path, as `run --set` does")
    p.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    case = case_with_sets(args.case, args.set)
    if args.json:
        print(json.dumps(case.to_dict(), indent=2))
    else:
        print(f"# {args.case}: valid (schema_version {case.schema_version}); resolved values:")
        print(case.to_toml(), end="")
    return 0
