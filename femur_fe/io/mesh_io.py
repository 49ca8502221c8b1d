"""Volume mesh reading and writing through meshio (VTU, Gmsh MSH, Abaqus INP, Nastran, Medit...)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..diagnostics import warn
from ..errors import FemurFeError, MeshError
from ..fe.elements import CELL_TYPES
from ..fe.mesh import Mesh
from .atomic import atomic_path

log = logging.getLogger(__name__)

_PREFERENCE = ("tetra10", "tetra", "hexahedron")
#: length units other than mm and their factor to mm
UNIT_FACTORS = {"cm": 10.0, "m": 1000.0}
#: formats without point sets (VTU/VTK) store node set ``name`` as a 0/1 point array with this prefix
NODE_SET_PREFIX = "node_set:"
_SURFACE_TYPES = {"triangle", "triangle6", "quad", "quad8", "polygon"}


def mesh_from_meshio(m, *, path: str = "<meshio.Mesh>") -> Mesh:
    """Convert a ``meshio.Mesh`` to a :class:`Mesh`, keeping the preferred volume cell type.

    Blocks of the chosen type are concatenated; point sets, cell sets and cell data of
    those blocks are carried over.
    """
    types = [b.type for b in m.cells]
    chosen = next((t for t in _PREFERENCE if t in types), None)
    if chosen is None:
        if any(t in _SURFACE_TYPES for t in types):
            raise MeshError(
                f"{path}: holds only surface cells ({', '.join(sorted(set(types)))}); mesh it to tetrahedra "
                "with femur_fe.bone.tetmesh_from_surface or `femur-fe mesh SURFACE -o OUT.vtu`"
            )
        raise MeshError(f"{path}: no supported volume cells (found {sorted(set(types))}; "
                        f"supported: {', '.join(CELL_TYPES)})")
    other = sorted({t for t in types if t in CELL_TYPES and t != chosen})
    if other:
        log.warning("%s: mixed volume cell types; keeping %s and ignoring %s", path, chosen, other)
    blocks = [i for i, b in enumerate(m.cells) if b.type == chosen]
    cells = np.vstack([m.cells[i].data for i in blocks])
    offsets = np.cumsum([0] + [len(m.cells[i].data) for i in blocks])
    cell_data = {}
    for name, per_block in (m.cell_data or {}).items():
        try:
            arrs = [np.asarray(per_block[i]) for i in blocks]
            cell_data[name] = np.concatenate(arrs) if len(arrs) > 1 else arrs[0]
        except (IndexError, ValueError):
            log.warning("%s: cell data %r skipped (inconsistent blocks)", path, name)
    cell_sets = {}
    for name, per_block in (m.cell_sets or {}).items():
        ids = []
        for j, i in enumerate(blocks):
            if i < len(per_block) and per_block[i] is not None and len(per_block[i]):
                ids.append(np.asarray(per_block[i], dtype=np.int64) + offsets[j])
        if ids:
            cell_sets[name] = np.concatenate(ids)
    node_sets = {k: np.asarray(v, dtype=np.int64).ravel() for k, v in (m.point_sets or {}).items()}
    point_data = {}
    for k, v in (m.point_data or {}).items():
        v = np.asarray(v)
        if v.shape[:1] != (len(m.points),):
            continue
        if k.startswith(NODE_SET_PREFIX) and v.ndim == 1:  # node set stored as a 0/1 array (VTU)
            node_sets.setdefault(k[len(NODE_SET_PREFIX):], np.flatnonzero(v))
        else:
            point_data[k] = v
    pts = np.asarray(m.points, dtype=np.float64)
    if pts.shape[1] == 2:
        raise MeshError(f"{path}: 2-D points; femur_fe needs 3-D volume meshes")
    return Mesh(pts, cells, chosen, node_sets, cell_sets, cell_data, point_data)


def meshio_from_mesh(mesh: Mesh):
    """Convert a :class:`Mesh` to a ``meshio.Mesh`` (cell data, point data and sets carried)."""
    import meshio

    cell_data = {k: [np.asarray(v)] for k, v in mesh.cell_data.items()}
    cell_sets = {k: [np.asarray(v)] for k, v in mesh.cell_sets.items()}
    return meshio.Mesh(
        mesh.points,
        [(mesh.cell_type, mesh.cells)],
        point_data={k: np.asarray(v) for k, v in mesh.point_data.items()},
        cell_data=cell_data,
        point_sets={k: np.asarray(v) for k, v in mesh.node_sets.items()},
        cell_sets=cell_sets,
    )


def read_mesh(path: str | os.PathLike, *, units: str = "auto") -> Mesh:
    """Read a volume mesh (any format meshio reads: .vtu, .vtk, .msh, .inp, .bdf/.nas, .mesh...).

    Parameters
    ----------
    path : file name
    units : ``"mm"`` (take as is), ``"cm"`` (multiply by 10), ``"m"`` (multiply by 1000) or
        ``"auto"`` (convert to mm with the named warning ``mesh_units_converted`` when the largest
        extent is under 1, i.e. the file is in metres).
    """
    import meshio

    path = Path(path)
    if not path.exists():
        raise MeshError(f"{path}: no such file")
    m = call_reader(meshio.read, path, what="a mesh", error=MeshError,
                    hint="use .vtu, .vtk, .msh, .inp, .bdf or .mesh")
    mesh = mesh_from_meshio(m, path=str(path))
    return _apply_units(mesh, units, str(path))


def unit_factor(units: str, points: np.ndarray, where: str, error: type[FemurFeError] = MeshError) -> float:
    """Factor that takes coordinates in ``units`` to mm: ``"mm"``, ``"cm"``, ``"m"``, or ``"auto"``
    (metres when the largest bounding-box extent of the finite ``points`` is below 1, with the
    named warning ``mesh_units_converted``; else mm)."""
    if units == "mm":
        return 1.0
    if units in UNIT_FACTORS:
        return UNIT_FACTORS[units]
    if units != "auto":
        raise error(f"units must be 'mm', 'cm', 'm' or 'auto', got {units!r}")
    pts = points[np.isfinite(points).all(axis=1)]
    if len(pts):
        extent = float((pts.max(axis=0) - pts.min(axis=0)).max())
        if 0.0 < extent < 1.0:
            warn("mesh_units_converted", f"{where}: largest extent {extent:.4g} < 1, coordinates taken as metres "
                 "and converted to mm (pass units='mm' / --units mm to keep them)", log)
            return 1000.0
    return 1.0


def _apply_units(mesh: Mesh, units: str, where: str) -> Mesh:
    factor = unit_factor(units, mesh.points, where)
    return mesh if factor == 1.0 else mesh.scaled(factor)


def call_reader(reader: Callable[..., Any], path: Path, *, what: str, error: type[FemurFeError],
                hint: str = "") -> Any:
    """``reader(path)`` with every failure turned into ``error`` naming the file.

    meshio ends the process (``sys.exit``) on some malformed files after printing the reason;
    the exit is caught and the printed reason becomes part of the message, so that a broken
    file never ends a notebook or a Dask worker.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            out = reader(path)
        if printed.getvalue():  # what the reader printed on success is passed on unchanged
            sys.stderr.write(printed.getvalue())
        return out
    except SystemExit:
        reason = " ".join(printed.getvalue().split()) or "the reader gave up"
        raise error(f"{path}: could not be read as {what} ({reason}); {hint or 'check or re-export the file'}") \
            from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # readers raise assorted errors on malformed files
        raise error(f"{path}: could not be read as {what} ({type(exc).__name__}: {exc}); "
                    f"{hint or 'check or re-export the file'}") from None


def write_mesh(path: str | os.PathLike, mesh: Mesh, *, file_format: str | None = None) -> Path:
    """Write ``mesh`` (with its sets and data) atomically; the format follows the suffix."""
    import meshio

    path = Path(path)
    m = meshio_from_mesh(mesh)
    if path.suffix.lower() in (".inp", ".bdf", ".nas", ".mesh", ".msh"):
        # these formats keep no arbitrary float fields; write geometry and sets only
        m.cell_data = {}
        m.point_data = {}
        if path.suffix.lower() != ".inp":
            m.point_sets = {}
            m.cell_sets = {}
    if path.suffix.lower() in (".vtu", ".vtk", ".xdmf", ".xmf"):
        for name, ids in mesh.node_sets.items():
            flag = np.zeros(mesh.n_points, dtype=np.uint8)
            flag[ids] = 1
            m.point_data[NODE_SET_PREFIX + name] = flag
        m.point_sets = {}
    with atomic_path(path) as tmp:
        fmt = file_format
        if fmt is None and path.suffix.lower() == ".msh":
            fmt = "gmsh22"
        meshio.write(tmp, m, file_format=fmt) if fmt else meshio.write(tmp, m)
    return path
