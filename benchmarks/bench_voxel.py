"""Benchmark: femur_fe's matrix-free voxel solver vs parosol-py on the same voxel models.

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_voxel.py                       # box ~1M DOF + VerSe L2 1 mm
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_voxel.py --with-parosol /work/venv-parosol
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_voxel.py --problems box:130    # the ~10M-DOF box
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_voxel.py --problems box:30 verse:1 --quick-check

``--with-parosol DIR`` runs parosol-py (PyPI ``parosol-py``: ParOSol's matrix-free geometric
multigrid, Flaig and Arbenz 2011) from its own virtual environment ``DIR``, created and filled
with ``pip install parosol-py`` when it does not import there yet, with ``--mpi`` ranks (default 2).

Problems (mm, N, MPa; every voxel an element, nu = 0.3):

* ``box:N``: the box [0, 100]^2 x [0, 150] mm in voxels of 100/N mm (N = 60: 1.02M DOFs,
  N = 130: 10.1M DOFs). Young's modulus is a spatially correlated log-normal field, as in the
  assembled-solver benchmark: white noise on a 1 mm grid smoothed by a Gaussian of 6 mm,
  scaled so that +-3 standard deviations span 100-20,000 MPa, clipped to that range and
  sampled (trilinear) at the voxel centres.
* ``verse:R``: the VerSe L2 vertebra (``../shared/data/ct_verse004_L2_density``, 1 mm density CT
  with labels 1-4 bone, 5-6 PMMA caps as voxels), each voxel split into R^3 voxels of 1/R mm
  (R = 3: 0.33 mm); bone E = Kopperdahl 2002 linear law of the density (floor 10 MPa), caps
  2500 MPa (the upstream model), cropped to its bounding box.

Boundary conditions of both tools: parosol-py's axial test along z, which is what ParOSol
solves: every node of the lowest node layer clamped; every node of the top layer held
laterally and displaced by -1 % of the height along z. Stiffness = -(sum of the z reactions on
the top layer) / 1 % of the height, N/mm; both tools report it (parosol-py from its own
reaction output), so agreement is visible. CG tolerance 1e-8 relative residual for both
(parosol-py ``tolerance=1e-8``; femur_fe ``rtol=1e-8``, with the residual recomputed in float64).

Each (problem, tool) runs in a fresh subprocess that loads the same moduli image (float32,
written once by a preparation subprocess) and times, from that image to the stiffness:
``model`` (grid and boundary conditions), ``set-up`` (hierarchy, smoother bounds, coarsest
factorisation), ``solve`` and ``total``. For parosol-py ``total`` is the wall time of
``parosol_py.solve`` (HDF5 input, ``mpirun``, reading the reactions), ``solve`` ParOSol's own
"Solving" time and ``set-up`` the rest. ``cpu s`` is the CPU time (all threads, MPI ranks included) over ``total``: less sensitive to
other users of the machine than the wall times. ``peak GB`` is the largest resident memory of the
whole process tree (the child and its MPI ranks) sampled every 20 ms, or the child's
``ru_maxrss`` if larger. ``load`` is the 1-minute load average of the machine when the run
started (2 cores: above ~2 the machine is shared and the timings are upper bounds). The
femur_fe child runs with ``OMP_WAIT_POLICY=PASSIVE`` so that its OpenMP threads yield a
shared core instead of spinning (on a quiet machine this changes nothing measurable).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"
VERSE = SHARED / "ct_verse004_L2_density"
E_MIN, E_MAX = 100.0, 20000.0
STRAIN = -0.01
RTOL = 1e-8


# ============================================================================ models (numpy/scipy only)
def box_moduli(n: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """(E image (n, n, 1.5 n) float32 MPa, voxel size mm) of the box problem."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    h = 100.0 / n
    shape = (n, n, int(round(1.5 * n)))
    ext = np.array([100, 100, 150]) + 3
    rng = np.random.default_rng(seed)
    g = gaussian_filter(rng.standard_normal(tuple(ext)), 6.0, mode="wrap")
    g = (g - g.mean()) / g.std()
    mid, half = 0.5 * np.log(E_MIN * E_MAX), 0.5 * np.log(E_MAX / E_MIN)
    out = np.empty(shape, dtype=np.float32)
    for i in range(shape[0]):  # slab by slab: no (3, m) coordinate array at 10M DOFs
        jj, kk = np.meshgrid((np.arange(shape[1]) + 0.5) * h + 1.0, (np.arange(shape[2]) + 0.5) * h + 1.0,
                             indexing="ij")
        ii = np.full(jj.shape, (i + 0.5) * h + 1.0)
        z = map_coordinates(g, np.stack([ii.ravel(), jj.ravel(), kk.ravel()]), order=1, mode="nearest")
        out[i] = np.clip(np.exp(mid + half / 3.0 * z), E_MIN, E_MAX).reshape(jj.shape)
    return out, h


