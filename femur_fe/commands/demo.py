"""``femur-fe demo``: the main job on the bundled bone.

The bundled osteoporotic proximal femur goes through a sideways fall; the baseline is
compared with a 12-month regenerative scenario, standard care and no treatment
(``loadcases/scenarios/regeneration_demo.toml``); a compact table is printed and
everything (VTU, JSON, CSV, PNG, HTML) is written to ``./femur_fe_out/``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..case.comparison import load_comparison
from ..case.presets import loadcases_dir
from ..studies.compare import compare


def register(sub) -> None:
    p = sub.add_parser("demo", help="main job: osteoporotic femur, sideways fall, therapy comparison",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--out", "-o", default="femur_fe_out", help="output folder (default %(default)s)")
    p.add_argument("--bone", choices=("femur", "vertebra"), default="femur",
                   help="bundled bone (default %(default)s; vertebra: axial compression)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args) -> int:

    t0 = time.perf_counter()
    name = "regeneration_demo" if args.bone == "femur" else "regeneration_demo_vertebra"
    spec = load_comparison(loadcases_dir() / "scenarios" / f"{name}.toml")
    out = Path(args.out)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if progress:
        progress(f"femur_fe demo: {spec.specimen.label}, load case {spec.case.name}, "
                 f"{len(spec.scenarios)} scenarios -> {out}/")
    res = compare(spec, out, progress=progress)  # ends with report.html (femur_fe.viz.report)
    crit = res.baseline.strength_summary.get("criterion") or {}
    print()
    print(f"{spec.specimen.label}, {spec.case.name}: strength by {crit.get('name')} {crit.get('parameters')}")
    print(res.table())
    c = res.baseline.strength_summary.get("classification")
    if c:
        band = f", band {c['band']}" if c.get("band") else ""
        print(f"baseline classification: {c['label']} (threshold {c['threshold_N']:.0f} N, {c['site']}, {c['sex']}; "
              f"{c['source'].split(' fragile')[0]}){band}")
    phi = res.baseline.strength_summary.get("factor_of_risk")
    if phi is not None:
        print(f"baseline factor of risk (fall impact / strength): {phi:.2f}")
    print(f"\nwritten to {out}/: " + ", ".join(sorted(Path(str(p)).name for p in res.files.values())))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0
