"""Benchmark of femur_fe's global stiffness assembly against scikit-fem.

Usage::

    python benchmarks/bench_assembly.py            # ~100k DOF cases with scikit-fem, 1M DOF femur_fe only
    python benchmarks/bench_assembly.py --full     # also scikit-fem at ~1M DOF (tet4 needs ~65 s, ~10 GB)
    python benchmarks/bench_assembly.py --threads 1 --cases tet4-1M hex8-voxel-1M

Every case runs in a fresh subprocess, so memory numbers are not polluted by earlier
cases. Columns:

* first s: ``assemble_stiffness`` from scratch (sparsity pattern + values + CSR), best of 2
* pattern s: the pattern part of it (``StiffnessAssembler.pattern_seconds``)
* re-asm s: ``StiffnessAssembler.assemble(new moduli)`` returning a fresh CSR, best of 3
* skfem s: scikit-fem ``Basis`` + ``asm(linear_elasticity)`` with the same per-element moduli
* ratio: skfem s / first s
* CSR MB: bytes of the returned matrix (data + indices + indptr)
* peak MB: peak of NumPy allocations (tracemalloc) during the first assembly, the returned
  matrix included; ``peak/CSR`` is the memory target (<= 2)
* RSS MB: peak resident-set increase during the first assembly (ru_maxrss / psutil sampling)

Targets (tet4 box ~1M DOF, ~1.9M tets): re-assembly <= 2 s, first assembly <= 5 s and
>= 25x faster than scikit-fem; hex8 voxels at 1M DOF <= 1 s; peak <= 2x CSR. The machine
is shared, so timings are noisy; run it when the machine is quiet for stable numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name -> (cell type, cubes per side, distortion, skfem by default). scikit-fem has no voxel
# fast path, so its hex8 time is the same for voxels; it is not re-run on them by default
# (it takes ~10 min at 100k DOF hex8 on this machine).
CASES = {
    "tet4-100k": ("tetra", 31, 0.15, True),
    "tet4-1M": ("tetra", 68, 0.15, False),
    "tet10-100k": ("tetra10", 16, 0.15, True),
    "tet10-1M": ("tetra10", 34, 0.15, False),
    "hex8-100k": ("hexahedron", 31, 0.15, True),
    "hex8-1M": ("hexahedron", 68, 0.15, False),
    "hex8-voxel-100k": ("hexahedron", 31, 0.0, False),
    "hex8-voxel-1M": ("hexahedron", 68, 0.0, False),
}


def _mesh(case: str):
    from femur_fe.fe.boxes import box_mesh

    ct, n, dist, _ = CASES[case]
    return box_mesh(ct, n, n, n, h=1.0, distortion=dist, seed=1)


def _young(mesh, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(500.0, 20000.0, mesh.n_cells)


class _RssSampler:
    """Peak RSS (bytes) seen by a background thread sampling every 2 ms."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def worker_femur(case: str, n_threads: int | None) -> dict:
    import femur_fe
    from femur_fe.fe.assembly import StiffnessAssembler

    mesh = _mesh(case)
    e1, e2 = _young(mesh, 1), _young(mesh, 2)
    import gc

    gc.collect()
    rss0 = _RssSampler()._proc.memory_info().rss
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    with _RssSampler() as sampler:
        t0 = time.perf_counter()
        asm = StiffnessAssembler(mesh, 0.3, n_threads=n_threads)
        k = asm.assemble(e1)
        first = time.perf_counter() - t0
    peak_np = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_peak = max(sampler.peak, maxrss1 if maxrss1 > maxrss0 else 0) - rss0
    csr = k.data.nbytes + k.indices.nbytes + k.indptr.nbytes
    info = dict(case=case, cell_type=mesh.cell_type, n_cells=mesh.n_cells, dofs=mesh.n_dofs,
                nnz=int(k.nnz), csr_mb=csr / 1e6, peak_mb=peak_np / 1e6, rss_mb=rss_peak / 1e6,
                pattern_s=asm.pattern_seconds, template=asm.uses_template,
                threads=asm.n_threads, openmp=femur_fe.fe.openmp_enabled())
    del k, asm
    firsts = [first]
    t0 = time.perf_counter()
    asm = StiffnessAssembler(mesh, 0.3, n_threads=n_threads)
    pattern2 = asm.pattern_seconds
    k = asm.assemble(e1)
    firsts.append(time.perf_counter() - t0)
    del k
    re = []
    for rep in range(3):
        t0 = time.perf_counter()
        k = asm.assemble(e2 if rep % 2 == 0 else e1)
        re.append(time.perf_counter() - t0)
        del k
    info.update(first_s=min(firsts), reassembly_s=min(re), pattern_s=min(info["pattern_s"], pattern2))
    return info


