"""Benchmark: femur_fe AMG-CG vs pyamg used plainly, at the scale labs work at.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_speed.py                  # ~1M DOFs + VerSe L2
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_speed.py --quick          # ~30k DOFs, < 1 min
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_speed.py --problems tet4 hex8 --sizes 40
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_speed.py --tools femur_fe # one tool only

Problems (units mm, N, MPa):

* ``tet4``, ``tet10``, ``hex8``: a box [0, 100]^2 x [0, 150] mm meshed by
  :func:`femur_fe.commands.verify.structured_mesh` (6 tets per cube for tet4/tet10; the hex8
  box is mapped by a smooth sine distortion of up to 0.15 cells, so its elements are general
  hexahedra, not voxels); ``--sizes`` sets the cubes per side (60 -> ~1M DOFs for tet4 and
  hex8, 30 -> ~1M for tet10). Young's modulus is a spatially correlated log-normal field: white
  noise on a 1 mm grid smoothed by a Gaussian of 6 mm, scaled so that +-3 standard deviations
  span 100-20,000 MPa, clipped to that range and sampled at the element centroids. nu = 0.3.
  Bottom face clamped; top face loaded by 1000 N along -z and 200 N along +x.
* ``verse``: the VerSe L2 vertebra from ``../shared/data/ct_verse004_L2_density`` (1 mm voxels,
  density CT in mg/cm^3, labels 1-4 bone, 5-6 PMMA caps) as hex8 voxels
  (:func:`femur_fe.hexmesh_from_mask`); bone E = Kopperdahl 2002 linear law of the QCT density
  (floor 10 MPa), caps 2500 MPa (the upstream model's PMMA); nodes on the lowest face fixed,
  nodes on the top face displaced by -0.2 mm along z (the upstream linear case).
  ``FEMUR_FE_SHARED`` points at another ``shared`` folder (default ``../shared``).

Tools, each run in a fresh subprocess so that the peak resident memory (``ru_maxrss``, mesh,
moduli and matrix included) is that run's own:

* ``femur_fe``: :class:`femur_fe.StiffnessAssembler` then :class:`femur_fe.LinearSolver`
  ``(method="amg")`` and one solve; then a second solve on new moduli of the same geometry
  (E multiplied by a smooth field of 0.8-1.25: a therapy scenario or sweep point),
  ``LinearSolver(..., preconditioner=first)`` and the first displacement as the initial guess:
  CG starts with the first hierarchy and rebuilds it on the same aggregates only when that
  takes more than 1.5x the first iteration count.
* ``pyamg``: the same assembled matrix, its free-DOF block as 3x3 BSR, then
  ``pyamg.smoothed_aggregation_solver(A_bsr, B=rigid modes, symmetry="symmetric",
  strength=("symmetric", {"theta": 0}), smooth=("jacobi", {"omega": 4/3}),
  presmoother=postsmoother=("block_gauss_seidel", {"sweep": "symmetric"}),
  improve_candidates=None, max_coarse=500)`` and ``scipy.sparse.linalg.cg`` (the settings a
  user would pick for elasticity).

Both solve to a relative residual of 1e-8 (``||b - A x|| <= 1e-8 ||b||`` on the free DOFs, with
the residual recomputed in float64 after the solve). ``set-up s`` excludes the assembly
(the same kernel for both, printed separately); ``total s`` = set-up + solve; ``ratio`` =
pyamg total / femur_fe total. ``cpu s`` is the processor time of set-up + solve summed over
the threads (femur_fe runs its kernels on all cores, pyamg on one), and ``cpu ratio`` their
ratio: on a machine whose cores are shared with other jobs the wall-clock ratio depends on how
the scheduler splits them, the processor-time ratio much less (it counts femur_fe's threads
together, so it understates femur_fe's lead on idle cores). ``2nd s`` is the whole second solve on the new moduli,
re-assembly (``2nd asm``) + solver construction + CG (``2nd solve``), and ``2nd/1st`` its ratio to the
whole first solve, assembly (pattern included) + set-up + solve: both sides assemble their matrix and
both reach the same 1e-8 relative residual; ``cpu 2nd/1st`` is the same ratio in processor time
(all threads), less sensitive to other jobs on shared cores than the wall-clock one. ``peak MB`` is the peak resident memory
up to the end of the first solve (mesh, moduli, assembler and matrix included); the second
solve keeps the first matrix and set-up alive and adds its own (``2nd MB``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"
VERSE = SHARED / "ct_verse004_L2_density"
E_MIN, E_MAX = 100.0, 20000.0


def correlated_field(centroids: np.ndarray, seed: int, corr_mm: float = 6.0) -> np.ndarray:
    """Standard-normal-ish field, correlated over ``corr_mm``, at ``centroids`` (m, 3) mm."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    lo = centroids.min(axis=0) - 1.0
    shape = tuple(int(np.ceil(s)) + 3 for s in centroids.max(axis=0) - lo)
    rng = np.random.default_rng(seed)
    g = gaussian_filter(rng.standard_normal(shape), corr_mm, mode="wrap")
    g = (g - g.mean()) / g.std()
    return map_coordinates(g, (centroids - lo).T, order=1, mode="nearest")


