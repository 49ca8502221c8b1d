"""Sideways fall of a femur truncated above the lesser trochanter, as a clinical CT's field of view
can leave it: the bundled (osteoporotic) femur against itself cut 26, 45 and 70 mm below the head
centre (the clinical right femur of ../shared/data/ct_totalseg_example ends 26 mm below it).

For each geometry: stiffness and linear strength with the preset's distal support (cut face fixed,
``fix = "all"``), with the cut face free along the load (``fix = "across_load"``: the trochanter
carries the whole fall load), and each with the first-failure search kept 10 mm away from every
support (``exclude_margin_mm = 10``). The ratio columns are against the whole bundled femur with
the same settings, so they show what the truncation alone changes. The truncated femora get the
shaft axis from their cut face, as femur_fe.bone.anatomy does for a truncated scan; their side is
given (the smooth synthetic femur has no posterior trochanteric overhang to tell it).

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/truncated_femur.py [--size 3]`` (a few minutes).
At 3 mm (k and F relative to the whole femur with the same support; distal share = the part of
the fall load the cut face takes)::

    femur        distal support             k/whole  F/whole  distal share %
    cut 70 mm    fix all                       1.20     0.69    -14
    cut 70 mm    across load, 10 mm margin     1.18     1.04      0
    cut 45 mm    fix all                       1.40     0.59     13
    cut 45 mm    across load, 10 mm margin     1.39     1.08      0
    cut 26 mm    fix all                       2.55     0.68     76
    cut 26 mm    across load                   1.92     0.73      0
    cut 26 mm    across load, 10 mm margin     1.92     1.44      0

(whole femur: 4068 N/mm, 3152 N with the preset; the lesser trochanter is 60 mm below the
head centre). A cut close below the lesser trochanter changes the stiffness by 20 % but puts
the first failure next to the support; through the trochanters, no support choice gives the
whole femur's numbers.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import femur_fe as ff
from femur_fe.analysis.prepare import prepare
from femur_fe.bone.meshing import surface_from_mesh, tetmesh_from_surface
from femur_fe.bone.model import Model
from femur_fe.bone.specimen import Specimen
from femur_fe.io import read_mesh
from femur_fe.io.surface import Surface
from femur_fe.studies.run import case_for

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fix all": {},
    "across load": {"boundary.2.fix": "across_load"},
    "fix all, 10 mm margin": {"failure.params.exclude_margin_mm": 10.0},
    "across load, 10 mm margin": {"boundary.2.fix": "across_load", "failure.params.exclude_margin_mm": 10.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=3.0, help="element size, mm (default %(default)s)")
    args = ap.parse_args()
    files = ff.bundled_bone("femur", "osteoporotic")
    base = case_for(ff.load_case(ROOT / "loadcases" / "sideways_fall.toml").with_values({"anatomy.side": "right"}),
                    Specimen.from_dict({"bundled": "femur", "state": "osteoporotic"}))
    bundled = read_mesh(files.mesh)
    frame = ff.bone.femur_frame(bundled)
    surf = surface_from_mesh(bundled)
    meshes = {"whole": tetmesh_from_surface(surf, element_size=args.size)}
    for depth in (70.0, 45.0, 26.0):
        cut = surf.to_pyvista().clip_closed_surface(normal=tuple(frame.shaft_axis),
                                                    origin=tuple(frame.head_centre - depth * frame.shaft_axis))
        meshes[f"cut {depth:.0f} mm"] = tetmesh_from_surface(Surface.from_pyvista(cut.triangulate().clean(), "cut"),
                                                             element_size=args.size)
    ref: dict[str, tuple[float, float]] = {}
    print(f"{'femur':<12s} {'distal support':<26s} {'elements':>8s} {'k N/mm':>8s} {'F N':>7s} "
          f"{'k/whole':>8s} {'F/whole':>8s} {'distal share %':>14s}")
    for name, mesh in meshes.items():
        t0 = time.perf_counter()
        model = Model.from_ct(mesh, ff.read_ct(files.ct, unit="HU"), base.material)
        for label, values in VARIANTS.items():
            res = prepare(base.with_values(values), model).solve()
            k, f = res.stiffness_N_per_mm, res.linear.strength_N
            ref.setdefault(label, (k, f))
            share = 100.0 * float(res.reaction_forces["distal_cut"] @ -res.load_direction) / res.load_force_N
            print(f"{name:<12s} {label:<26s} {mesh.n_cells:8d} {k:8.0f} {f:7.0f} {k / ref[label][0]:8.2f} "
                  f"{f / ref[label][1]:8.2f} {share:14.0f}", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