def verse_moduli(r: int) -> tuple[np.ndarray, float]:
    """(E image float32 MPa, voxel size mm) of the VerSe L2 model split into r^3 voxels per CT voxel."""
    from femur_fe.bone import Kopperdahl2002
    from femur_fe.io import read_ct, read_labels

    ct = read_ct(VERSE / "sub-verse004_0000_vertebra_21_im.nii.gz", unit="mg/cm3")
    labels = read_labels(VERSE / "sub-verse004_0000_vertebra_21_seg.nii.gz", reference=ct)
    if not np.allclose(ct.spacing, 1.0) or not np.allclose(ct.direction, np.eye(3)):
        raise SystemExit("the VerSe L2 CT is expected at 1 mm on axis-aligned LPS axes")
    dens = np.asarray(ct.array, dtype=np.float64) / 1000.0  # g/cm^3
    e = np.asarray(Kopperdahl2002(e_min_mpa=10.0).young(np.maximum(dens, 0.0)), dtype=np.float64)
    e = np.where(labels > 0, e, 0.0)
    e[(labels == 5) | (labels == 6)] = 2500.0
    nz = np.argwhere(labels > 0)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    e = e[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    for ax in range(3):
        e = np.repeat(e, r, axis=ax)
    return e.astype(np.float32), 1.0 / r


def n_grid_nodes(mask: np.ndarray) -> int:
    """Number of grid nodes touched by the voxels of ``mask``."""
    d0, d1, d2 = mask.shape
    used = np.zeros((d0 + 1, d1 + 1, d2 + 1), dtype=bool)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                used[a:a + d0, b:b + d1, c:c + d2] |= mask
    return int(np.count_nonzero(used))


def prepare(problem: str, path: Path) -> dict:
    kind, arg = problem.split(":")
    e, h = box_moduli(int(arg)) if kind == "box" else verse_moduli(int(arg))
    np.save(path, e)
    n_vox = int(np.count_nonzero(e > 0))
    return {"voxel_mm": h, "shape": list(e.shape), "n_voxels": n_vox}


# ============================================================================ tools (children)
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, its threads and its waited-for descendants."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_femur(image: Path, h: float, mg_dtype: str) -> dict:
    t_all = time.perf_counter()
    from femur_fe.fe.voxel_solver import VoxelGrid, VoxelSolver

    e = np.load(image)
    t0, c0 = time.perf_counter(), cpu_seconds()
    mask = e > 0
    grid = VoxelGrid(mask, (h, h, h))
    young = e[mask]
    del e
    layer = np.zeros(grid.node_dims, dtype=bool)
    layer[:, :, 0] = True
    bottom = grid.nodes_at(layer)
    layer[:, :, 0], layer[:, :, -1] = False, True
    top = grid.nodes_at(layer)
    del layer
    fixed = np.concatenate([(3 * bottom[:, None] + np.arange(3)).ravel(), (3 * top[:, None] + np.arange(3)).ravel()])
    disp = STRAIN * grid.shape[2] * h
    values = np.zeros(fixed.size)
    values[3 * bottom.size + 2::3] = disp
    t_model = time.perf_counter() - t0
    solver = VoxelSolver(grid, young, 0.3, fixed, rtol=RTOL, mg_dtype=mg_dtype)
    sol = solver.solve(None, values)
    fz = float(sol.reactions[3 * top + 2].sum())
    rep = sol.report
    return dict(tool="femur_fe voxel", n_dofs=rep.n_dofs, model_s=t_model, setup_s=rep.setup_seconds,
                solve_s=rep.solve_seconds, total_s=time.perf_counter() - t0, iterations=rep.iterations,
                residual=rep.residual, stiffness=fz / disp, peak_mb=peak_rss_mb(), cpu_s=cpu_seconds() - c0,
                levels=solver.mg.describe(), wall_s=time.perf_counter() - t_all)


def run_parosol(image: Path, h: float, mpi: int) -> dict:
    import re

    from parosol_py import solve

    e = np.load(image)
    work = Path(tempfile.mkdtemp(prefix="parosol_bench_"))
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = solve(material=e, spacing=(h, h, h), array_order="xyz", material_unit="MPa", test="axial",
                test_axis="z", strain=STRAIN, outputs=("forces",), tolerance=RTOL, mpi_processes=mpi,
                work_dir=work)
    total = time.perf_counter() - t0
    mech = res.diagnostics.get("mechanics", res.diagnostics)
    stiff = mech.get("stiffness", {}).get("z")
    m = re.search(r"#\s+Solving:\s+([-+0-9.eE]+)", res.stdout or "")
    solve_s = float(m.group(1)) if m else float("nan")
    run = res.summary.run
    return dict(tool=f"parosol-py ({mpi} MPI)", n_dofs=3 * n_grid_nodes(e > 0), model_s=float("nan"),
                setup_s=total - solve_s, solve_s=solve_s, total_s=total,
                iterations=run.iterations if run else None, residual=run.relative_residual if run else None,
                stiffness=float(stiff) if stiff is not None else float("nan"), peak_mb=peak_rss_mb(),
                cpu_s=cpu_seconds() - c0,
                levels="", wall_s=total)


# ============================================================================ parent
def _tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and all its descendants, from /proc."""
    total = 0
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total / 1024.0


def _spawn(python: str, args: list[str], env: dict, timeout: float) -> tuple[dict | None, float, str]:
    proc = subprocess.Popen([python, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            done.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        done.set()
        return None, peak[0], f"timeout after {timeout:.0f} s"
    done.set()
    th.join()
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:]), peak[0], ""
    return None, peak[0], (err or out)[-2000:]


def ensure_parosol(venv: Path) -> str:
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import parosol_py"], capture_output=True).returncode == 0:
        return str(py)
    print(f"installing parosol-py into {venv} ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "parosol-py"], check=True)
    return str(py)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", nargs="+", default=["box:60", "verse:1"],
                    help="box:N (N voxels per 100 mm) and/or verse:R (VerSe L2 split R^3), default box:60 verse:1")
    ap.add_argument("--with-parosol", metavar="VENV", type=Path, default=None,
                    help="also run parosol-py from this virtual environment (installed there if missing)")
    ap.add_argument("--mpi", type=int, nargs="+", default=[2], help="MPI ranks for parosol-py runs (default 2)")
    ap.add_argument("--mg-dtype", default="float32", choices=("float32", "float64"),
                    help="precision of femur_fe's multigrid preconditioner (CG is float64), default float32")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        kind = args.child[0]
        if kind == "prepare":
            out = prepare(args.child[1], Path(args.child[2]))
        elif kind == "femur":
            out = run_femur(Path(args.child[1]), float(args.child[2]), args.child[3])
        else:
            out = run_parosol(Path(args.child[1]), float(args.child[2]), int(args.child[3]))
        print("RESULT " + json.dumps(out))
        return 0

    parosol_py = ensure_parosol(args.with_parosol) if args.with_parosol else None
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    env_femur = dict(env, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                     PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_voxel_"))
    try:
        for problem in args.problems:
            if problem.startswith("verse") and not VERSE.exists():
                print(f"skipping {problem}: {VERSE} not found (set FEMUR_FE_SHARED)")
                continue
            image = tmp / (problem.replace(":", "_") + ".npy")
            info, _, err = _spawn(sys.executable, ["--child", "prepare", problem, str(image)], env_femur,
                                  args.timeout)
            if info is None:
                print(f"{problem}: preparation failed: {err}")
                continue
            runs = [("femur", sys.executable, [str(image), str(info["voxel_mm"]), args.mg_dtype], env_femur)]
            if parosol_py:
                runs += [("parosol", parosol_py, [str(image), str(info["voxel_mm"]), str(m)], env) for m in args.mpi]
            for kind, py, extra, run_env in runs:
                load = os.getloadavg()[0]
                res, peak, err = _spawn(py, ["--child", kind, *extra], run_env, args.timeout)
                if res is None:
                    print(f"{problem} {kind}: failed: {err}")
                    continue
                res.update(problem=problem, voxels=info["n_voxels"], voxel_mm=info["voxel_mm"], load=load,
                           peak_mb=max(res["peak_mb"], peak))
                rows.append(res)
                print(json.dumps(res), flush=True)
    finally:
        for f in tmp.glob("*.npy"):
            f.unlink()
        tmp.rmdir()

    print()
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    hdr = (f"{'problem':<9} {'tool':<22} {'DOFs':>10} {'model s':>8} {'set-up s':>9} {'solve s':>8} {'total s':>8} "
           f"{'cpu s':>8} {'its':>4} {'peak GB':>8} {'stiffness N/mm':>16} {'load':>5}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        dofs = f"{r['n_dofs']:,}" if r.get("n_dofs") else "-"
        model = f"{r['model_s']:.2f}" if r["model_s"] == r["model_s"] else "-"
        print(f"{r['problem']:<9} {r['tool']:<22} {dofs:>10} {model:>8} {r['setup_s']:>9.2f} {r['solve_s']:>8.2f} "
              f"{r['total_s']:>8.2f} {r['cpu_s']:>8.1f} {r['iterations'] if r['iterations'] is not None else '-':>4} "
              f"{r['peak_mb'] / 1024:>8.3f} {r['stiffness']:>16.8e} {r['load']:>5.2f}")
    by_problem: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_problem.setdefault(r["problem"], {})[r["tool"]] = r
    for p, d in by_problem.items():
        a = d.get("femur_fe voxel")
        for tool, b in d.items():
            if a is None or not tool.startswith("parosol"):
                continue
            print(f"{p}: {tool} total / femur_fe total = {b['total_s'] / a['total_s']:.2f}x; "
                  f"stiffness relative difference {abs(a['stiffness'] - b['stiffness']) / abs(b['stiffness']):.1e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
