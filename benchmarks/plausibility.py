"""Strength of the bundled femur (sideways fall) and vertebra (compression) in three bone states.

Prints a table to compare with published ranges sideways-fall femur
roughly 1.5-6 kN (Eckstein et al. 2004, J Bone Miner Res 19:379: 3951 +/- 1659 N, 54 pairs aged 79 +/- 11), vertebral compression
roughly 2-8 kN (Farahmand et al. 2013, Osteoporos Int 24:2971, T12 5.07 +/- 2.33 kN). Run: ``python benchmarks/plausibility.py``.
The last column says which strength each case's ``[failure] reference_strength`` sends to the factor
of risk and the classification (linear for the femur, nonlinear when run for the vertebra).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import tomllib

import femur_fe as ff
from femur_fe.analysis.prepare import prepare, run_nonlinear
from femur_fe.bone.model import Model
from femur_fe.studies.compare import anatomical_zones
from femur_fe.studies.run import case_for

CASES = {"femur": "sideways_fall.toml", "vertebra": "vertebral_compression.toml"}

#: NHANES III femoral neck, young white women: mean 0.858 g/cm^2, SD 0.120 (Looker et al. 1998, Osteoporos Int 8:468, [M]).
NECK_YOUNG_MEAN, NECK_YOUNG_SD = 0.858, 0.120


def neck_abmd(files) -> tuple[float, float]:
    """CTXA-like femoral-neck areal BMD of a bundled femur (g/cm^2) and its T-score.

    The QCT density (K2HPO4 mg/cm^3 above the 40 HU soft-tissue background) is projected onto the
    plane of the neck and shaft axes (the DXA view with the leg internally rotated) on a 1 mm
    grid; the neck box is 15 mm wide along the neck axis, centred where the projected neck is
    narrowest between the head and the neck-shaft junction. aBMD = mineral in the box / projected
    bone area (pixels above 0.1 g/cm^2). K2HPO4-equivalent, not DXA hydroxyapatite: the T-score
    against the DXA reference is approximate (a check of the bone states, not a diagnosis).
    """
    from femur_fe.bone.bundled import SOFT_TISSUE_HU, k2hpo4_mg_from_hu

    lm = json.loads(files.info.read_text(encoding="utf-8"))["landmarks"]
    ct = ff.read_ct(files.ct, unit="HU")
    rho = k2hpo4_mg_from_hu(ct.array).reshape(-1) - k2hpo4_mg_from_hu(SOFT_TISSUE_HU)  # mg/cm^3 above soft tissue
    x = ct.world_from_index(np.indices(ct.shape).reshape(3, -1).T) - np.asarray(lm["head_centre"])
    u = np.asarray(lm["neck_axis"]) / np.linalg.norm(lm["neck_axis"])        # head centre -> head
    n = np.cross(u, lm["shaft_axis"])
    v = np.cross(n / np.linalg.norm(n), u)
    junction = float(np.linalg.norm(np.asarray(lm["neck_shaft_intersection"]) - lm["head_centre"]))
    ub, vb = np.arange(-junction - 20.0, 1.0, 1.0), np.arange(-60.0, 61.0, 1.0)
    mass_mg = np.histogram2d(x @ u, x @ v, bins=[ub, vb], weights=rho * ct.voxel_volume_mm3 * 1e-3)[0]
    areal = mass_mg * 0.1                                                       # mg/mm^2 -> g/cm^2
    bone = areal > 0.1
    uc = 0.5 * (ub[1:] + ub[:-1])
    width = np.where((uc < -lm["head_radius"]) & (uc > -junction), bone.sum(1), np.iinfo(int).max)
    centre = uc[int(np.argmin(width))]
    box = (uc >= centre - 7.5) & (uc < centre + 7.5)
    abmd = float(areal[box][bone[box]].sum() / bone[box].sum())
    return abmd, (abmd - NECK_YOUNG_MEAN) / NECK_YOUNG_SD


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
                         "(femur_fe.studies.compare.anatomical_zones; node-based criteria only)")
    ap.add_argument("--neck-abmd", action="store_true",
                    help="also the femur's CTXA-like femoral-neck aBMD and T-score (see neck_abmd)")
    args = ap.parse_args(argv)
    print(f"{'bone':9s} {'state':13s} {'vBMD mg/cm3':>11s} {'stiffness N/mm':>15s} {'strength N':>11s} "
          f"{'nonlinear N':>22s}  criterion; strength used for risk  (s)")
    for bone in args.bones:
        case = ff.load_case(ff.case.loadcases_dir() / CASES[bone])
        if args.margin:
            case = case.with_values({"failure.params.exclude_margin_mm": args.margin})
        if args.set:  # all at once: e.g. a criterion and its parameters
            case = case.with_values({k.strip(): tomllib.loads(f"v = {v}")["v"]
                                     for k, _, v in (item.partition("=") for item in args.set)})
        for state in ("healthy", "osteopenic", "osteoporotic"):
            t0 = time.perf_counter()
            files = ff.bundled_bone(bone, state)
            c = case_for(case, ff.Specimen(bundled=bone, state=state))
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
            used = res.strength_summary["strength_used"]
            print(f"{bone:9s} {state:13s} {model.integral_vbmd_mg_cm3():11.0f} {res.stiffness_N_per_mm:15.0f} "
                  f"{res.linear.strength_N:11.0f} {nl:>22s}  {res.linear.criterion}; {used.split(':')[0]} "
                  f"(reference_strength = {c.failure.reference_strength})  ({time.perf_counter() - t0:.0f})")
            if args.by_zone and res.linear.risk.node is not None:
                names, zone = anatomical_zones(an.frame, model.mesh, bone)
                parts = []
                for k, zname in enumerate(names):
                    nodes = np.unique(model.mesh.cells[zone == k])
                    governing = np.nanmax(res.linear.risk.node[nodes], initial=0.0)
                    parts.append(f"{zname} {res.linear.applied_load_N / governing:.0f} N" if governing > 0
                                 else f"{zname} -")
                print(f"{'':23s} linear strength by zone: " + ", ".join(parts))
            if args.neck_abmd and bone == "femur":
                abmd, t = neck_abmd(files)
                print(f"{'':23s} femoral-neck aBMD {abmd:.3f} g/cm2 (K2HPO4-equivalent), T-score {t:+.1f}")


if __name__ == "__main__":
    main()
