"""Benchmark: map a 512 x 512 x 300 CT onto a ~1M-element tet4 mesh (target: <= 30 s per mode).

Run:  python benchmarks/bench_mapping.py            (full size, ~1.5 GB peak memory)
      python benchmarks/bench_mapping.py --quick    (small, for a smoke test)

Prints a Markdown table: mode, samples per element, wall time, elements per second.
The CT is a synthetic int16 HU volume (smooth field plus noise); the mesh is a structured
box of cubes split into 6 tetrahedra each, filling most of the scan.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import femur_fe as ff


def make_ct(shape, spacing, seed=0) -> ff.io.CTImage:
    rng = np.random.default_rng(seed)
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    field = (300.0 * np.sin(i / 40.0)[:, None, None] + 200.0 * np.cos(j / 55.0)[None, :, None]
             + 150.0 * np.sin(k / 30.0)[None, None, :])
    arr = (field + rng.normal(0.0, 40.0, size=shape).astype(np.float32)).astype(np.float32)
    arr[0, 0, 0] = -1000.0
    arr[-1, -1, -1] = 1500.0
    return ff.io.CTImage.from_array(arr, spacing=spacing, origin=(0.0, 0.0, 0.0), unit="HU")


def make_tet_mesh(n_cubes, lo, hi) -> ff.Mesh:
    nx, ny, nz = n_cubes
    axes = [np.linspace(lo[a], hi[a], n + 1) for a, n in enumerate(n_cubes)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    nid = np.arange(len(pts)).reshape(nx + 1, ny + 1, nz + 1)
    c = nid[:-1, :-1, :-1].ravel()
    sx, sy = (ny + 1) * (nz + 1), nz + 1
    v = [c, c + sx, c + sx + sy, c + sy, c + 1, c + sx + 1, c + sx + sy + 1, c + sy + 1]  # hex corners
    split = [[0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6], [0, 5, 1, 6]]
    tets = np.stack([np.stack([v[a] for a in t], axis=1) for t in split], axis=1).reshape(-1, 4)
    x = pts[tets]
    det = np.einsum("ij,ij->i", np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), x[:, 3] - x[:, 0])
    tets[det < 0] = tets[det < 0][:, [0, 2, 1, 3]]
    return ff.Mesh(pts, tets, "tetra")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small problem (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        shape, n_cubes = (128, 128, 75), (15, 15, 15)
    else:
        shape, n_cubes = (512, 512, 300), (56, 55, 55)
    spacing = (0.7, 0.7, 1.0)
    t0 = time.perf_counter()
    ct = make_ct(shape, spacing)
    extent = np.asarray(spacing) * (np.asarray(shape) - 1)
    mesh = make_tet_mesh(n_cubes, 0.1 * extent, 0.9 * extent)
    t_setup = time.perf_counter() - t0
    law = ff.bone.material_law("keyak1994_chain")
    cal = ff.bone.DensityCalibration.from_mg(0.8, 0.0)
    runs = [
        ("centroid", lambda: ff.bone.map_ct(mesh, ct, method="centroid")),
        ("element_average n_steps=2", lambda: ff.bone.map_ct(mesh, ct, method="element_average", n_steps=2)),
        ("element_average n_steps=3", lambda: ff.bone.map_ct(mesh, ct, method="element_average", n_steps=3)),
        ("modulus_average n_steps=2", lambda: ff.bone.map_young_modulus(mesh, ct, law, calibration=cal, n_steps=2)),
    ]
    print(f"CT {shape[0]}x{shape[1]}x{shape[2]} ({ct.array.dtype}), mesh {mesh.n_cells} tet4 elements, "
          f"{mesh.n_points} nodes; setup {t_setup:.1f} s")
    print()
    print("| mode | samples/element | time (s) | elements/s |")
    print("| --- | ---: | ---: | ---: |")
    worst = 0.0
    for name, fn in runs:
        t = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t
        worst = max(worst, dt)
        assert res.report.ok and np.all(np.isfinite(res.values))
        print(f"| {name} | {res.report.samples_per_element} | {dt:.2f} | {mesh.n_cells / dt:,.0f} |")
    print()
    print(f"slowest mode: {worst:.1f} s (target <= 30 s for the full-size case)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
