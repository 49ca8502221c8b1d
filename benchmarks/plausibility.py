"""Strength of the bundled femur (sideways fall) and vertebra (compression) in three bone states.

Prints a table to compare with published ranges (biomechanics.md 2.3, 3): sideways-fall femur
roughly 1.5-6 kN (Eckstein: 3951 +/- 1659 N, 54 pairs aged 79 +/- 11), vertebral compression
roughly 2-8 kN (Farahmand 2013 T12 5.07 +/- 2.33 kN). Run: ``python benchmarks/plausibility.py``.
"""
from __future__ import annotations

import argparse
import time
import tomllib

import numpy as np

import femur_fe as ff
from femur_fe.model import Model
from femur_fe.pipeline import prepare, run_nonlinear
from femur_fe.study import anatomical_zones, with_ct_calibration

CASES = {"femur": "sideways_fall.toml", "vertebra": "vertebral_compression.toml"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--margin", type=float, default=0.0, help="failure.params.exclude_margin_mm (default 0)")
    ap.add_argument("--nonlinear", action="store_true",
                    help="also the nonlinear strength (the case's [nonlinear] definition; about a minute per femur)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a load-case value in both cases, e.g. nonlinear.strength=peak (TOML value)")
    ap.add_argument("--bones", nargs="+", choices=sorted(CASES), default=list(CASES), help="bones to run")
    ap.add_argument("--by-zone", action="store_true",
                    help="also the linear strength with the node risk searched in one anatomical zone at a time "
                         "(femur_fe.study.anatomical_zones; node-based criteria only)")
    args = ap.parse_args(argv)
    print(f"{'bone':9s} {'state':13s} {'vBMD mg/cm3':>11s} {'stiffness N/mm':>15s} {'strength N':>11s} "
          f"{'nonlinear N':>22s}  criterion  (s)")
    for bone in args.bones:
        case = ff.load_case(ff.loadcases_dir() / CASES[bone])
        if args.margin:
            case = case.with_values({"failure.params.exclude_margin_mm": args.margin})
        if args.set:  # all at once: e.g. a criterion and its parameters
            case = case.with_values({k.strip(): tomllib.loads(f"v = {v}")["v"]
                                     for k, _, v in (item.partition("=") for item in args.set)})
        for state in ("healthy", "osteopenic", "osteoporotic"):
            t0 = time.perf_counter()
            files = ff.bundled_bone(bone, state)
            c = with_ct_calibration(case, files.calibration)
            model = Model.from_ct(ff.read_mesh(files.mesh), ff.read_ct(files.ct, unit="HU"), c.material,
                                  outside="nearest")
            an = prepare(c, model)
            res = an.solve()
            nl = "-"
            if args.nonlinear:
                r = run_nonlinear(an, res)
                nl = "not reached" if r.strength_N is None else f"{r.strength_N:.0f}"
                if r.endpoint_mm is not None:
                    nl += f" (at {r.endpoint_mm:.2f} mm)"
            print(f"{bone:9s} {state:13s} {model.integral_vbmd_mg_cm3():11.0f} {res.stiffness_N_per_mm:15.0f} "
                  f"{res.linear.strength_N:11.0f} {nl:>22s}  {res.linear.criterion}  ({time.perf_counter() - t0:.0f})")
            if args.by_zone and res.linear.risk.node is not None:
                names, zone = anatomical_zones(an.frame, model.mesh, bone)
                parts = []
                for k, zname in enumerate(names):
                    nodes = np.unique(model.mesh.cells[zone == k])
                    governing = np.nanmax(res.linear.risk.node[nodes], initial=0.0)
                    parts.append(f"{zname} {res.linear.applied_load_N / governing:.0f} N" if governing > 0
                                 else f"{zname} -")
                print(f"{'':23s} linear strength by zone: " + ", ".join(parts))


if __name__ == "__main__":
    main()
