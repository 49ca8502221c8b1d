"""Benchmark: nonlinear (secant) strength of a femur in a sideways fall and a vertebra in compression.

Usage::

    python benchmarks/bench_nonlinear.py                      # femur + vertebra, 2.5 / 2.0 mm tets
    python benchmarks/bench_nonlinear.py --bones femur --element-size 2.0
    python benchmarks/bench_nonlinear.py --n-threads 2 --json out.json

Geometry: the bundled bones of ``femur_fe.bone.bundled`` when they are installed, otherwise the
shared real geometries (``../shared/data/femur_gfxmorph/femur.stl`` cut 50 mm below the
lesser trochanter; ``lumbar_mean_clouthier/mean_L3.stl``) meshed here with TetGen.

Material (timing benchmark, not a validated model): if the mesh carries a cell density it
is used, else a synthetic apparent density that decays from cortical (1.75 g/cm^3) at the
surface to trabecular (0.25 g/cm^3) with a 2 mm length scale, mapped by Morgan et al. 2003
femoral neck ``E = 6850 rho^1.49`` (biomechanics.md 1.2 [V]); nu = 0.3; yield strains
0.73 % / 1.04 % (Schileo 2014 [V]), perfectly plastic.

Loading (geometric, displacement controlled, all DOFs of the regions):

* femur: distal cut clamped; greater-trochanter patch (surface nodes within 10 mm of the
  most lateral point along the fall direction) clamped; head patch (surface nodes within
  10 mm of the head point opposite to the fall direction) displaced along the fall
  direction = -medial rotated 10 deg towards distal (a sideways-fall-like set-up).
* vertebra: bottom surface nodes (within 1.5 mm of the lowest point) clamped, top surface
  nodes displaced along -z.

Prints one row per bone: elements, DOFs, set-up s, total s, steps, secant iterations,
preconditioner solves, peak force N, peak displacement mm, converged, peak reached.
The machine is shared: repeat runs vary by 10-30 %.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"


def _mesh_of(name: str, element_size: float):
    import femur_fe as ff
    from femur_fe.bone import meshing as fs

    try:
        from femur_fe.bone.bundled import bundled_bone

        path = bundled_bone(name).mesh
        return ff.read_mesh(path), f"bundled {path.name}"
    except Exception as exc:  # bundled bones not installed yet: fall back to shared geometry
        logging.info("bundled %s unavailable (%s); meshing the shared geometry", name, exc)
    if name == "femur":
        surf = fs.read_surface(SHARED / "femur_gfxmorph" / "femur.stl")
        surf = fs.cut_proximal_femur(surf, 50.0)
        src = "shared femur_gfxmorph, proximal 50 mm below the lesser trochanter"
    else:
        surf = fs.read_surface(SHARED / "lumbar_mean_clouthier" / "mean_L3.stl")
        src = "shared lumbar_mean_clouthier mean_L3"
    return fs.tetmesh_from_surface(surf, element_size=element_size), src


def _density(mesh) -> np.ndarray:
    for key in ("density", "density_app", "density_ash"):
        if key in mesh.cell_data:
            return np.asarray(mesh.cell_data[key], dtype=float)
    from scipy.spatial import cKDTree

    from femur_fe.fe.topology import boundary_nodes

    d, _ = cKDTree(mesh.points[boundary_nodes(mesh)]).query(mesh.cell_centroids())
    return 0.25 + 1.5 * np.exp(-d / 2.0)


def _patch(mesh, surf_nodes, centre, radius):
    sel = surf_nodes[np.linalg.norm(mesh.points[surf_nodes] - centre, axis=1) < radius]
    if len(sel) < 3:
        raise RuntimeError(f"patch around {centre} selects {len(sel)} nodes")
    return sel


def femur_case(mesh):
    from femur_fe.bone.anatomy import femur_frame
    from femur_fe.fe.topology import boundary_nodes

    lm = femur_frame(mesh, require_side=False)
    ax, med = lm.shaft_axis, lm.medial
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    d = -med * c - ax * s  # fall direction: lateral and slightly distal
    d /= np.linalg.norm(d)
    bn = boundary_nodes(mesh)
    p = mesh.points
    head_pt = lm.head_centre - lm.head_radius * d
    head = _patch(mesh, bn, head_pt, 10.0)
    # greater trochanter: most extreme surface point along d above the lesser trochanter
    above = bn[lm.axial(p[bn]) > lm.axial(lm.lesser_trochanter)]
    gt = above[np.argmax(p[above] @ d)]
    troch = _patch(mesh, bn, p[gt], 10.0)
    axial = lm.axial(p[bn])
    distal = bn[axial < axial.min() + 1.0]
    support = np.unique(np.r_[troch, distal])
    return head, support, d


def vertebra_case(mesh):
    from femur_fe.fe.topology import boundary_nodes

    bn = boundary_nodes(mesh)
    z = mesh.points[bn, 2]
    return bn[z > z.max() - 1.5], bn[z < z.min() + 1.5], np.array([0.0, 0.0, -1.0])


def run(name: str, element_size: float, n_steps: int) -> dict:
    import femur_fe as ff

    t0 = time.perf_counter()
    mesh, src = _mesh_of(name, element_size)
    t_mesh = time.perf_counter() - t0
    rho = _density(mesh)
    young = 6850.0 * rho ** 1.49
    head, support, d = femur_case(mesh) if name == "femur" else vertebra_case(mesh)
    fixed = (3 * support[:, None] + np.arange(3)).ravel()
    res = ff.fe.nonlinear_strength(mesh, young, poisson=0.3, fixed_dofs=fixed, load_nodes=head, load_direction=d,
                                n_steps=n_steps, density=rho)
    return {
        "bone": name, "source": src, "cells": mesh.n_cells, "dofs": mesh.n_dofs, "mesh_s": round(t_mesh, 1),
        "setup_s": round(res.report["setup_seconds"], 1), "total_s": round(res.report["seconds"], 1),
        "steps": len(res.steps), "secant_iterations": sum(s.iterations for s in res.steps),
        "preconditioner_solves": res.report["preconditioner_solves"], "solver": res.report["solver"],
        "first_yield_N": round(res.first_yield_force_N, 1), "peak_N": round(res.peak_force_N, 1),
        "peak_mm": round(res.peak_displacement_mm, 4), "converged": res.converged,
        "peak_reached": res.peak_reached, "stop": res.report["stop_reason"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bones", nargs="+", default=["femur", "vertebra"], choices=["femur", "vertebra"])
    ap.add_argument("--element-size", type=float, default=None, help="mm (default 2.5 femur, 2.0 vertebra)")
    ap.add_argument("--n-steps", type=int, default=12)
    ap.add_argument("--n-threads", type=int, default=None, help="sets OMP_NUM_THREADS-like limits")
    ap.add_argument("--json", default=None)
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.v else logging.WARNING, format="%(name)s: %(message)s")
    if args.n_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.n_threads)
    rows = []
    for bone in args.bones:
        size = args.element_size or (2.5 if bone == "femur" else 2.0)
        row = run(bone, size, args.n_steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