def lognormal_modulus(centroids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Correlated log-normal E (MPa): +-3 sigma spans [E_MIN, E_MAX]."""
    z = correlated_field(centroids, seed)
    mid, half = 0.5 * np.log(E_MIN * E_MAX), 0.5 * np.log(E_MAX / E_MIN)
    return np.clip(np.exp(mid + half / 3.0 * z), E_MIN, E_MAX)


def build(problem: str, size: int):
    """(mesh, young, fixed DOFs, fixed values, f, second young)."""
    import femur_fe as ff

    if problem == "verse":
        ct = ff.read_ct(VERSE / "sub-verse004_0000_vertebra_21_im.nii.gz", unit="mg/cm3")
        labels = ff.io.read_labels(VERSE / "sub-verse004_0000_vertebra_21_seg.nii.gz", reference=ct)
        mesh = ff.bone.hexmesh_from_mask(labels, ct)
        young = ff.bone.Kopperdahl2002(e_min_mpa=10.0).young(mesh.cell_data["density"])
        for lab in (5, 6):
            young[mesh.cell_sets[f"label_{lab}"]] = 2500.0
        z = mesh.points[:, 2]
        bottom = np.flatnonzero(z <= z.min() + 1e-6)
        top = np.flatnonzero(z >= z.max() - 1e-6)
        fixed = np.concatenate([(3 * bottom[:, None] + np.arange(3)).ravel(), 3 * top + 2])
        values = np.concatenate([np.zeros(3 * len(bottom)), np.full(len(top), -0.2)])
        f = np.zeros(3 * mesh.n_points)
    else:
        try:  # the structured verification meshes (femur_fe.fe.boxes in the subpackage layout)
            from femur_fe.fe.boxes import structured_mesh
        except ImportError:
            from femur_fe.fe.boxes import structured_mesh

        cell_type = {"tet4": "tetra", "tet10": "tetra10", "hex8": "hexahedron"}[problem]
        n = size
        shape = (n, n, int(round(1.5 * n)))

        def mapping(p):
            x = p * np.array([100.0, 100.0, 150.0])
            if problem == "hex8":  # smooth distortion: general (non-parallelepiped) hexahedra
                h = 100.0 / n
                s = np.sin(np.pi * p * np.array([3.0, 5.0, 4.0]))
                x = x + 0.15 * h * np.stack([s[:, 1] * s[:, 2], s[:, 0] * s[:, 2], s[:, 0] * s[:, 1]], axis=1)
            return x

        mesh, params = structured_mesh(shape, mapping=mapping, cell_type=cell_type)
        young = lognormal_modulus(mesh.cell_centroids(), seed=0)
        bottom = np.flatnonzero(params[:, 2] == 0.0)
        top = np.flatnonzero(params[:, 2] == 1.0)
        fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
        values = np.zeros(len(fixed))
        f = np.zeros(3 * mesh.n_points)
        f[3 * top + 2] = -1000.0 / len(top)
        f[3 * top + 0] = 200.0 / len(top)
    # therapy-like change: E times a smooth factor in [0.8, 1.25]
    factor = np.exp(np.log(1.25) / 3.0 * np.clip(correlated_field(mesh.cell_centroids(), seed=1), -3, 3))
    return mesh, young, fixed, values, f, young * factor


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_femur_fe(problem: str, size: int) -> dict:
    import femur_fe as ff

    mesh, young, fixed, values, f, young2 = build(problem, size)
    t, c = time.perf_counter(), time.process_time()
    asm = ff.fe.StiffnessAssembler(mesh, 0.3)
    k = asm.assemble(young, **_bsr_kw(asm))
    t_asm, cpu_asm = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    solver = ff.fe.LinearSolver(k, fixed, points=mesh.points, method="amg", rtol=1e-8)
    t_setup = time.perf_counter() - t
    t = time.perf_counter()
    sol = solver.solve(f, values)
    t_solve = time.perf_counter() - t
    cpu = time.process_time() - c
    out = dict(n_dofs=3 * mesh.n_points, assembly_s=t_asm, assembly_cpu_s=cpu_asm, setup_s=t_setup, solve_s=t_solve,
               cpu_s=cpu,
               iterations=sol.report.iterations, residual=sol.report.residual, method=sol.report.method,
               peak_mb=peak_mb())
    # second solve on new moduli, geometry-only set-up reused
    t, c = time.perf_counter(), time.process_time()
    k2 = asm.assemble(young2, **_bsr_kw(asm))
    t_asm2 = time.perf_counter() - t
    solver2 = ff.fe.LinearSolver(k2, fixed, points=mesh.points, method="amg", rtol=1e-8, preconditioner=solver)
    sol2 = solver2.solve(f, values, initial_u=sol.u)
    out.update(second_s=time.perf_counter() - t, second_cpu_s=time.process_time() - c, second_assembly_s=t_asm2,
               second_iterations=sol2.report.iterations,
               second_residual=sol2.report.residual, second_method=sol2.report.method, second_peak_mb=peak_mb())
    return out


def _bsr_kw(asm) -> dict:
    import inspect

    return {"format": "bsr"} if "format" in inspect.signature(asm.assemble).parameters else {}


def run_pyamg(problem: str, size: int) -> dict:
    import pyamg
    import scipy.sparse.linalg as spla

    import femur_fe as ff

    mesh, young, fixed, values, f, _ = build(problem, size)
    t = time.perf_counter()
    k = ff.fe.StiffnessAssembler(mesh, 0.3).assemble(young)
    t_asm = time.perf_counter() - t
    n = k.shape[0]
    is_fixed = np.zeros(n, dtype=bool)
    is_fixed[fixed] = True
    g = np.zeros(n)
    g[fixed] = values
    free = np.flatnonzero(~is_fixed)
    # a user eliminates the prescribed DOFs; nodes with some DOFs prescribed stay as 3x3 blocks
    # only if all of their DOFs are free, so keep whole free nodes in blocks (the verse top nodes
    # have x and y free: their 2 DOFs are padded by identity rows to keep the block size 3)
    b_full = f - k @ g
    node_free = ~is_fixed.reshape(-1, 3).all(axis=1)
    dofs = (3 * np.flatnonzero(node_free)[:, None] + np.arange(3)).ravel()
    a = k[dofs][:, dofs].tocsr()
    pin = is_fixed[dofs]
    if pin.any():  # partially fixed nodes: identity rows/columns for their fixed DOFs
        d = sp_diag(pin.astype(float))
        keep = sp_diag((~pin).astype(float))
        a = (keep @ a @ keep + d).tocsr()
    del k
    a = a.tobsr(blocksize=(3, 3))
    b = np.where(pin, 0.0, b_full[dofs])
    bmodes = ff.fe.rigid_body_modes(mesh.points[np.flatnonzero(node_free)])
    bmodes[pin] = 0.0
    base = peak_mb()
    t, c = time.perf_counter(), time.process_time()
    ml = pyamg.smoothed_aggregation_solver(
        a, B=bmodes, symmetry="symmetric", strength=("symmetric", {"theta": 0.0}),
        smooth=("jacobi", {"omega": 4.0 / 3.0}), presmoother=("block_gauss_seidel", {"sweep": "symmetric"}),
        postsmoother=("block_gauss_seidel", {"sweep": "symmetric"}), improve_candidates=None, max_coarse=500)
    t_setup = time.perf_counter() - t
    t = time.perf_counter()
    its = [0]

    def cb(_x):
        its[0] += 1

    x, info = spla.cg(a, b, rtol=1e-8, atol=0.0, maxiter=2000, M=ml.aspreconditioner(), callback=cb)
    t_solve = time.perf_counter() - t
    cpu = time.process_time() - c
    res = float(np.linalg.norm(b - a @ x) / np.linalg.norm(b))
    return dict(n_dofs=n, assembly_s=t_asm, setup_s=t_setup, solve_s=t_solve, cpu_s=cpu, iterations=its[0], residual=res,
                method="pyamg-sa", peak_mb=peak_mb(), before_setup_mb=base, info=int(info))


def sp_diag(v):
    import scipy.sparse as sp

    return sp.diags(v, format="csr")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", nargs="*", default=["tet4", "tet10", "hex8", "verse"],
                    choices=["tet4", "tet10", "hex8", "verse"])
    ap.add_argument("--sizes", type=int, nargs="*",
                    help="cubes per side of the boxes (default 60 for tet4/hex8, 30 for tet10: ~1M DOFs)")
    ap.add_argument("--quick", action="store_true", help="small boxes (~30k DOFs) and the vertebra: < 1 min")
    ap.add_argument("--tools", nargs="*", default=["femur_fe", "pyamg"], choices=["femur_fe", "pyamg"])
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "PROBLEM", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        tool, problem, size = args.child
        fn = run_femur_fe if tool == "femur_fe" else run_pyamg
        print(json.dumps(fn(problem, int(size))))
        return 0
    jobs = []
    for p in args.problems:
        if p == "verse":
            if not VERSE.is_dir():
                print(f"verse: skipped, {VERSE} not found")
                continue
            sizes = [0]
        elif args.sizes:
            sizes = args.sizes
        elif args.quick:
            sizes = [8 if p == "tet10" else 16]
        else:
            sizes = [30 if p == "tet10" else 60]
        jobs += [(p, s) for s in sizes]
    print(f"uptime: {os.popen('uptime').read().strip()}")
    hdr = (f"{'problem':>8} {'DOFs':>9} {'tool':>9} {'asm s':>6} {'set-up s':>8} {'solve s':>8} {'total s':>8} "
           f"{'its':>4} {'residual':>9} {'peak MB':>8} {'ratio':>6} {'cpu s':>7} {'cpu ratio':>9} {'2nd asm':>7} {'2nd solve':>9} "
           f"{'2nd s':>6} {'2nd its':>7} {'2nd res':>8} {'2nd/1st':>7} {'cpu 2nd/1st':>11} "
           f"{'2nd MB':>7}")
    print(hdr)
    print("-" * len(hdr))
    rows = []
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for p, s in jobs:
        res = {}
        for tool in args.tools:
            out = subprocess.run([sys.executable, __file__, "--child", tool, p, str(s)], capture_output=True,
                                 text=True, env=env)
            if out.returncode:
                print(f"{p} {s} {tool}: failed\n{out.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(problem=p, size=s, tool=tool)
            res[tool] = r
            rows.append(r)
        for tool, r in res.items():
            total = r["setup_s"] + r["solve_s"]
            ratio = cpu_ratio = ""
            if tool == "femur_fe" and "pyamg" in res:
                ratio = f"{(res['pyamg']['setup_s'] + res['pyamg']['solve_s']) / total:.2f}"
                cpu_ratio = f"{res['pyamg']['cpu_s'] / r['cpu_s']:.2f}"
            second = ""
            if "second_s" in r:  # whole second solve / whole first solve, assembly in both
                asm2 = r["second_assembly_s"]
                second = (f"{asm2:>7.1f} {r['second_s'] - asm2:>9.1f} {r['second_s']:>6.1f} {r['second_iterations']:>7} "
                          f"{r['second_residual']:>8.1e} {r['second_s'] / (r['assembly_s'] + total):>7.2f} "
                          f"{r['second_cpu_s'] / (r['assembly_cpu_s'] + r['cpu_s']):>11.2f} "
                          f"{r['second_peak_mb']:>7.0f}")
            print(f"{p:>8} {r['n_dofs']:>9} {tool:>9} {r['assembly_s']:>6.1f} {r['setup_s']:>8.2f} "
                  f"{r['solve_s']:>8.2f} {total:>8.2f} {r['iterations']:>4} {r['residual']:>9.1e} "
                  f"{r['peak_mb']:>8.0f} {ratio:>6} {r['cpu_s']:>7.1f} {cpu_ratio:>9} {second}", flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
