"""``femur-fe compare SCENARIOS.toml -o DIR``: baseline against therapy scenarios on one bone."""
from __future__ import annotations

import sys

from ..studies.compare import compare


def print_run_warnings(warnings: dict) -> None:
    """Named warnings per run (run name -> warnings), after the table; also in comparison.json."""
    if not any(warnings.values()):
        return
    groups = list(warnings.values())
    common = [w for w in groups[0] if all(w in ws for ws in groups[1:])] if len(groups) > 1 else []
    lines = [f"  all runs: {w}" for w in common]
    lines += [f"  {name}: {w}" for name, ws in warnings.items() for w in ws if w not in common]
    print(f"warnings ({len(lines)}, also in comparison.json \"warnings\" and each run's summary.json):")
    print("\n".join(lines))


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare baseline and therapy scenarios (strength gained)",
                       description="Run the baseline and each [[scenario]] of a comparison file on the same bone "
                                   "and load case; write result folders, comparison.json/.csv and plots.")
    p.add_argument("spec", help="comparison TOML (case, [bone], [subject], [[scenario]] ...)")
    p.add_argument("--out", "-o", default="femur_fe_out", help="output folder (default %(default)s; written whole: "
                                                               "an existing one is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder written by femur_fe (whole, never mixed)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    res = compare(args.spec, args.out, overwrite=args.overwrite, progress=progress)
    print(res.table())
    print_run_warnings(res.warnings)
    print(f"written to {args.out}/ in {res.seconds:.1f} s; report: {res.files['report_html']}")
    return 0
