"""Sweep throughput: a 48-task sweep (density scale x fall direction) on the bundled femur,
run as a serial loop in this process and on a 2-worker Dask LocalCluster.

    python benchmarks/bench_sweep.py [--workers 2] [--out /tmp/bench_sweep] [--keep]

Both runs use femur_fe.studies.sweep with the default pipeline task and the same spec:

* bone: the bundled right femur, osteoporotic synthetic QCT (``femur_fe.bundled_bone``);
* case: ``loadcases/sideways_fall.toml`` with ``solver.method = "direct"`` (CHOLMOD or
  SuperLU factorisation);
* 6 density fields: a uniform scenario, ``scenario.percent`` = -15, -10, -5, +5, +10, +15 %;
* 8 fall directions: ``loading.adduction_deg`` = 0, 5, ..., 35 (internal rotation 15 deg).

Tasks on one density field share the prepared analysis and its factorisation (supports at
the base case's angles; only the load turns), in the serial loop through the in-process
cache and on Dask through the per-worker cache plus the placement of whole density fields
on one worker. The Dask time includes starting and stopping the cluster. The serial loop
runs with the process's default BLAS/OpenMP threads; Dask workers have one thread each.

Prints one table row per round: tasks, serial s, dask s, speedup, cache hits, solver
set-ups, the summed task CPU time of each run (and of the busiest worker), the Dask
overhead outside tasks (cluster start/stop), an idle-machine estimate of the speedup from
those CPU times, the machine's load average and the speedup that an embarrassingly
parallel reference job (independent matrix products on as many processes) gets at the same
time: the measured sweep speedup is only meaningful when that reference is close to the
worker count (an otherwise idle machine). It also checks that both runs give
the same stiffness and strength (rtol 1e-6: the direct solves are the same operations,
only the BLAS thread count may differ). ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` makes
the serial loop single-threaded like the workers.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_spec():
    import femur_fe as ff
    from femur_fe.studies.sweep import SweepSpec

    case = ff.load_case(ROOT / "loadcases" / "sideways_fall.toml").with_values({"solver.method": "direct"})
    return SweepSpec(
        name="bench_density_direction",
        base=case,
        parameters={"state": ["osteoporotic"],
                    "scenario.percent": [-15.0, -10.0, -5.0, 5.0, 10.0, 15.0],
                    "loading.adduction_deg": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0]},
        scenarios=[{"name": "density_scale", "density_type": "ash",
                    "description": "uniform density change (x (1 + percent/100))",
                    "operator": [{"type": "uniform", "percent": 0.0}]}],
        retries=0,
    )


def _matmul_work(_: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.random((300, 300))
    for _ in range(300):
        a = a @ a
        a /= np.abs(a).max()
    return float(a[0, 0])


def reference_speedup(workers: int, n_jobs: int = 4) -> float:
    """Speedup of an embarrassingly parallel job (independent matrix products, no I/O) on
    ``workers`` processes over one: what the machine can give right now (2.0 on an idle
    2-core machine; less when other processes hold the cores)."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    for i in range(n_jobs):
        _matmul_work(i)
    t_serial = time.perf_counter() - t0
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_matmul_work, range(workers))          # start-up outside the timing
        t0 = time.perf_counter()
        pool.map(_matmul_work, range(n_jobs))
        t_par = time.perf_counter() - t0
    return t_serial / t_par


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of (serial, dask), alternating")
    ap.add_argument("--out", default=None, help="folder for the result sets (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the result folders")
    args = ap.parse_args()
    import distributed  # noqa: F401  (sets its logger levels on import: override after it)

    for name in ("distributed", "femur_fe.bone.mapping", "femur_fe.therapy.scenarios"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from femur_fe.studies.sweep import clear_worker_cache, run_sweep

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    spec = make_spec()
    n = len(spec.expand())
    rows = []
    for k in range(args.repeat):
        for sub in (f"serial{k}", f"dask{k}"):
            shutil.rmtree(out / sub, ignore_errors=True)
        ref = reference_speedup(args.workers)
        clear_worker_cache()
        load0 = _load()
        t0 = time.perf_counter()
        ser = run_sweep(spec, out / f"serial{k}", scheduler="serial", progress=True)
        t_serial = time.perf_counter() - t0
        clear_worker_cache()
        load1 = _load()
        t0 = time.perf_counter()
        par = run_sweep(spec, out / f"dask{k}", n_workers=args.workers, progress=True)
        t_dask = time.perf_counter() - t0
        load2 = _load()
        for name, df in (("serial", ser), ("dask", par)):
            bad = df[df["status"] != "ok"]
            if len(bad):
                raise SystemExit(f"{name}: {len(bad)} tasks not ok: {bad['error'].iloc[0]}")
        s = ser.set_index("task_id").sort_index()
        p = par.set_index("task_id").sort_index()
        for col in ("stiffness_N_per_mm", "strength_linear_N"):
            if not np.allclose(s[col], p[col], rtol=1e-6):
                raise SystemExit(f"serial and dask differ in {col}: max rel "
                                 f"{np.max(np.abs(s[col] / p[col] - 1)):.3g}")
        # what an idle machine would give: each task's CPU time is its wall time there (one
        # thread per worker; run the serial loop with OMP_NUM_THREADS=1 for the same), the
        # workers run their task lists in parallel, and the non-task overheads (cluster start
        # and stop, expansion, writing parts) are taken as measured
        worker_cpu = par.groupby("worker")["cpu_s"].sum()
        dask_over = t_dask - (par["finished_at"].max() - par["started_at"].min())
        ser_over = t_serial - float(ser["seconds"].sum())
        est = (float(ser["cpu_s"].sum()) + ser_over) / (float(worker_cpu.max()) + dask_over)
        rows.append({"tasks": n, "serial_s": t_serial, "dask_s": t_dask, "speedup": t_serial / t_dask, "est": est,
                     "busiest_worker_cpu_s": float(worker_cpu.max()), "dask_overhead_s": dask_over,
                     "hits": int(p["cache_hits"].sum()), "setups": p.groupby(["scenario.percent", "worker"]).ngroups,
                     "fields": p["scenario.percent"].nunique(), "ref": ref, "serial_cpu_s": float(ser["cpu_s"].sum()),
                     "dask_cpu_s": float(par["cpu_s"].sum()), "load": (load0 + load1 + load2) / 3})
    print()
    print(f"| tasks | serial s | dask s ({args.workers} workers) | speedup | cache hits (dask) | solver set-ups "
          "(dask) | task CPU s serial / dask (busiest worker) | dask overhead s | idle-machine estimate | "
          "load avg (1 min) | reference speedup now |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tasks']} | {r['serial_s']:.1f} | {r['dask_s']:.1f} | {r['speedup']:.2f}x | {r['hits']} | "
              f"{r['setups']} (of {r['fields']} density fields) | {r['serial_cpu_s']:.0f} / {r['dask_cpu_s']:.0f} "
              f"({r['busiest_worker_cpu_s']:.0f}) | {r['dask_overhead_s']:.1f} | {r['est']:.2f}x | {r['load']:.1f} | "
              f"{r['ref']:.2f}x |")
    if len(rows) > 1:
        print(f"\nmedian speedup over {len(rows)} rounds: {np.median([r['speedup'] for r in rows]):.2f}x")
    if not args.keep and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
