"""``femur-fe regions CASE.toml --mesh M | --mask MASK [--ct CT] -o regions.vtu``: show what was found.

Builds the bone exactly as ``femur-fe run`` does (volume mesh, closed surface, or CT mask,
with the same ``--size``, ``--label``, ``--mask-mesh`` and ``--set`` options), fits the
anatomical frame with the case's ``[anatomy]`` overrides and selects every region. Writes
the mesh with one 0/1 point-data array ``region_<name>`` per region (and the node sets),
``<stem>_landmarks.vtu`` with the anatomical landmarks as vertices (point data
``landmark``: index into the names listed in ``<stem>_frame.json``) and
``<stem>_frame.json`` with the frame, the landmarks (world mm), how each was found, the load
direction and a summary of every region. It prints the landmarks and regions, so the
automatic choices can be checked (and overridden with ``--set anatomy.<key>=...``) before
solving.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..analysis.regions import frame_for, load_direction, regions_mesh, select_regions
from ..errors import OutputError
from ..io import atomic_path, write_json_atomic, write_mesh
from .run import add_bone_arguments, case_and_specimen, progress_printer

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "regions",
        help="find the anatomical frame and the load case's regions on a bone and write them for inspection",
        description=("Fit the anatomical frame of the bone (from --mesh, or from --mask as `run` builds it), "
                     "select every region of the load case and write OUT (mesh + region_<name> arrays), "
                     "OUT_landmarks.vtu and OUT_frame.json."),
    )
    p.add_argument("case", help="load-case TOML file or preset name (e.g. sideways_fall)")
    add_bone_arguments(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a case value by TOML key path, e.g. anatomy.head_centre_mm=[x,y,z]")
    p.add_argument("-o", "--output", default="regions.vtu",
                   help="output mesh file, .vtu or .vtk (default %(default)s; a name without suffix gets .vtu)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=run)

#: mesh formats that keep the region_<name> point-data arrays
REGION_SUFFIXES = (".vtu", ".vtk")


def regions_output(name: str) -> Path:
    """The output path of ``-o NAME``: ``.vtu`` appended to a name without suffix; a suffix that
    cannot hold the region arrays is refused (before any work)."""
    out = Path(name)
    if not out.suffix:
        return out.with_name(out.name + ".vtu")
    if out.suffix.lower() not in REGION_SUFFIXES:
        raise OutputError(f"-o {name}: the regions are point-data arrays (region_<name>), which only .vtu and .vtk "
                          f"files keep; use -o {out.with_suffix('.vtu')}")
    return out


def _fmt(v) -> str:
    return "[" + ", ".join(f"{x:.1f}" for x in np.asarray(v, dtype=float)) + "]"


def run(args: argparse.Namespace) -> int:
    import meshio

    out = regions_output(args.output)
    say = progress_printer(args.quiet)
    case, specimen = case_and_specimen(args)
    say(f"bone: {specimen.label}")
    mesh = specimen.mesh(None, progress=say)  # the geometry only: a mask is meshed on its own grid (the CT's)
    say(f"mesh: {mesh.n_cells} {mesh.cell_type} elements")
    needs_frame = any(s.kind not in ("node_set", "nodes") for s in case.regions.values())
    frame = frame_for(mesh, case) if needs_frame else None
    if frame is not None:
        say(f"anatomical frame of the {frame.bone}")
    summary = {"case": case.name, "bone": specimen.label, "n_elements": mesh.n_cells}
    if frame is not None:
        marks = frame.landmarks()
        names = list(marks)
        summary["frame"] = frame.to_dict()
        summary["load_direction"] = load_direction(case.loading, frame).tolist()
        summary["landmark_names"] = names
        pts = np.array([marks[n] for n in names], dtype=float)
        lm = meshio.Mesh(pts, [("vertex", np.arange(len(pts)).reshape(-1, 1))],
                         point_data={"landmark": np.arange(len(pts), dtype=np.int32)})
        lm_path = out.with_name(out.stem + "_landmarks.vtu")
        with atomic_path(lm_path) as tmp:
            meshio.write(tmp, lm)
        d = frame.to_dict()
        if frame.bone == "femur":
            print(f"femur, side {frame.side} ({d['methods'].get('side')}): head centre {_fmt(frame.head_centre)} mm, "
                  f"radius {frame.head_radius:.1f} mm ({d['methods'].get('head')}, coverage "
                  f"{frame.head_coverage:.0%}), neck-shaft angle {frame.neck_shaft_angle_deg:.1f} deg")
            print(f"  shaft axis {_fmt(frame.shaft_axis)} ({d['methods'].get('shaft_axis')}), neck axis "
                  f"{_fmt(frame.neck_axis)} ({d['methods'].get('neck_axis')})")
        else:
            print(f"vertebra: body axis {_fmt(frame.axis)} ({frame.axis_method}), anterior {_fmt(frame.anterior)} "
                  f"({frame.anterior_method}), superior from {frame.superior_method}; body height "
                  f"{frame.height_mm:.1f} mm, depth {frame.depth_mm:.1f} mm, width {frame.width_mm:.1f} mm")
        for name in names:
            print(f"  {name:<20s} {_fmt(marks[name])} mm")
    try:
        regions = select_regions(mesh, case, frame)
    finally:  # the frame is written even when a region is refused, so it can be checked
        write_json_atomic(out.with_name(out.stem + "_frame.json"), summary)
    say(f"regions: {', '.join(regions)}")
    write_mesh(out, regions_mesh(mesh, regions))
    summary["regions"] = {k: r.to_dict() for k, r in regions.items()}
    write_json_atomic(out.with_name(out.stem + "_frame.json"), summary)
    for name, reg in regions.items():
        print(f"{name:>20s}: {reg.kind:<18s} {reg.n_nodes:6d} nodes {len(reg.faces):6d} faces "
              f"{reg.area:9.1f} mm^2, normal {_fmt(reg.normal)}")
    print(f"wrote {out}")
    return 0
