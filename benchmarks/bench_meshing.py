"""Benchmark: surface -> tet mesh of the shared whole femur (femur_gfxmorph/femur.stl).

Target: about 500k linear tets in at most 60 s on this machine (2 cores). Prints a table of
element size, surface triangles after remeshing, nodes, tets, times (read+remesh, TetGen and
checks, total) and quality (minimum and 1st-percentile dihedral angle).

    python benchmarks/bench_meshing.py [--sizes 4 3 2 1.3] [--order 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[4.0, 3.0, 2.0, 1.3])
    ap.add_argument("--order", type=int, default=1, choices=(1, 2))
    ap.add_argument("--surface", default=str(SHARED / "femur_gfxmorph" / "femur.stl"))
    args = ap.parse_args(argv)

    import femur_fe as ff

    rows = []
    for h in args.sizes:
        t0 = time.perf_counter()
        surf = ff.read_surface(args.surface)
        remeshed = ff.bone.remesh_surface(surf, h)
        t1 = time.perf_counter()
        mesh = ff.bone.tetmesh_from_surface(remeshed, element_size=h, order=args.order, remesh=False)
        t2 = time.perf_counter()
        mn, _ = ff.bone.dihedral_angles(mesh.points, mesh.corner_cells)
        vol_err = mesh.cell_volumes().sum() / surf.volume - 1.0
        rows.append((h, remeshed.n_faces, mesh.n_points, mesh.n_cells, t1 - t0, t2 - t1, t2 - t0,
                     float(mn.min()), float(np.percentile(mn, 1)), 100 * vol_err))
    print(f"femur_fe {ff.__version__}: {args.surface}, order {args.order}, {os.cpu_count()} cores")
    hdr = ("size mm", "surf tris", "nodes", "tets", "remesh s", "tetgen+checks s", "total s",
           "min dih deg", "p1 dih deg", "vol err %")
    print(" | ".join(f"{c:>15s}" for c in hdr))
    for r in rows:
        print(" | ".join([f"{r[0]:>15.2f}", f"{r[1]:>15d}", f"{r[2]:>15d}", f"{r[3]:>15d}",
                          f"{r[4]:>15.1f}", f"{r[5]:>15.1f}", f"{r[6]:>15.1f}", f"{r[7]:>15.1f}",
                          f"{r[8]:>15.1f}", f"{r[9]:>15.2f}"]))
    big = [r for r in rows if r[3] >= 400_000]
    if big:
        r = min(big, key=lambda r: r[3])
        ok = r[6] <= 60.0
        print(f"target ~500k tets in <= 60 s: {r[3]} tets in {r[6]:.1f} s -> {'OK' if ok else 'TOO SLOW'}")
        return 0 if ok else 1
    print("no run reached 400k tets; add a smaller --sizes value")
    return 0


if __name__ == "__main__":
    sys.exit(main())
