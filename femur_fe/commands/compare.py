"""``femur-fe compare SCENARIOS.toml -o DIR``: baseline against therapy scenarios on one bone."""
from __future__ import annotations

import sys

from ..studies.compare import compare


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare baseline and therapy scenarios (strength gained)",
                       description="Run the baseline and each [[scenario]] of a comparison file on the same bone "
                                   "and load case; write result folders, comparison.json/.csv and plots.")
    p.add_argument("spec", help="comparison TOML (case, [bone], [subject], [[scenario]] ...)")
    p.add_argument("--out", "-o", default="femur_fe_out", help="output folder (default %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    res = compare(args.spec, args.out, progress=progress)
    print(res.table())
    print(f"written to {args.out}/ in {res.seconds:.1f} s; report: {res.files['report_html']}")
    return 0
