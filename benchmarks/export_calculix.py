"""CalculiX against femur_fe on the exported bundled cases (the README's export table).

For each case: ``femur-fe run`` (bundled bone, osteoporotic) into a run folder, ``femur-fe export`` of that
folder to an Abaqus deck (exact per-element materials, and Bonemat-binned with ``--materials``), ``ccx``
on the deck, then the largest displacement difference relative to the largest displacement, the
reaction differences relative to the load, and the ccx wall time (one thread). Prints a table.

``clinical_L3`` is real data: the L3 of the clinical CT in ``../shared/data/ct_totalseg_example`` (HU, 3 mm)
meshed from its TotalSegmentator mask at 3 mm, with the bundled bones' K2HPO4 calibration as an assumed
scanner calibration (the scan has no phantom).

Run: ``OPENBLAS_NUM_THREADS=1 python benchmarks/export_calculix.py [--cases vertebra femur clinical_L3]
[--materials 100]`` (needs ``ccx`` on PATH; the femur deck holds 106 k materials and takes ccx 1-2 min).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import femur_fe as ff
from femur_fe.analysis import load_analysis
from femur_fe.commands.cli import main as cli
from femur_fe.io.abaqus import write_abaqus
from femur_fe.io.calculix import agreement, read_dat, run_ccx
from femur_fe.io.deck import build_deck

SHARED = Path(os.environ.get("FEMUR_FE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
CT = SHARED / "ct_totalseg_example"
CASES = {
    "vertebra": ["vertebral_compression", "--bundled", "vertebra"],
    "femur": ["sideways_fall", "--bundled", "femur"],
    "clinical_L3": ["vertebral_compression", "--ct", str(CT / "example_ct.nii.gz"), "--mask",
                    str(CT / "example_seg" / "vertebrae_L3.nii.gz"), "--size", "3",
                    "--calibration", str(ff.bundled_bone("vertebra").calibration)],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=tuple(CASES), default=["vertebra", "femur"])
    ap.add_argument("--materials", type=int, default=100, help="bins of the binned export (default %(default)s)")
    ap.add_argument("--out", help="keep the run folders and decks here (default: a temporary folder)")
    args = ap.parse_args()
    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="femur_fe_export_"))
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    rows = []
    for bone in args.cases:
        run_dir = tmp / f"{bone}_run"
        if cli(["run", *CASES[bone], "-o", str(run_dir)]) != 0:
            raise SystemExit(f"femur-fe run failed for {bone}")
        an, res = load_analysis(run_dir)
        for label, kw in (("exact", {}), (f"{args.materials} bins", {"n_materials": args.materials})):
            t0 = time.perf_counter()
            deck = build_deck(an, res, **kw)
            inp = tmp / f"{bone}_{'exact' if not kw else 'binned'}.inp"
            write_abaqus(deck, inp, print_displacements=True)
            t_export = time.perf_counter() - t0
            ccx = run_ccx(inp)
            a = agreement(deck, res, ccx["dat"])
            k = read_dat(ccx["dat"])[("total force", deck.plate.name + "_REF")][2] / res.plate_displacement_mm
            bounds = deck.binning.stiffness_ratio_bounds if deck.binning else (1.0, 1.0)
            rows.append((f"{an.case.name} ({bone})", label, an.fe_mesh.n_cells, len(deck.material_names), t_export,
                         ccx["seconds"], a["displacement"], max(a["reactions"].values()),
                         k / res.stiffness_N_per_mm, bounds))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("| case | materials | elements | materials in deck | export s | ccx s | max rel. displacement diff "
          "| max rel. reaction diff | K_ccx / K_femur_fe | reported bounds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:,} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1e} | {r[7]:.1e} | "
              f"{r[8]:.6f} | [{r[9][0]:.5f}, {r[9][1]:.5f}] |")
    print(f"(decks and ccx output in {tmp})")


if __name__ == "__main__":
    main()
