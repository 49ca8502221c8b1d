"""Closed triangle surfaces: the :class:`Surface` value object and its readers and writers.

A :class:`Surface` is a plain value object (``points`` (n, 3) float64 in mm, ``faces``
(f, 3) int64, 0-based), convertible to and from ``pyvista.PolyData`` with
:meth:`Surface.to_pyvista` / :meth:`Surface.from_pyvista`. :func:`read_surface` reads STL,
OBJ, PLY, VTK/VTP (pyvista) and Abaqus INP (meshio); exactly coincident vertices are
always merged (STL and OBJ repeat vertices per facet), polygons are triangulated and
``units="auto"`` converts metres to mm (largest extent < 1).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SurfaceError
from ..io.atomic import atomic_path
from .mesh_io import call_reader, unit_factor

log = logging.getLogger(__name__)

_PV_SUFFIXES = {".stl", ".obj", ".ply", ".vtk", ".vtp"}
_MESHIO_SUFFIXES = {".inp", ".off", ".mesh", ".msh"}


# --------------------------------------------------------------------------- Surface
@dataclass(frozen=True, eq=False)
class Surface:
    """A triangle surface in mm.

    Attributes
    ----------
    points : (n, 3) float64, mm
    faces : (f, 3) int64, 0-based vertex ids (counter-clockwise seen from outside for a
        closed, outward-oriented surface)
    source : where it came from (file name or a description), used in messages
    """

    points: np.ndarray
    faces: np.ndarray
    source: str = "<surface>"

    def __post_init__(self) -> None:
        pts = np.ascontiguousarray(np.asarray(self.points, dtype=np.float64))
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise SurfaceError(f"{self.source}: points must have shape (n, 3) in mm, got {pts.shape}")
        faces = np.ascontiguousarray(np.asarray(self.faces, dtype=np.int64))
        if faces.size == 0:
            faces = faces.reshape(0, 3)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise SurfaceError(f"{self.source}: faces must have shape (f, 3) (triangles), got {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= len(pts)):
            raise SurfaceError(f"{self.source}: faces reference vertex ids outside [0, {len(pts)})")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "faces", faces)

    # ------------------------------------------------------------------ info
    @property
    def n_points(self) -> int:
        return int(len(self.points))

    @property
    def n_faces(self) -> int:
        return int(len(self.faces))

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) min and max corner, mm."""
        return np.vstack([self.points.min(axis=0), self.points.max(axis=0)])

    @property
    def extent(self) -> np.ndarray:
        """(3,) bounding-box edge lengths, mm."""
        return np.ptp(self.points, axis=0) if self.n_points else np.zeros(3)

    def face_areas(self) -> np.ndarray:
        """(f,) triangle areas, mm^2."""
        p = self.points[self.faces]
        return 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)

    @property
    def area(self) -> float:
        """Total area, mm^2."""
        return float(self.face_areas().sum())

    @property
    def volume(self) -> float:
        """Signed enclosed volume (divergence theorem), mm^3; positive for outward normals."""
        p = self.points[self.faces]
        return float(np.einsum("ij,ij->i", p[:, 0], np.cross(p[:, 1], p[:, 2])).sum() / 6.0)

    def edge_lengths(self) -> np.ndarray:
        """Lengths of the unique edges, mm."""
        e = _unique_edges(self.faces)
        return np.linalg.norm(self.points[e[:, 0]] - self.points[e[:, 1]], axis=1)

    def topology(self) -> "SurfaceTopology":
        """Edge-based topology checks; see :class:`SurfaceTopology`."""
        return surface_topology(self)

    @property
    def is_watertight(self) -> bool:
        """True for a closed, edge-manifold, consistently oriented surface."""
        return self.topology().watertight

    # ------------------------------------------------------------------ conversion
    def to_pyvista(self):
        """Return a ``pyvista.PolyData`` copy."""
        import pyvista as pv

        faces = np.hstack([np.full((self.n_faces, 1), 3, dtype=np.int64), self.faces]).ravel()
        return pv.PolyData(self.points.copy(), faces)

    @classmethod
    def from_pyvista(cls, poly, source: str = "<pyvista>") -> "Surface":
        """Build from a ``pyvista.PolyData`` (polygons are triangulated, lines/vertices dropped)."""
        poly = poly.extract_surface() if not hasattr(poly, "faces") else poly
        if poly.n_cells == 0 or poly.faces.size == 0:
            return cls(np.asarray(poly.points, dtype=np.float64).reshape(-1, 3), np.zeros((0, 3)), source)
        tri = poly.triangulate() if not poly.is_all_triangles else poly
        faces = np.asarray(tri.faces).reshape(-1, 4)
        if np.any(faces[:, 0] != 3):
            raise SurfaceError(f"{source}: could not triangulate all polygons")
        return cls(np.asarray(tri.points, dtype=np.float64), faces[:, 1:], source)

    def transformed(self, matrix, translation=(0.0, 0.0, 0.0)) -> "Surface":
        """Return ``x' = matrix @ x + translation``; a mirror (det < 0) flips the winding."""
        mat = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
        pts = self.points @ mat.T + np.asarray(translation, dtype=np.float64)
        faces = self.faces[:, [0, 2, 1]] if np.linalg.det(mat) < 0 else self.faces
        return Surface(pts, faces, self.source)

    def scaled(self, factor: float) -> "Surface":
        """Return a copy with coordinates multiplied by ``factor``."""
        return Surface(self.points * float(factor), self.faces, self.source)

    def __repr__(self) -> str:
        ext = self.extent
        return (f"Surface({self.n_points} points, {self.n_faces} triangles, extent "
                f"{ext[0]:.1f} x {ext[1]:.1f} x {ext[2]:.1f} mm, source={self.source!r})")


