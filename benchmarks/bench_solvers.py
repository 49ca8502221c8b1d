"""Benchmark: AMG-CG vs direct on a tet4 box with heterogeneous E (bottom fixed, top loaded).

Usage::

    python benchmarks/bench_solvers.py              # ~100k DOFs: amg + direct
    python benchmarks/bench_solvers.py --full       # also ~1M DOFs (AMG-CG; minutes, ~2.5 GB)
    python benchmarks/bench_solvers.py --sizes 31 --methods amg

Each (size, method) runs in a fresh subprocess so that the peak resident memory
(``ru_maxrss`` of the child, includes mesh + assembly) belongs to that run only. The table
prints setup s, first solve s, CG iterations, final relative residual, peak MB and the time
of a second right-hand side that reuses the set-up. The machine is shared (2 cores, several
users): repeat runs vary by ~10-30 %.

Problem: unit-less box [0, 100]^2 x [0, 150] mm split into 6 tets per cell; E per element
log-normal around 5 GPa (sigma 0.8 in log, clipped to [50, 20000] MPa: a cortical/trabecular
range); nu = 0.3; bottom face clamped; top face loaded by 1000 N in -z plus 200 N in +x.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def build(ncell: int, seed: int = 0):
    import femur_fe as ff
    from femur_fe.fe.boxes import structured_mesh

    mesh, params = structured_mesh((ncell, ncell, int(round(1.5 * ncell))),
                                   mapping=lambda p: p * np.array([100.0, 100.0, 150.0]))
    rng = np.random.default_rng(seed)
    young = np.clip(5000.0 * np.exp(0.8 * rng.standard_normal(mesh.n_cells)), 50.0, 20000.0)
    assemble = getattr(ff, "assemble_stiffness", None)
    if assemble is None:  # until the kernels export it
        from femur_fe.fe.assembly import assemble_stiffness as assemble
    t = time.perf_counter()
    k = assemble(mesh, young, 0.3)
    t_asm = time.perf_counter() - t
    bottom = np.flatnonzero(params[:, 2] == 0.0)
    top = np.flatnonzero(params[:, 2] == 1.0)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    f = np.zeros(3 * mesh.n_points)
    f[3 * top + 2] = -1000.0 / len(top)
    f[3 * top + 0] = 200.0 / len(top)
    f2 = np.zeros_like(f)
    f2[3 * top + 1] = 300.0 / len(top)
    return mesh, k, fixed, f, f2, t_asm, bottom


def run_one(ncell: int, method: str) -> dict:
    import femur_fe.fe.solvers as S

    mesh, k, fixed, f, f2, t_asm, bottom = build(ncell)
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    solver = S.LinearSolver(k, fixed, points=mesh.points, method=method, rtol=1e-8)
    sol = solver.solve(f)
    t = time.perf_counter()
    sol2 = solver.solve(f2)
    t2 = time.perf_counter() - t
    rep = sol.report
    ftot = f.reshape(-1, 3).sum(axis=0)
    # the support reactions balance the applied load (includes the CG residual)
    balance = float(np.abs(sol.reaction_force(bottom) + ftot).max() / np.abs(ftot).max())
    return dict(n_dofs=rep.n_dofs, method=rep.method, assembly_s=t_asm,
                setup_s=rep.setup_seconds, solve_s=rep.solve_seconds, iterations=rep.iterations,
                residual=rep.residual, second_rhs_s=t2, iterations_2=sol2.report.iterations,
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, after_assembly_mb=base_mb,
                memory_estimate_mb=rep.memory_estimate_bytes / 2**20, reaction_balance=balance)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also run ~1M DOFs (AMG only)")
    ap.add_argument("--sizes", type=int, nargs="*", help="cells per side (31 -> ~100k DOFs, 68 -> ~1M)")
    ap.add_argument("--methods", nargs="*", default=["amg", "direct"])
    ap.add_argument("--child", nargs=2, metavar=("NCELL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        ncell, method = args.child
        print(json.dumps(run_one(int(ncell), method)))
        return 0
    sizes = args.sizes or ([27, 60] if args.full else [27])
    jobs = []
    for n in sizes:
        for m in args.methods:
            if m.startswith("direct") and n > 40:
                continue  # SuperLU at 1M DOFs needs tens of GB
            jobs.append((n, m))
    hdr = (f"{'DOFs':>9} {'method':>15} {'asm s':>6} {'setup s':>8} {'solve s':>8} "
           f"{'its':>4} {'residual':>9} {'2nd rhs s':>9} {'peak MB':>8} {'balance':>8}")
    print(hdr)
    print("-" * len(hdr))
    for n, m in jobs:
        # single-threaded BLAS: CG's vector operations are tiny per call and multi-threaded
        # OpenBLAS on a shared, oversubscribed 2-core machine made them 5-10x slower
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--child", str(n), m], capture_output=True, text=True,
                             env=env)
        if out.returncode:
            print(f"{n} {m}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['n_dofs']:>9} {r['method']:>15} {r['assembly_s']:>6.1f} {r['setup_s']:>8.2f} "
              f"{r['solve_s']:>8.2f} {r['iterations']:>4} {r['residual']:>9.1e} {r['second_rhs_s']:>9.2f} "
              f"{r['peak_mb']:>8.0f} {r['reaction_balance']:>8.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
