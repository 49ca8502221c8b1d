"""``femur-fe info PATH``: describe a volume mesh, a triangle surface or a CT volume.

* CT (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``/``.mhd``, ``.npy`` with ``--spacing``, a DICOM
  folder): size, spacing, orientation, world bounds (LPS), unit, value range, NaN count.
* Label mask (an image of the same formats holding at most 256 distinct non-negative integers,
  e.g. a TotalSegmentator mask): its labels with their voxel counts and volumes; it is the
  ``--mask`` of ``femur-fe run``, not a CT.
* Surface (``.stl``, ``.obj``, ``.ply``, ``.vtp``; ``.vtk`` holding only triangles): triangle
  count, watertight yes/no (boundary, non-manifold and flipped edges), bounds, units guess.
* Volume mesh (anything :func:`femur_fe.read_mesh` reads): cell type, counts, bounds, units
  guess, total volume and the quality summary of :meth:`femur_fe.Mesh.validate`.

Coordinates are shown as stored in the file (no unit conversion); the units guess says
whether they look like mm.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import CTError, MeshError
from ..io.ct import CT_SUFFIXES, read_ct, suffix_of
from ..io.mesh_io import read_mesh
from ..io.surface import read_surface, surface_topology

SURFACE_SUFFIXES = (".stl", ".obj", ".ply", ".vtp")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="describe a mesh, surface or CT volume",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="mesh, surface, CT file or DICOM folder")
    p.add_argument("--ct-unit", "--unit", dest="unit", default="auto", choices=["auto", "HU", "mg/cm3", "g/cm3"],
                   help="CT unit, as `run --ct-unit` (default: %(default)s = stored or guessed from the values; "
                        "auto also recognises label masks)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SI", "SJ", "SK"),
                   help="voxel spacing in mm for .npy volumes")
    p.add_argument("--series-id", default=None, help="DICOM series to read when a folder holds several")
    p.add_argument("--no-unit-check", action="store_true",
                   help="do not check the CT value range against the unit (masked or cropped images)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(func=run)


def units_guess(extent_mm: float) -> str:
    """Plain-language guess of the length unit from the largest extent of a bone model."""
    if not np.isfinite(extent_mm) or extent_mm <= 0:
        return "unknown (zero or undefined extent)"
    if extent_mm < 1.0:
        return "metres? (largest extent < 1; femur_fe works in mm: scale by 1000)"
    if extent_mm < 10.0:
        return "centimetres? (largest extent < 10; a vertebra is ~40-60 mm, a femur ~400-500 mm)"
    if extent_mm <= 1000.0:
        return "mm (plausible for a bone)"
    return "micrometres or a very large object? (largest extent > 1000)"


def _kind(path: Path) -> str:
    suffix = suffix_of(path)
    if path.is_dir() or suffix in CT_SUFFIXES:
        return "ct"
    if suffix in SURFACE_SUFFIXES:
        return "surface"
    return "mesh"


#: most distinct values of a label mask (TotalSegmentator's multi-label output has 118)
MAX_LABELS = 256


def label_counts(array: np.ndarray) -> dict[int, int] | None:
    """Voxel count per label when ``array`` is a label mask, else None.

    A label mask holds only finite non-negative integers below 65536, with at most
    :data:`MAX_LABELS` distinct values; a CT in HU has air below 0, and a density image has
    fractions or thousands of distinct values.
    """
    flat = np.asarray(array).ravel()
    if flat.size == 0 or not (np.issubdtype(flat.dtype, np.number) or flat.dtype == bool):
        return None
    sample = flat[:: max(1, flat.size // 100_000)]  # a CT is told from a mask on a sample, at no cost
    counts = np.zeros(65536, dtype=np.int64)
    for part in (sample, *(flat[k:k + 2**22] for k in range(0, flat.size, 2**22))):  # bounded memory
        if not (np.isfinite(part).all() and (np.mod(part, 1) == 0).all()) or part.min() < 0 or part.max() >= 65536:
            return None
        if part is sample:
            if len(np.unique(part)) > MAX_LABELS:
                return None
            continue
        counts += np.bincount(part.astype(np.int64), minlength=65536)
    present = np.flatnonzero(counts)
    if len(present) > MAX_LABELS:
        return None
    return {int(v): int(counts[v]) for v in present}


def ct_info(path: Path, args) -> dict:
    try:
        ct = read_ct(path, unit=args.unit, spacing=args.spacing, series_id=args.series_id,
                     check_unit=not args.no_unit_check)
        error = None
    except CTError as exc:  # e.g. a multi-label mask, whose unit cannot be guessed
        if args.unit != "auto":
            raise
        ct, error = None, exc
    if args.unit == "auto":
        raw = ct if ct is not None else read_ct(path, unit="g/cm3", spacing=args.spacing, series_id=args.series_id,
                                                check_unit=False)
        counts = label_counts(raw.array)
        if counts is not None:
            return mask_info(raw, counts)
    if ct is None:
        raise error
    out = {"kind": "ct", **ct.summary()}
    out["voxel_count"] = int(np.prod(ct.shape))
    return out


def mask_info(image, counts: dict[int, int]) -> dict:
    """Info dict of a label mask: the geometry of its grid and the voxels of each label."""
    geom = {k: v for k, v in image.summary().items() if k not in ("unit", "value_min", "value_max", "n_nan")}
    vox_mm3 = float(image.voxel_volume_mm3)
    labels = {str(k): {"voxels": n, "volume_cm3": n * vox_mm3 / 1000.0} for k, n in counts.items() if k != 0}
    return {"kind": "label_mask", **geom, "voxel_count": int(np.prod(image.shape)),
            "background_voxels": counts.get(0, 0), "labels": labels}


def surface_info(path: Path) -> dict:
    surf = read_surface(path, units="mm")
    topo = surface_topology(surf)
    lo, hi = surf.points.min(axis=0), surf.points.max(axis=0)
    extent = float((hi - lo).max())
    return {
        "kind": "surface", "source": str(path), "n_points": surf.n_points, "n_triangles": surf.n_faces,
        "watertight": topo.watertight, "n_components": topo.n_components,
        "boundary_edges": topo.boundary_edges, "nonmanifold_edges": topo.nonmanifold_edges,
        "inconsistent_edges": topo.inconsistent_edges, "degenerate_triangles": topo.degenerate_faces,
        "bounds": [lo.tolist(), hi.tolist()], "largest_extent": extent, "units_guess": units_guess(extent),
    }


def mesh_info(path: Path) -> dict:
    mesh = read_mesh(path, units="mm")
    rep = mesh.validate()
    b = mesh.bounds
    extent = float((b[1] - b[0]).max())
    vol = float(mesh.cell_volumes().sum()) if mesh.n_cells else 0.0
    return {
        "kind": "mesh", "source": str(path), "cell_type": mesh.cell_type, "n_points": mesh.n_points,
        "n_cells": mesh.n_cells, "bounds": b.tolist(), "largest_extent": extent,
        "units_guess": units_guess(extent), "volume": vol,
        "min_scaled_jacobian": rep.min_scaled_jacobian, "inverted_cells": int(len(rep.inverted_cells)),
        "degenerate_cells": int(len(rep.degenerate_cells)), "orphan_nodes": int(len(rep.orphan_nodes)),
        "duplicate_node_pairs": int(len(rep.duplicate_nodes)), "nonfinite_nodes": int(len(rep.nonfinite_nodes)),
        "ok": rep.ok, "problems": rep.errors + rep.warnings,
        "node_sets": sorted(mesh.node_sets), "cell_sets": sorted(mesh.cell_sets),
        "cell_data": sorted(mesh.cell_data), "point_data": sorted(mesh.point_data),
    }


def describe(path, args=None) -> dict:
    """Return the info dict of ``path`` (what ``femur-fe info --json`` prints)."""
    path = Path(path)
    if args is None:
        args = argparse.Namespace(unit="auto", spacing=None, series_id=None, no_unit_check=False)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = _kind(path)
    if kind == "ct":
        return ct_info(path, args)
    if kind == "surface":
        return surface_info(path)
    try:
        return mesh_info(path)
    except MeshError as exc:
        if "surface cells" in str(exc):  # e.g. a .vtk or .inp holding triangles only
            return surface_info(path)
        raise


def _fmt3(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _grid_lines(info: dict) -> list[str]:
    """Size, spacing, orientation, origin and bounds of an image grid."""
    return [
        f"  size:        {' x '.join(str(n) for n in info['shape'])} voxels ({info['voxel_count']})",
        f"  spacing:     {_fmt3(info['spacing_mm'])} mm",
        f"  orientation: {info['orientation']} (axes i, j, k point to these directions; world frame LPS)",
        f"  origin:      {_fmt3(info['origin_mm'])} mm (centre of voxel [0, 0, 0])",
        f"  bounds:      {_fmt3(info['bounds_mm'][0])} .. {_fmt3(info['bounds_mm'][1])} mm",
    ]


def format_info(info: dict) -> str:
    """Human-readable text of an info dict."""
    lines = [f"{info['source']}"]
    if info["kind"] == "label_mask":
        labels = info["labels"]
        names = list(labels)
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} labels)" if len(names) > 20 else "")
        counts = ", ".join(str(labels[k]["voxels"]) for k in names[:20]) + (", ..." if len(names) > 20 else "")
        each, label = (" each", " with --label N") if len(names) > 1 else ("", "")
        lines += [
            f"  kind:        label mask (labels: {shown or 'none'}; {counts or 0} voxels{each})",
            f"  use:         not a CT: give it to `run`/`regions` as --mask{label}",
            *_grid_lines(info),
            f"  background:  {info['background_voxels']} voxels (label 0)",
        ]
        lines += [f"  label {k:<5s} {v['voxels']:10d} voxels  {v['volume_cm3']:9.2f} cm^3" for k, v in labels.items()]
    elif info["kind"] == "ct":
        lines += ["  kind:        CT volume", *_grid_lines(info),
            f"  unit:        {info['unit']}",
            f"  values:      {info['value_min']:.6g} .. {info['value_max']:.6g} {info['unit']}",
            f"  NaN voxels:  {info['n_nan']}",
        ]
    elif info["kind"] == "surface":
        lines += [
            "  kind:        triangle surface",
            f"  triangles:   {info['n_triangles']} ({info['n_points']} points, {info['n_components']} component(s))",
            f"  watertight:  {'yes' if info['watertight'] else 'no'} (boundary edges {info['boundary_edges']}, "
            f"non-manifold {info['nonmanifold_edges']}, flipped {info['inconsistent_edges']}, "
            f"degenerate triangles {info['degenerate_triangles']})",
            f"  bounds:      {_fmt3(info['bounds'][0])} .. {_fmt3(info['bounds'][1])}",
            f"  units guess: {info['units_guess']}",
        ]
    else:
        lines += [
            "  kind:        volume mesh",
            f"  cell type:   {info['cell_type']}",
            f"  counts:      {info['n_points']} points, {info['n_cells']} cells",
            f"  bounds:      {_fmt3(info['bounds'][0])} .. {_fmt3(info['bounds'][1])}",
            f"  units guess: {info['units_guess']}",
            f"  volume:      {info['volume']:.6g} (mm^3 if in mm)",
            f"  quality:     min scaled Jacobian {info['min_scaled_jacobian']:.3g}; inverted {info['inverted_cells']}, "
            f"degenerate {info['degenerate_cells']}, orphan nodes {info['orphan_nodes']}, duplicate node pairs "
            f"{info['duplicate_node_pairs']}",
            f"  status:      {'OK' if info['ok'] else 'PROBLEMS'}",
        ]
        lines += [f"    - {p}" for p in info["problems"]]
        for key in ("node_sets", "cell_sets", "cell_data", "point_data"):
            if info[key]:
                lines.append(f"  {key + ':':<12} {', '.join(info[key])}")
    return "\n".join(lines)


def run(args) -> int:
    info = describe(args.path, args)
    if args.json:
        print(json.dumps(info, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    else:
        print(format_info(info))
    if info["kind"] == "mesh" and not info["ok"]:
        return 1
    return 0


__all__ = ["register", "run", "describe", "format_info", "units_guess", "label_counts"]
