"""``femur-fe make-bone``: generate a parametric bone (tet mesh + synthetic QCT volumes).

Examples::

    femur-fe make-bone femur -o meshes                       # the bundled default femur
    femur-fe make-bone vertebra -o meshes
    femur-fe make-bone femur --side left --param neck_shaft_angle_deg=135 --state osteoporotic -o out/
"""
from __future__ import annotations

import argparse
import time

from ..bone.bundled import STATES, write_bone


def _param(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-bone",
        help="generate the parametric proximal femur or lumbar vertebra with synthetic QCT volumes",
        description=(
            "Build a bone from anatomical parameters (implicit surface -> surface nets -> TetGen) and write "
            "<stem>.vtu (tet mesh, LPS frame, mm), <stem>_<state>_qct.nii.gz (synthetic QCT in HU, int16, "
            "1 mm voxels), calibration.json (HU -> K2HPO4 g/cm3) and <stem>.json (parameters, landmarks). "
            "Deterministic: the same arguments give the same files."
        ),
    )
    p.add_argument("bone", choices=("femur", "vertebra"))
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--state", action="append", choices=("healthy", "osteopenic", "osteoporotic"),
                   help="bone state(s) of the QCT volumes (repeatable; default: all three)")
    p.add_argument("--side", choices=("right", "left"), default="right", help="femur side (default right)")
    p.add_argument("--size", type=float, default=None, help="target element size in mm (default 2.0)")
    p.add_argument("--order", type=int, choices=(1, 2), default=1, help="1 = tet4 (default), 2 = tet10")
    p.add_argument("--voxel", type=float, default=1.0, help="QCT voxel size in mm (default 1.0)")
    p.add_argument("--param", action="append", type=_param, default=[], metavar="NAME=VALUE",
                   help="override a FemurParams / VertebraParams field, e.g. neck_shaft_angle_deg=135")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    t0 = time.perf_counter()
    states = tuple(dict.fromkeys(args.state)) if args.state else STATES
    files = write_bone(args.output, args.bone, states=states, side=args.side, element_size=args.size,
                       order=args.order, params=dict(args.param), voxel_mm=args.voxel)
    for key, path in files.items():
        print(f"{key:>16s}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
