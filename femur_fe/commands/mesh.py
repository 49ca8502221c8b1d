"""``femur-fe mesh``: closed surface (STL, OBJ, PLY, VTK/VTP, INP) -> tetrahedral mesh (VTU...).

Examples::

    femur-fe mesh femur.stl -o femur.vtu --size 3
    femur-fe mesh prox_femur.inp -o prox.vtu --size 2.5 --order 2 --repair
    femur-fe mesh femur.stl -o proximal.vtu --size 2 --cut-proximal 50
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ..bone.anatomy import femur_frame
from ..bone.meshing import (
    cut_proximal_femur,
    dihedral_angles,
    nodes_on_plane,
    proximal_cut_plane,
    repair_surface,
    tetmesh_from_surface,
)
from ..io.mesh_io import write_mesh
from ..io.surface import read_surface


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mesh",
        help="mesh a closed surface into tetrahedra (TetGen); optional repair and proximal femur cut",
        description=(
            "Read a triangle surface (STL, OBJ, PLY, VTK, VTP or Abaqus INP; metres are converted to mm), "
            "optionally repair it (MeshFix) and cut a whole femur below the lesser trochanter, remesh it to "
            "the target size and fill it with tet4 or tet10 elements. The output format follows the suffix "
            "(.vtu recommended; .inp, .msh, .vtk also work)."
        ),
    )
    p.add_argument("surface", help="closed triangle surface file")
    p.add_argument("-o", "--output", required=True, help="output volume mesh (e.g. OUT.vtu)")
    p.add_argument("--size", type=float, default=None,
                   help="target element edge length in mm (default: keep the surface resolution)")
    p.add_argument("--order", type=int, choices=(1, 2), default=1, help="1 = tet4, 2 = tet10 (default 1)")
    p.add_argument("--repair", action="store_true",
                   help="always run the surface repair (duplicates, degenerate faces, small components, "
                        "MeshFix); without it a surface that is not watertight is repaired with a warning")
    p.add_argument("--cut-proximal", type=float, default=None, metavar="MM",
                   help="treat the surface as a femur and keep the part above a plane MM mm below the lesser "
                        "trochanter, perpendicular to the shaft axis (the cut is capped)")
    p.add_argument("--units", choices=("auto", "mm", "m"), default="auto",
                   help="coordinate units of the surface file (default auto: extent < 1 means metres)")
    p.add_argument("--quality", type=float, nargs=2, default=(1.5, 12.0), metavar=("RATIO", "DEG"),
                   help="TetGen radius-edge ratio bound and minimum dihedral angle (default 1.5 12)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    t0 = time.perf_counter()
    surf = read_surface(args.surface, units=args.units)
    print(f"read {surf}")
    if args.repair or not surf.is_watertight:
        surf, rep = repair_surface(surf)
        print(str(rep))
    plane = None
    if args.cut_proximal is not None:
        lm = femur_frame((surf.points, surf.faces), require_side=False)
        plane = proximal_cut_plane(surf, args.cut_proximal, landmarks=lm)
        surf = cut_proximal_femur(surf, args.cut_proximal, landmarks=lm)
        print(f"proximal cut {args.cut_proximal:g} mm below the lesser trochanter: {surf}")
    mesh = tetmesh_from_surface(surf, element_size=args.size, order=args.order, quality=tuple(args.quality))
    if plane is not None:
        mesh = mesh.with_node_set("distal_cut", nodes_on_plane(mesh, *plane))
    write_mesh(args.output, mesh)
    rep = mesh.validate()
    mn, _ = dihedral_angles(mesh.points, mesh.corner_cells)
    print(f"wrote {args.output}: {mesh.n_points} nodes, {mesh.n_cells} {mesh.cell_type} cells, "
          f"volume {mesh.cell_volumes().sum() / 1000:.2f} cm^3, min dihedral {mn.min():.1f} deg "
          f"(1st percentile {np.percentile(mn, 1):.1f}), {rep} in {time.perf_counter() - t0:.1f} s")
    return 0
