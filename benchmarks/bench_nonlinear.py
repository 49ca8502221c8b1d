"""Benchmark: cost of a nonlinear strength in linear solves of the same model.

Usage::

    python benchmarks/bench_nonlinear.py                       # bundled vertebra + femur, VerSe L2
    python benchmarks/bench_nonlinear.py --bones vertebra femur
    python benchmarks/bench_nonlinear.py --reference           # + fine-step strict reference strength
    python benchmarks/bench_nonlinear.py --cli                 # + `femur-fe run ... --nonlinear` on VerSe L2
    python benchmarks/bench_nonlinear.py --json out.json

Models: the load-case pipeline (:func:`femur_fe.studies.run.prepare_run`) on

* ``vertebra``: the bundled vertebra, ``vertebral_compression`` (PMMA caps, plate displaced);
* ``femur``: the bundled femur, ``sideways_fall``;
* ``verse``: the VerSe L2 density CT (``../shared/data/ct_verse004_L2_density``, mg/cm^3,
  labels 1-4 = bone; its PROVENANCE.md), meshed from the mask at 1.5 mm, ``vertebral_compression``.

Each model runs in its own subprocess (peak resident memory ``ru_maxrss`` per model):

1. ``linear``: one linear solve of the FE model with the nonlinear problem's constraints
   (plate displaced along the load): stiffness assembly + :class:`femur_fe.fe.LinearSolver`
   set-up (the case's method, ``auto``) + one solve. This is the unit of cost.
2. ``nonlinear``: :func:`femur_fe.fe.nonlinear_strength` on the same model as
   :func:`femur_fe.analysis.prepare.run_nonlinear` calls it, with its own set-up (no reuse):
   ``x lin`` = its time / ``linear``. The target is at most 15.
3. ``after linear``: the pipeline order, ``Analysis.solve`` then ``run_nonlinear``, which
   preconditions with the linear analysis's set-up; ``x lin`` of the nonlinear part alone.
4. ``--reference``: the same problem with 48 equal steps to an energy-norm tolerance of 1e-6
   (instead of adaptive steps to 1e-3); ``diff`` = relative difference of the strengths.
5. ``--cli``: ``femur-fe run vertebral_compression --ct ... --nonlinear`` on the VerSe L2 as a
   subprocess: wall time (meshing and material mapping included) and peak memory; parosol-py's
   spine nonlinear profile (2 % displacement) took 228 s and 0.51 GB on this scan, measured on
   2 cores with ``parosol-py`` from PyPI (``benchmarks/bench_voxel.py --with-parosol``).

The machine is shared: the load average (``uptime``) is printed with the table; the ratios
(nonlinear / linear in the same process) are what carries over to another machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"
VERSE = SHARED / "ct_verse004_L2_density"
VERSE_IM = VERSE / "sub-verse004_0000_vertebra_21_im.nii.gz"
VERSE_SEG = VERSE / "sub-verse004_0000_vertebra_21_seg.nii.gz"
VERSE_LABELS = [1, 2, 3, 4]  # bone (PROVENANCE.md); 5 and 6 are the upstream PMMA caps
VERSE_SIZE_MM = 1.5
PAROSOL_SPINE_S, PAROSOL_SPINE_GB = 228.0, 0.51  # parosol-py spine nonlinear profile, this scan, 2 cores

BONES = {
    "vertebra": ("vertebral_compression", {"bundled": "vertebra"}),
    "femur": ("sideways_fall", {"bundled": "femur"}),
    "verse": ("vertebral_compression", {"ct": str(VERSE_IM), "ct_unit": "mg/cm3", "mask": str(VERSE_SEG),
                                        "labels": VERSE_LABELS, "element_size_mm": VERSE_SIZE_MM}),
}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _nonlinear_args(an, model) -> dict:
    """The arguments run_nonlinear gives nonlinear_strength (endpoint strength definition)."""
    from femur_fe.analysis.prepare import nonlinear_arguments

    opts = an.case.nonlinear
    length = opts.characteristic_length_mm or an.height_mm
    return {**nonlinear_arguments(an, model), "endpoint_mm": opts.endpoint_percent / 100.0 * length}


def run_one(bone: str, reference: bool) -> dict:
    import logging

    import femur_fe.fe as fe
    from femur_fe.analysis.prepare import run_nonlinear
    from femur_fe.studies.run import prepare_run

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    case, spec = BONES[bone]
    t = time.perf_counter()
    prep = prepare_run(case, spec)
    t_prep = time.perf_counter() - t
    an = prep.analysis
    mesh = an.fe_mesh
    young = an.fe_young()
    kw = _nonlinear_args(an, prep.model)

    # 1. one linear solve of the nonlinear problem's constraints (the unit of cost)
    t = time.perf_counter()
    asm = fe.StiffnessAssembler(mesh, kw["poisson"])
    k = asm.assemble(young)
    solver = fe.LinearSolver(k, an.fixed_dofs, points=mesh, method=an.case.solver.method, constraints=kw["ties"])
    sol = solver.solve(np.zeros(mesh.n_dofs), tie_values={kw["load_tie"]: {"uz": 0.01}})
    t_lin = time.perf_counter() - t
    lin_method, lin_its = sol.report.method, sol.report.iterations
    del solver, k, asm, sol

    # 2. nonlinear strength with its own set-up
    t = time.perf_counter()
    nl = fe.nonlinear_strength(mesh, young, **kw)
    t_nl = time.perf_counter() - t

    # 3. pipeline order: linear analysis, then the nonlinear run reusing its set-up
    t = time.perf_counter()
    res = an.solve()
    t_an = time.perf_counter() - t
    t = time.perf_counter()
    nl2 = run_nonlinear(an, res)
    t_nl2 = time.perf_counter() - t
    row = {
        "bone": bone, "case": case, "cells": mesh.n_cells, "dofs": mesh.n_dofs,
        "regions": {k_: v.n_nodes for k_, v in an.regions.items()}, "prepare_s": t_prep,
        "solver": lin_method, "linear_its": lin_its, "linear_s": t_lin,
        "nonlinear_s": t_nl, "ratio": t_nl / t_lin,
        "analysis_s": t_an, "nonlinear_after_linear_s": t_nl2, "ratio_after_linear": t_nl2 / t_lin,
        "steps": len(nl.steps), "newton_its": sum(s.iterations for s in nl.steps),
        "linear_iterations": nl.report["linear_iterations"], "preconditioner_solves": nl.report["preconditioner_solves"],
        "endpoint_mm": nl.endpoint_mm, "strength_N": nl.strength_N, "strength_after_linear_N": nl2.strength_N,
        "after_linear_krylov": nl2.report["linear_iterations"], "after_linear_M": nl2.report["preconditioner_solves"],
        "after_linear_setup_s": nl2.report["setup_seconds"], "nonlinear_setup_s": nl.report["setup_seconds"],
        "first_yield_N": nl.first_yield_force_N, "yielded_percent": nl.steps[-1].yielded_volume_percent,
        "stop": nl.report["stop_reason"],
    }
    if reference:
        t = time.perf_counter()
        ref = fe.nonlinear_strength(mesh, young, adaptive=False, n_steps=48, rtol=1e-6, **kw)
        row.update(reference_N=ref.strength_N, reference_s=time.perf_counter() - t,
                   diff_percent=100.0 * (nl.strength_N - ref.strength_N) / ref.strength_N)
    row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def run_cli(out: Path) -> dict:
    cmd = [sys.executable, "-c", "import sys; from femur_fe.commands.cli import main; sys.exit(main())", "run",
           "vertebral_compression", "--ct", str(VERSE_IM), "--ct-unit",
           "mg/cm3", "--mask", str(VERSE_SEG), "--size", str(VERSE_SIZE_MM), "-o", str(out), "--nonlinear"]
    for lab in VERSE_LABELS:
        cmd += ["--label", str(lab)]
    load0 = _load()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        raise RuntimeError(f"femur-fe run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    steps = [ln.strip() for ln in proc.stdout.splitlines() if "nonlinear step" in ln]
    return {"wall_s": wall, "peak_mb": peak, "load_before": load0, "load_after": _load(),
            "strength_N": summary.get("strength_nonlinear_N"), "steps": steps, "command": "femur-fe " + " ".join(cmd[3:])}


def _table(rows: list[dict]) -> str:
    head = ("| model | cells | DOFs | solver | linear s | nonlinear s | x lin | after linear s | x lin | steps | "
            "Newton its | Krylov its | M | strength N | ref N | diff % | peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ref = f"{r['reference_N']:.1f}" if "reference_N" in r else "-"
        diff = f"{r['diff_percent']:+.3f}" if "diff_percent" in r else "-"
        lines.append(
            f"| {r['bone']} | {r['cells']} | {r['dofs']} | {r['solver']} ({r['linear_its']} it) | {r['linear_s']:.1f} | "
            f"{r['nonlinear_s']:.1f} | **{r['ratio']:.1f}** | {r['nonlinear_after_linear_s']:.1f} | "
            f"{r['ratio_after_linear']:.1f} | {r['steps']} | {r['newton_its']} | {r['linear_iterations']} | "
            f"{r['preconditioner_solves']} | {r['strength_N']:.1f} | {ref} | {diff} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bones", nargs="+", default=["vertebra", "femur", "verse"], choices=sorted(BONES))
    ap.add_argument("--reference", action="store_true", help="also the fine-step strict reference strength")
    ap.add_argument("--cli", action="store_true", help="also time `femur-fe run ... --nonlinear` on the VerSe L2")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.reference)))
        return 0
    if "verse" in args.bones or args.cli:
        if not VERSE_IM.exists():
            print(f"VerSe L2 not found at {VERSE}; set FEMUR_FE_SHARED or drop 'verse'", file=sys.stderr)
            return 2
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    print(f"load average before: {_load()} ({os.cpu_count()} cores)", flush=True)
    rows = []
    for bone in args.bones:
        cmd = [sys.executable, __file__, "--one", bone] + (["--reference"] if args.reference else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["load"] = _load()
        rows.append(row)
        print(f"{bone}: regions {row['regions']}, endpoint {row['endpoint_mm']:.3f} mm, strength {row['strength_N']:.1f} N "
              f"(after linear {row['strength_after_linear_N']:.1f} N), first yield {row['first_yield_N']:.1f} N, "
              f"yielded {row['yielded_percent']:.1f} % of the bone volume, load {row['load']}", flush=True)
    print()
    print(_table(rows))
    out = {"rows": rows}
    if args.cli:
        with tempfile.TemporaryDirectory() as tmp:
            cli = run_cli(Path(tmp) / "verse")
        out["cli"] = cli
        print()
        print(f"femur-fe run ... --nonlinear on the VerSe L2 ({cli['command']}):")
        for line in cli["steps"]:
            print(f"    {line}")
        print(f"  wall {cli['wall_s']:.1f} s, peak {cli['peak_mb']:.0f} MB, strength {cli['strength_N']:.1f} N "
              f"(parosol-py spine nonlinear profile: {PAROSOL_SPINE_S:.0f} s, {PAROSOL_SPINE_GB * 1024:.0f} MB; "
              f"x {cli['wall_s'] / PAROSOL_SPINE_S:.2f}); load {cli['load_before']} -> {cli['load_after']}")
    print(f"\nload average after: {_load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
