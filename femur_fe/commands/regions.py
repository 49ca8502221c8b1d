"""``femur-fe regions CASE.toml --mesh M -o regions.vtu``: show the selected regions.

Writes the mesh with one 0/1 point-data array ``region_<name>`` per region (and the node
sets), ``<stem>_landmarks.vtu`` with the anatomical landmarks as vertices (point data
``landmark``: index into the names listed in ``<stem>_frame.json``) and
``<stem>_frame.json`` with the frame, the load direction and a summary of every region.
Open the VTU files in ParaView to check the regions before solving.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..analysis.regions import frame_for, load_direction, regions_mesh, select_regions
from ..case.loadcase import load_case
from ..io import atomic_path, read_mesh, write_json_atomic, write_mesh

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "regions",
        help="select the load case's regions on a mesh and write them for inspection",
        description=("Fit the anatomical frame of the mesh, select every region of the load case and write "
                     "OUT (mesh + region_<name> arrays), OUT_landmarks.vtu and OUT_frame.json."),
    )
    p.add_argument("case", help="load-case TOML file")
    p.add_argument("--mesh", required=True, help="volume mesh (.vtu, .msh, .inp, ...), mm")
    p.add_argument("-o", "--output", default="regions.vtu", help="output mesh file (default %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import meshio


    case = load_case(args.case)
    mesh = read_mesh(args.mesh)
    needs_frame = any(s.kind not in ("node_set", "nodes") for s in case.regions.values())
    frame = frame_for(mesh, case) if needs_frame else None
    regions = select_regions(mesh, case, frame)
    out = Path(args.output)
    write_mesh(out, regions_mesh(mesh, regions))
    summary = {"case": case.name, "mesh": str(args.mesh), "regions": {k: r.to_dict() for k, r in regions.items()}}
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
    write_json_atomic(out.with_name(out.stem + "_frame.json"), summary)
    for name, reg in regions.items():
        print(f"{name:>20s}: {reg.kind:<18s} {reg.n_nodes:6d} nodes {len(reg.faces):6d} faces "
              f"{reg.area:9.1f} mm^2")
    if frame is not None:
        print(f"frame: {frame.bone}" + (f", side {frame.side}" if frame.bone == "femur" else ""))
    print(f"wrote {out}")
    return 0
