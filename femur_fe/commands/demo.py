"""``femur-fe demo``: the main job on the bundled bone.

The bundled osteoporotic proximal femur goes through a sideways fall; the baseline is
compared with a 12-month regenerative scenario, standard care and no treatment
(``loadcases/scenarios/regeneration_demo.toml``); a compact table is printed and
everything (VTU, JSON, CSV, PNG, HTML) is written to ``./femur_fe_out/``, which each demo
run replaces (it says so); another ``-o`` folder is refused when it exists unless ``--overwrite``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..case.comparison import load_comparison
from ..case.presets import loadcases_dir
from ..io.outdir import is_femur_fe_output
from ..studies.compare import compare
from .compare import print_run_warnings


#: where the demo writes when no -o is given (replaced on every demo run, as the demo says)
DEFAULT_OUT = "femur_fe_out"


def register(sub) -> None:
    p = sub.add_parser("demo", help="main job: osteoporotic femur, sideways fall, therapy comparison",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--out", "-o", default=None,
                   help=f"output folder (default {DEFAULT_OUT}, replaced by each demo run; another folder is "
                        "refused when it exists unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder written by femur_fe (whole, never mixed)")
    p.add_argument("--bone", choices=("femur", "vertebra"), default="femur",
                   help="bundled bone (default %(default)s; vertebra: axial compression)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:

    t0 = time.perf_counter()
    name = "regeneration_demo" if args.bone == "femur" else "regeneration_demo_vertebra"
    spec = load_comparison(loadcases_dir() / "scenarios" / f"{name}.toml")
    out = Path(args.out if args.out is not None else DEFAULT_OUT)
    overwrite = args.overwrite
    if args.out is None and out.is_dir() and any(out.iterdir()) and is_femur_fe_output(out):
        overwrite = True
        print(f"femur_fe demo: replacing {out}/ (the demo's default folder; -o DIR writes elsewhere)",
              file=sys.stderr, flush=True)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if progress:
        progress(f"femur_fe demo: {spec.specimen.label}, load case {spec.case.name}, "
                 f"{len(spec.scenarios)} scenarios -> {out}/")
    res = compare(spec, out, overwrite=overwrite, progress=progress)  # ends with report.html (femur_fe.viz.report)
    crit = res.baseline.strength_summary.get("criterion") or {}
    print()
    params = ", ".join(f"{k} {v}" for k, v in (crit.get("parameters") or {}).items())
    print(f"{spec.specimen.label}, {spec.case.name}: strength by {crit.get('name')}" + (f" ({params})" if params else ""))
    print(res.table())
    c = res.baseline.strength_summary.get("classification")
    if c:
        band = f", band {c['band']}" if c.get("band") else ""
        print(f"baseline classification: {c['label']} (threshold {c['threshold_N']:.0f} N, {c['site']}, {c['sex']}; "
              f"{c['source'].split(' fragile')[0]}){band}")
    phi = res.baseline.strength_summary.get("factor_of_risk")
    if phi is not None:
        print(f"baseline factor of risk (fall impact / strength): {phi:.2f}")
    print_run_warnings(res.warnings)
    print(f"\nwritten to {out}/: " + ", ".join(sorted(Path(str(p)).name for p in res.files.values())))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0