@dataclass(frozen=True)
class SurfaceTopology:
    """Edge counts of a triangle surface.

    ``boundary_edges`` belong to one face (holes), ``nonmanifold_edges`` to more than two,
    ``inconsistent_edges`` are shared by two faces that traverse them in the same
    direction (flipped winding). ``watertight`` means all three are zero and no vertex is
    unused.
    """

    n_points: int
    n_faces: int
    n_components: int
    boundary_edges: int
    nonmanifold_edges: int
    inconsistent_edges: int
    unused_points: int
    degenerate_faces: int

    @property
    def watertight(self) -> bool:
        return (self.n_faces > 0 and self.boundary_edges == 0 and self.nonmanifold_edges == 0
                and self.inconsistent_edges == 0 and self.degenerate_faces == 0)

    @property
    def euler(self) -> int:
        """Euler characteristic V - E + F of the used part (2 for one sphere-like closed surface)."""
        return self.n_points - self.unused_points - (3 * self.n_faces + self.boundary_edges) // 2 + self.n_faces


def _unique_edges(faces: np.ndarray) -> np.ndarray:
    e = np.vstack([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def surface_topology(surface: Surface) -> SurfaceTopology:
    """Count boundary, non-manifold and inconsistently oriented edges; see :class:`SurfaceTopology`."""
    f = surface.faces
    degenerate = int(np.count_nonzero((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])))
    directed = np.vstack([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    srt = np.sort(directed, axis=1)
    n = np.int64(max(surface.n_points, 1))
    _, inv, counts = np.unique(srt[:, 0] * n + srt[:, 1], return_inverse=True, return_counts=True)
    inv = inv.ravel()
    boundary = int(np.count_nonzero(counts == 1))
    nonmanifold = int(np.count_nonzero(counts > 2))
    # for manifold edges both directions must appear once: sum of +1/-1 orientation signs is 0
    sign = np.where(directed[:, 0] < directed[:, 1], 1, -1)
    ssum = np.bincount(inv, weights=sign, minlength=len(counts))
    inconsistent = int(np.count_nonzero((counts == 2) & (ssum != 0)))
    used = np.zeros(surface.n_points, dtype=bool)
    used[f.ravel()] = True
    ncomp = _face_components(surface)[0] if surface.n_faces else 0
    return SurfaceTopology(surface.n_points, surface.n_faces, ncomp, boundary, nonmanifold, inconsistent,
                           int(np.count_nonzero(~used)), degenerate)


def _face_components(surface: Surface) -> tuple[int, np.ndarray]:
    """Number of vertex-connected face components and a label per face."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    f = surface.faces
    n = surface.n_points
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    g = sp.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()
    ncomp, labels = connected_components(g, directed=False)
    flab = labels[f[:, 0]]
    # renumber so that only components with faces count
    uniq, flab = np.unique(flab, return_inverse=True)
    return len(uniq), flab.ravel()


# --------------------------------------------------------------------------- reading
def read_surface(path: str | os.PathLike, *, units: str = "auto") -> Surface:
    """Read a triangle surface (STL, OBJ, PLY, VTK, VTP, Abaqus INP via meshio).

    Coincident vertices are merged (exact duplicates only: STL/OBJ repeat them per facet),
    polygons are triangulated. The result is not otherwise repaired: see
    :func:`repair_surface`.

    Parameters
    ----------
    path : file name
    units : ``"mm"``, ``"cm"`` (multiply by 10), ``"m"`` (multiply by 1000) or ``"auto"`` (multiply by 1000 with a
        warning when the largest extent is below 1, i.e. the file is in metres)

    Returns
    -------
    Surface in mm
    """
    path = Path(path)
    if not path.exists():
        raise SurfaceError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in _PV_SUFFIXES:
        import pyvista as pv

        data = call_reader(lambda p: pv.read(str(p)), path, what="a surface", error=SurfaceError,
                           hint="export it as binary STL or VTP")
        if not isinstance(data, pv.PolyData):
            data = data.extract_surface()
        surf = Surface.from_pyvista(data, source=str(path))
    elif suffix in _MESHIO_SUFFIXES:
        surf = _read_meshio_surface(path)
    else:
        raise SurfaceError(f"{path}: unsupported surface format {suffix!r}; use one of "
                           f"{', '.join(sorted(_PV_SUFFIXES | {'.inp'}))}")
    if surf.n_faces == 0:
        raise SurfaceError(f"{path}: holds no triangles (is it a point cloud or a volume mesh? "
                           "a volume mesh is read with femur_fe.read_mesh)")
    surf = _merge_exact_duplicates(surf)
    return _apply_units(surf, units)


def _read_meshio_surface(path: Path) -> Surface:
    import meshio

    m = call_reader(meshio.read, path, what="a surface", error=SurfaceError)
    tris = []
    for block in m.cells:
        if block.type == "triangle":
            tris.append(np.asarray(block.data)[:, :3])
        elif block.type == "triangle6":
            tris.append(np.asarray(block.data)[:, :3])
        elif block.type in ("quad", "quad8", "quad9"):
            q = np.asarray(block.data)[:, :4]
            tris.append(np.vstack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]]))
    if not tris:
        types = sorted({b.type for b in m.cells})
        if any(t.startswith(("tetra", "hexa", "wedge", "pyramid")) for t in types):
            raise SurfaceError(f"{path}: holds volume cells {types}, not a surface; read it with "
                               "femur_fe.read_mesh")
        raise SurfaceError(f"{path}: no triangle or quad cells (found {types})")
    pts = np.asarray(m.points, dtype=np.float64)
    if pts.shape[1] == 2:
        pts = np.hstack([pts, np.zeros((len(pts), 1))])
    return Surface(pts, np.vstack(tris), str(path))


def _apply_units(surf: Surface, units: str) -> Surface:
    factor = unit_factor(units, surf.points, str(surf.source), SurfaceError)
    return surf if factor == 1.0 else surf.scaled(factor)


def _merge_exact_duplicates(surf: Surface, tol: float = 0.0) -> Surface:
    """Merge vertices closer than ``tol`` (exact duplicates for 0) and drop unused vertices."""
    pts = surf.points
    if tol > 0:
        from scipy.spatial import cKDTree

        pairs = cKDTree(pts).query_pairs(tol, output_type="ndarray")
        parent = np.arange(len(pts))
        if len(pairs):
            import scipy.sparse as sp
            from scipy.sparse.csgraph import connected_components

            g = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(pts),) * 2)
            _, lab = connected_components(g, directed=False)
            # representative: the smallest index of each group
            rep = np.full(lab.max() + 1, len(pts))
            np.minimum.at(rep, lab, np.arange(len(pts)))
            parent = rep[lab]
        faces = parent[surf.faces]
    else:
        _, first, inv = np.unique(pts, axis=0, return_index=True, return_inverse=True)
        faces = first[inv.ravel()][surf.faces]
    used = np.unique(faces)
    new = np.full(len(pts), -1, dtype=np.int64)
    new[used] = np.arange(len(used))
    return Surface(pts[used], new[faces], surf.source)


def write_surface(path: str | os.PathLike, surface: Surface) -> Path:
    """Write a surface atomically (format from the suffix: .stl, .vtp, .ply, .obj, .vtk)."""
    path = Path(path)
    if path.suffix.lower() not in _PV_SUFFIXES:
        raise SurfaceError(f"{path}: write surfaces as one of {', '.join(sorted(_PV_SUFFIXES))}")
    with atomic_path(path) as tmp:
        surface.to_pyvista().save(str(tmp))
    return path