def worker_skfem(case: str) -> dict:
    from skfem import (
        Basis,
        ElementHex1,
        ElementTetP1,
        ElementTetP2,
        ElementVector,
        MeshHex,
        MeshTet,
        asm,
    )
    from skfem.models.elasticity import lame_parameters, linear_elasticity

    from femur_fe.fe.elements import reference_nodes

    mesh = _mesh(case)
    young = _young(mesh, 1)
    t0 = time.perf_counter()
    if mesh.cell_type == "hexahedron":
        ref = reference_nodes("hexahedron")
        perm = [int(np.flatnonzero(np.all(np.abs(ref - (2 * r - 1)) < 1e-12, axis=1))[0])
                for r in ElementHex1.doflocs]
        smesh = MeshHex(mesh.points.T.copy(), mesh.cells[:, perm].T.copy(), sort_t=False)
        elem = ElementHex1()
    else:
        nv = int(mesh.cells[:, :4].max()) + 1
        smesh = MeshTet(mesh.points[:nv].T.copy(), mesh.cells[:, :4].T.copy(), sort_t=False)
        elem = ElementTetP1() if mesh.cell_type == "tetra" else ElementTetP2()
    basis = Basis(smesh, ElementVector(elem))
    k = asm(linear_elasticity(*lame_parameters(young[:, None], 0.3)), basis)
    return dict(case=case, skfem_s=time.perf_counter() - t0, skfem_nnz=int(k.nnz))


def _run_worker(kind: str, case: str, threads: int | None, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", kind, "--case", case]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        print(f"  {kind} {case}: timed out after {timeout:.0f} s", file=sys.stderr)
        return None
    except subprocess.CalledProcessError as exc:
        print(f"  {kind} {case} failed:\n{exc.stderr}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="also run scikit-fem on the ~1M DOF cases (slow, ~10 GB)")
    ap.add_argument("--no-skfem", action="store_true", help="skip scikit-fem entirely")
    ap.add_argument("--threads", type=int, default=None, help="femur_fe threads (default: all cores)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    ap.add_argument("--worker", choices=["femur", "skfem"], help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker == "femur":
        print(json.dumps(worker_femur(args.case, args.threads)))
        return 0
    if args.worker == "skfem":
        print(json.dumps(worker_skfem(args.case)))
        return 0

    print(f"# femur_fe assembly benchmark: {os.cpu_count()} cores, load average "
          f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} (other load on the machine makes timings noisy)")
    head = (f"{'element':<22}{'DOFs':>9}{'cells':>9}{'first s':>9}{'pattern s':>10}{'re-asm s':>9}"
            f"{'skfem s':>9}{'ratio':>7}{'CSR MB':>8}{'peak MB':>8}{'peak/CSR':>9}{'RSS MB':>8}")
    print(head)
    print("-" * len(head))
    rows = []
    for case in args.cases:
        row = _run_worker("femur", case, args.threads, 1200)
        if row is None:
            continue
        if not args.no_skfem and (CASES[case][3] or args.full):
            sk = _run_worker("skfem", case, None, 3600)
            if sk:
                row.update(sk)
        name = case + (" (tmpl)" if row["template"] else "")
        sk_s = row.get("skfem_s")
        ratio = f"{sk_s / row['first_s']:.0f}x" if sk_s else "-"
        print(f"{name:<22}{row['dofs']:>9}{row['n_cells']:>9}{row['first_s']:>9.3f}{row['pattern_s']:>10.3f}"
              f"{row['reassembly_s']:>9.3f}{(f'{sk_s:.2f}' if sk_s else '-'):>9}{ratio:>7}"
              f"{row['csr_mb']:>8.0f}{row['peak_mb']:>8.0f}{row['peak_mb'] / row['csr_mb']:>9.2f}"
              f"{row['rss_mb']:>8.0f}", flush=True)
        rows.append(row)
    if rows:
        print(f"# femur_fe threads: {rows[0]['threads']}, OpenMP: {rows[0]['openmp']}; "
              "skfem only at ~100k DOF unless --full")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
