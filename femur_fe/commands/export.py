"""``femur-fe export RUN_DIR --format abaqus|febio -o FILE``: hand a solved case to another FE code.

Rebuilds the analysis from the run folder (``result.vtu``, ``summary.json``, ``fe_model.json``; no
anatomy, no CT) and writes an Abaqus/CalculiX ``.inp`` or an FEBio 4.0 ``.feb`` file of the model that
was solved: mesh with the PMMA caps, per-element (or Bonemat-binned) materials, region sets and surfaces,
supports, the rigid loading plate and its load, one static step and the output requests.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FemurFeError
from ..io.abaqus import TIE_FORMS, export_abaqus
from ..io.deck import BINNING_GROUPING
from ..io.febio import export_febio
from ..studies.stored import load_analysis
from .run import progress_printer

FORMATS = {"abaqus": ".inp", "febio": ".feb"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a solved run as an Abaqus/CalculiX .inp or FEBio .feb input file",
        description=("Write the FE model of a run folder (written by `femur-fe run`) for another solver: nodes in the "
                     "load frame (load along +z'), elements (C3D4/C3D10/C3D8 or tet4/tet10/hex8) with the PMMA caps, "
                     "per-element moduli (or --materials N / --gap-mpa E bins, Bonemat-style, with the binning "
                     "error), node/element sets and surfaces of every region, the supports, the rigid loading "
                     "plate with the case's displacement or force, one static step and the reaction output. "
                     "CalculiX runs the .inp as is: `ccx -i NAME` (without .inp)."),
    )
    p.add_argument("run_dir", help="result folder written by `femur-fe run ... --out DIR`")
    p.add_argument("--format", choices=tuple(FORMATS),
                   help="abaqus (.inp, also read by CalculiX) or febio (.feb, FEBio 4.0); default from the -o suffix")
    p.add_argument("-o", "--out", required=True, help="output file (.inp or .feb)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--materials", type=int, metavar="N",
                   help="bin the bone moduli into N materials (Bonemat: gap = (Emax - Emin) / N)")
    g.add_argument("--gap-mpa", type=float, metavar="E", help="bin the bone moduli with a modulus gap of E MPa")
    p.add_argument("--grouping", choices=BINNING_GROUPING, default="max",
                   help="modulus of a bin: the largest of its elements (Bonemat default) or their mean "
                        "(default %(default)s)")
    p.add_argument("--tie", choices=TIE_FORMS, default="auto",
                   help="abaqus: the plate as *COUPLING/*KINEMATIC on its surface or as *EQUATIONs "
                        "(default %(default)s: coupling when the tied nodes form a surface)")
    p.add_argument("--print-displacements", action="store_true",
                   help="abaqus: also *NODE PRINT the displacement of every node into the .dat file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = args.format
    if fmt is None:
        fmt = next((k for k, suf in FORMATS.items() if out.suffix.lower() == suf), None)
        if fmt is None:
            raise FemurFeError(f"cannot tell the format from {out.name!r}: give --format abaqus|febio or an output "
                               "file ending in .inp or .feb")
    other = next((k for k, suf in FORMATS.items() if out.suffix.lower() == suf and k != fmt), None)
    if other is not None:
        raise FemurFeError(f"--format {fmt} does not match the output file {out.name!r} ({other}); name it "
                           f"*{FORMATS[fmt]} or drop --format")
    if args.materials is not None and args.materials < 1:
        raise FemurFeError(f"--materials must be >= 1, got {args.materials}")
    if fmt == "febio" and (args.tie != "auto" or args.print_displacements):
        raise FemurFeError("--tie and --print-displacements apply to --format abaqus only")
    say = progress_printer(args.quiet)
    say(f"reading the model of {args.run_dir} (result.vtu, summary.json, fe_model.json)")
    an, res = load_analysis(args.run_dir)
    say(f"writing {out} ({fmt}, {an.n_bone_cells} bone elements)")
    binning = {"n_materials": args.materials, "gap_mpa": args.gap_mpa, "grouping": args.grouping}
    if fmt == "abaqus":
        rep = export_abaqus(an, res, out, tie=args.tie, print_displacements=args.print_displacements, **binning)
    else:
        rep = export_febio(an, res, out, **binning)
    print(f"{an.case.name}: wrote {rep.path} ({fmt}): {rep.n_nodes} nodes, {rep.n_elements} elements "
          f"({an.n_bone_cells} bone + {rep.n_elements - an.n_bone_cells} cap), {rep.n_materials} materials, "
          f"plate: {rep.tie}")
    print(f"  node sets: {', '.join(rep.node_sets)}")
    print(f"  surfaces:  {', '.join(rep.surfaces) or 'none'}")
    if rep.binning is not None:
        print(f"  binning:   {rep.binning.summary()}")
    ref = res.stiffness_N_per_mm
    print(f"  femur_fe:  plate force {res.load_force_N:.6g} N at {res.plate_displacement_mm:.6g} mm"
          + (f", stiffness {ref:.6g} N/mm" if ref else ""))
    if fmt == "abaqus":
        print(f"  run:       ccx -i {out.with_suffix('')}   (reactions: total RF lines of {out.stem}.dat)")
    return 0
