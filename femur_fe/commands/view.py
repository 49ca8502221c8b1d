"""``femur-fe view RESULT_DIR [--field F] [--screenshot FILE.png] [--clip]``: look at a result.

Opens an interactive PyVista window when a display exists. With ``--screenshot`` the view
is rendered off-screen and saved (works on headless machines). Without a display and
without ``--screenshot`` the command stops at once with exit code 2 and says so (it never
waits for a window). ``--compare OTHER_DIR`` shows RESULT_DIR (baseline) and OTHER_DIR
(scenario) side by side with a difference map. ``--list-fields`` prints the fields.
"""
from __future__ import annotations

import argparse
import sys

from ..io.results import read_result
from ..viz.views import (
    available_fields,
    display_available,
    field_spec,
    plot,
    plot_comparison,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "view",
        help="show a result field in 3-D (window, or --screenshot FILE.png off-screen)",
        description=("Show a field of a result folder (result.vtu + summary.json) with the load regions and the "
                     "load arrow. Without a display use --screenshot FILE.png."),
    )
    p.add_argument("result", help="result folder written by `femur-fe run` / femur_fe.run(..., out=DIR)")
    p.add_argument("--field", default="von_mises",
                   help="density, modulus, displacement, von_mises, principal_strain_max, principal_strain_min, "
                        "risk, sed, effective_strain or any array name (default %(default)s)")
    p.add_argument("--screenshot", metavar="FILE.png", help="render off-screen and save a PNG instead of a window")
    p.add_argument("--clip", action="store_true",
                   help="section through the femoral neck axis (femur) / mid-sagittal plane (vertebra)")
    p.add_argument("--warp", type=float, default=None,
                   help="displacement magnification (default: automatic for displacement, none otherwise)")
    p.add_argument("--clim", type=float, nargs=2, metavar=("LOW", "HIGH"), help="colour range in the field's units")
    p.add_argument("--compare", metavar="SCENARIO_DIR",
                   help="show RESULT (baseline) and SCENARIO_DIR side by side with the difference")
    p.add_argument("--window-size", type=int, nargs=2, metavar=("W", "H"), default=None,
                   help="window / image size in pixels (default 800 600; 1200 400 with --compare)")
    p.add_argument("--list-fields", action="store_true", help="print the fields of the result and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = read_result(args.result)
    if args.list_fields:
        for name in available_fields(res):
            print(name)
        return 0
    field_spec(res, args.field)  # an unknown field fails here, listing the available ones
    if args.screenshot is None:
        import pyvista as pv

        if not display_available() or getattr(pv, "OFF_SCREEN", False):
            print("femur-fe view: no display available (DISPLAY/WAYLAND_DISPLAY unset or off-screen mode), so no "
                  "window can open; use --screenshot FILE.png to save the view as an image", file=sys.stderr)
            return 2
    if args.compare:
        out = plot_comparison(res, read_result(args.compare), args.field, screenshot=args.screenshot, clip=args.clip,
                              clim=args.clim, window_size=args.window_size)
    else:
        out = plot(res, args.field, screenshot=args.screenshot, clip=args.clip, warp=args.warp, clim=args.clim,
                   window_size=args.window_size or (800, 600))
    if out is not None:
        print(f"wrote {out}")
    return 0
