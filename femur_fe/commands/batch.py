"""``femur-fe batch FOLDER -o OUT``: a folder of CTs with their segmenter masks in, one results table out.

Example::

    femur-fe batch scans/ -o results/                       # every femur and lumbar vertebra mask
    femur-fe batch scans/ --bone femur_right --bone vertebrae_L2 --sex female -o results/
    femur-fe batch scans/ --case stance.toml --size 3 -o results/ --scheduler tcp://10.0.0.5:8786

Running the same command again resumes: finished rows are kept (refused ones too).
"""
from __future__ import annotations

import argparse
import logging

from ..studies.batch import DEFAULT_CASES, TABLE_NAME, format_table, run_batch
from .run import subject_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batch",
        help="a folder of CTs with segmenter masks (TotalSegmentator layout) -> one results table",
        description=(
            "Run a load case on every bone mask of every CT in FOLDER (CASE.nii.gz + CASE_seg/, or CASE/ct.nii.gz + "
            "CASE/seg/; masks named femur_right, vertebrae_L1... as TotalSegmentator names them) and write one table "
            f"OUT/{TABLE_NAME}.csv and .json: case id, bone, stiffness, linear strength, factor of risk (with --sex), "
            "warnings, and status ok / refused with the reason. Runs on the sweep engine: run again with the same "
            "-o to resume."
        ),
    )
    p.add_argument("folder", help="folder holding the CTs and their mask folders")
    p.add_argument("--out", "-o", required=True, help="results folder (created; reused to resume)")
    p.add_argument("--case", action="append", default=None, metavar="PRESET_OR_TOML",
                   help="load case (preset name or TOML), once per bone kind; femur_* masks run with the femur case, "
                        f"vertebrae_* masks with the vertebra case (default: {' and '.join(DEFAULT_CASES)})")
    p.add_argument("--bone", action="append", default=None, metavar="MASK",
                   help="mask name to run, e.g. femur_right or vertebrae_L2 (repeatable; default: every mask a case "
                        "applies to)")
    p.add_argument("--calibration", default="internal",
                   help="HU -> density: 'internal' (phantomless, default), a phantom calibration JSON, or 'case' "
                        "for the load case's own [material.calibration]")
    p.add_argument("--size", type=float, default=None, help="element size in mm (default: the size rule per bone)")
    p.add_argument("--mask-mesh", choices=("tet", "hex"), default="tet", help="tetrahedra or hex voxels")
    p.add_argument("--nonlinear", action="store_true", help="also run the nonlinear strength of every bone")
    p.add_argument("--sex", choices=("female", "male"), help="subject sex (classification, factor of risk)")
    p.add_argument("--mass", type=float, help="body mass in kg (fall impact force, factor of risk)")
    p.add_argument("--height", type=float, help="height in cm (fall impact force, factor of risk)")
    p.add_argument("--scheduler", default="serial",
                   help="'serial' (default: one bone after the other in this process), 'local' (a local Dask "
                        "cluster) or the address of a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--workers", type=int, default=None, help="local-cluster worker processes")
    p.add_argument("--timeout", type=float, default=None, help="per-bone time limit in s (Dask only)")
    p.add_argument("--no-runs", action="store_true", help="do not keep each bone's run folder in OUT/runs/")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "verbose", 0) < 2:
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)
    scheduler = None if args.scheduler == "local" else args.scheduler
    calibration = None if args.calibration == "case" else args.calibration
    # each bone's named warnings are in the table's warnings column: the console handlers print only
    # errors while the batch runs (the warnings are still recorded), unless -v
    handlers = logging.getLogger().handlers if getattr(args, "verbose", 0) < 1 else []
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(max(h.level, logging.ERROR))
    try:
        table = run_batch(args.folder, args.out, cases=args.case, bones=args.bone, calibration=calibration,
                          element_size_mm=args.size, mesh_type=args.mask_mesh, subject=subject_from_args(args),
                          nonlinear=args.nonlinear, scheduler=scheduler, n_workers=args.workers,
                          progress=not args.no_progress, timeout_s=args.timeout, runs=not args.no_runs)
    finally:
        for h, lvl in zip(handlers, levels):
            h.setLevel(lvl)
    for line in format_table(table):
        print(line)
    n_warned = sum(1 for w in table["warnings"] if isinstance(w, str) and w)
    if n_warned:
        print(f"{n_warned} row{'s' if n_warned != 1 else ''} with named warnings (column 'warnings' of the table; -v prints them as they occur)")
    counts = table["status"].value_counts().to_dict()
    print(f"{len(table)} rows: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "refused", "failed")))
    print(f"results: {args.out}/{TABLE_NAME}.csv, {args.out}/{TABLE_NAME}.json")
    return 0 if counts.get("failed", 0) == 0 else 1
