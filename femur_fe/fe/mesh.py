"""The :class:`Mesh` value object and its validation.

Points are row-major ``(n, 3)`` float64 in millimetres, cells ``(m, k)`` integer node
ids (0-based) of one cell type. Meshes are immutable values: ``with_*`` methods return
new meshes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from ..errors import FemurFeError, MeshError
from .elements import (
    NODES_PER_CELL,
    check_cell_type,
    jacobians,
    quadrature,
)

log = logging.getLogger(__name__)


def _as_points(points) -> np.ndarray:
    pts = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise MeshError(f"points must have shape (n, 3) in mm, got {pts.shape}")
    return pts


def _as_cells(cells, cell_type: str, n_points: int) -> np.ndarray:
    arr = np.asarray(cells)
    if arr.ndim != 2 or arr.shape[1] != NODES_PER_CELL[cell_type]:
        raise MeshError(
            f"cells of type {cell_type!r} must have shape (m, {NODES_PER_CELL[cell_type]}), got {arr.shape}"
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise MeshError("cells must hold integer node ids")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_points):
        raise MeshError(
            f"cells reference node ids in [{arr.min()}, {arr.max()}] but the mesh has {n_points} points "
            "(ids are 0-based; convert 1-based ids by subtracting 1)"
        )
    return arr


@dataclass(frozen=True, eq=False)
class Mesh:
    """A volume mesh of one cell type.

    Attributes
    ----------
    points : (n, 3) float64, mm
    cells : (m, k) int64, 0-based node ids
    cell_type : ``"tetra"``, ``"tetra10"`` or ``"hexahedron"``
    node_sets : name -> int64 array of node ids
    cell_sets : name -> int64 array of cell ids
    cell_data : name -> array with first dimension m
    point_data : name -> array with first dimension n
    """

    points: np.ndarray
    cells: np.ndarray
    cell_type: str = "tetra"
    node_sets: Mapping[str, np.ndarray] = field(default_factory=dict)
    cell_sets: Mapping[str, np.ndarray] = field(default_factory=dict)
    cell_data: Mapping[str, np.ndarray] = field(default_factory=dict)
    point_data: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_cell_type(self.cell_type)
        pts = _as_points(self.points)
        cells = _as_cells(self.cells, self.cell_type, len(pts))
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "cells", cells)
        ns = {}
        for name, ids in dict(self.node_sets).items():
            ids = np.asarray(ids, dtype=np.int64).ravel()
            if ids.size and (ids.min() < 0 or ids.max() >= len(pts)):
                raise MeshError(f"node set {name!r} has ids outside [0, {len(pts)})")
            ns[name] = ids
        cs = {}
        for name, ids in dict(self.cell_sets).items():
            ids = np.asarray(ids, dtype=np.int64).ravel()
            if ids.size and (ids.min() < 0 or ids.max() >= len(cells)):
                raise MeshError(f"cell set {name!r} has ids outside [0, {len(cells)})")
            cs[name] = ids
        cd = {}
        for name, arr in dict(self.cell_data).items():
            arr = np.asarray(arr)
            if arr.shape[:1] != (len(cells),):
                raise MeshError(f"cell_data {name!r} has first dimension {arr.shape[:1]}, expected {len(cells)}")
            cd[name] = arr
        pd = {}
        for name, arr in dict(self.point_data).items():
            arr = np.asarray(arr)
            if arr.shape[:1] != (len(pts),):
                raise MeshError(f"point_data {name!r} has first dimension {arr.shape[:1]}, expected {len(pts)}")
            pd[name] = arr
        object.__setattr__(self, "node_sets", ns)
        object.__setattr__(self, "cell_sets", cs)
        object.__setattr__(self, "cell_data", cd)
        object.__setattr__(self, "point_data", pd)

    # ------------------------------------------------------------------ basic info
    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def n_cells(self) -> int:
        return int(self.cells.shape[0])

    @property
    def n_dofs(self) -> int:
        """Number of displacement DOFs (3 per node, interleaved: dof = 3*node + component)."""
        return 3 * self.n_points

    @property
    def nodes_per_cell(self) -> int:
        return NODES_PER_CELL[self.cell_type]

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) array: min and max corner of the bounding box, mm."""
        if self.n_points == 0:
            return np.zeros((2, 3))
        return np.vstack([self.points.min(axis=0), self.points.max(axis=0)])

    @property
    def corner_cells(self) -> np.ndarray:
        """Cells restricted to their vertex nodes (tet10 -> first 4 nodes)."""
        return self.cells[:, :4] if self.cell_type == "tetra10" else self.cells

    def cell_centroids(self) -> np.ndarray:
        """(m, 3) centroids of the cells (mean of vertex nodes), mm."""
        return self.points[self.corner_cells].mean(axis=1)

    def cell_volumes(self) -> np.ndarray:
        """(m,) cell volumes in mm^3, integrated with the element's quadrature rule."""
        q = quadrature(self.cell_type)
        det = np.linalg.det(jacobians(self.cell_type, self.points, self.cells, q.points))
        return det @ q.weights

    def jacobian_determinants(self) -> np.ndarray:
        """(m, q) Jacobian determinants at the stiffness quadrature points."""
        q = quadrature(self.cell_type)
        return np.linalg.det(jacobians(self.cell_type, self.points, self.cells, q.points))

    # ------------------------------------------------------------------ transforms
    def with_node_set(self, name: str, ids) -> "Mesh":
        """Return a copy with node set ``name`` added or replaced."""
        ns = dict(self.node_sets)
        ns[name] = np.asarray(ids, dtype=np.int64).ravel()
        return replace(self, node_sets=ns)

    def with_cell_set(self, name: str, ids) -> "Mesh":
        """Return a copy with cell set ``name`` added or replaced."""
        cs = dict(self.cell_sets)
        cs[name] = np.asarray(ids, dtype=np.int64).ravel()
        return replace(self, cell_sets=cs)

    def with_cell_data(self, **arrays) -> "Mesh":
        """Return a copy with the given cell data arrays added or replaced."""
        cd = dict(self.cell_data)
        cd.update(arrays)
        return replace(self, cell_data=cd)

    def with_point_data(self, **arrays) -> "Mesh":
        """Return a copy with the given point data arrays added or replaced."""
        pd = dict(self.point_data)
        pd.update(arrays)
        return replace(self, point_data=pd)

    def with_points(self, points) -> "Mesh":
        """Return a copy with new node coordinates (same topology)."""
        return replace(self, points=points)

    def transformed(self, matrix, translation=(0.0, 0.0, 0.0)) -> "Mesh":
        """Return a copy with ``x' = matrix @ x + translation``.

        A transform with negative determinant (a mirror) also reverses the cell node
        order so that element Jacobians stay positive.
        """
        mat = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
        pts = self.points @ mat.T + np.asarray(translation, dtype=np.float64)
        cells = self.cells
        if np.linalg.det(mat) < 0:
            cells = _mirror_cells(self.cell_type, cells)
        return replace(self, points=pts, cells=cells)

    def scaled(self, factor: float) -> "Mesh":
        """Return a copy with coordinates multiplied by ``factor`` (e.g. 1000 for m -> mm)."""
        return replace(self, points=self.points * float(factor))

    def tet4(self) -> "Mesh":
        """Return the linear tetrahedral mesh of a tet10 mesh (vertices only, renumbered)."""
        if self.cell_type == "tetra":
            return self
        if self.cell_type != "tetra10":
            raise MeshError("tet4() needs a tetrahedral mesh")
        used = np.unique(self.cells[:, :4])
        new_id = np.full(self.n_points, -1, dtype=np.int64)
        new_id[used] = np.arange(len(used))
        ns = {k: new_id[v][new_id[v] >= 0] for k, v in self.node_sets.items()}
        pd = {k: v[used] for k, v in self.point_data.items()}
        return Mesh(self.points[used], new_id[self.cells[:, :4]], "tetra", ns, self.cell_sets,
                    self.cell_data, pd)

    # ------------------------------------------------------------------ validation
    def validate(self, *, raise_on_error: bool = False) -> "MeshReport":
        """Check the mesh; see :class:`MeshReport`. Optionally raise :class:`MeshError`."""
        report = validate_mesh(self)
        if raise_on_error and not report.ok:
            raise MeshError(str(report))
        for w in report.warnings:
            log.warning(w)
        return report

    def __repr__(self) -> str:
        ext = self.bounds[1] - self.bounds[0]
        return (f"Mesh({self.cell_type}, {self.n_points} points, {self.n_cells} cells, "
                f"extent {ext[0]:.1f} x {ext[1]:.1f} x {ext[2]:.1f} mm, "
                f"node_sets={sorted(self.node_sets)}, cell_data={sorted(self.cell_data)})")


def _mirror_cells(cell_type: str, cells: np.ndarray) -> np.ndarray:
    """Reorder nodes so a mirrored element has positive orientation again."""
    if cell_type == "tetra":
        return cells[:, [0, 2, 1, 3]]
    if cell_type == "tetra10":
        # swap vertices 1 and 2: edges (0,1)<->(0,2), (1,2) stays, (1,3)<->(2,3)
        return cells[:, [0, 2, 1, 3, 6, 5, 4, 7, 9, 8]]
    # hexahedron: swap the two z-layers
    return cells[:, [4, 5, 6, 7, 0, 1, 2, 3]]


@dataclass
class MeshReport:
    """What :meth:`Mesh.validate` found. Each list holds offending ids (0-based)."""

    inverted_cells: np.ndarray
    degenerate_cells: np.ndarray
    orphan_nodes: np.ndarray
    duplicate_nodes: np.ndarray  # (p, 2) pairs of coincident node ids
    nonfinite_nodes: np.ndarray
    suspected_metres: bool
    largest_extent_mm: float
    min_scaled_jacobian: float

    @property
    def ok(self) -> bool:
        """True when nothing would make the FE solution wrong (orphans are tolerated)."""
        return (len(self.inverted_cells) == 0 and len(self.degenerate_cells) == 0
                and len(self.nonfinite_nodes) == 0 and len(self.duplicate_nodes) == 0
                and not self.suspected_metres)

    @property
    def warnings(self) -> list[str]:
        out = []
        if len(self.orphan_nodes):
            out.append(f"{len(self.orphan_nodes)} orphan nodes (not used by any cell), e.g. "
                       f"{_head(self.orphan_nodes)}; they are constrained automatically by the solver "
                       "or can be removed with femur_fe.fe.remove_orphan_nodes")
        return out

    @property
    def errors(self) -> list[str]:
        out = []
        if len(self.nonfinite_nodes):
            out.append(f"{len(self.nonfinite_nodes)} nodes with non-finite (NaN/inf) coordinates: "
                       f"{_head(self.nonfinite_nodes)}; fix or remove them in the mesh source")
        if len(self.inverted_cells):
            out.append(f"{len(self.inverted_cells)} inverted cells (negative Jacobian at a quadrature "
                       f"point): {_head(self.inverted_cells)}; reorder their nodes or re-mesh")
        if len(self.degenerate_cells):
            out.append(f"{len(self.degenerate_cells)} degenerate cells (zero volume / collapsed "
                       f"Jacobian): {_head(self.degenerate_cells)}; re-mesh with a quality constraint")
        if len(self.duplicate_nodes):
            out.append(f"{len(self.duplicate_nodes)} pairs of duplicate (coincident) nodes, e.g. "
                       f"{_head([tuple(p) for p in self.duplicate_nodes[:5]])}; merge them "
                       "(meshio/pyvista clean) so the elements are connected")
        if self.suspected_metres:
            out.append(f"largest extent is {self.largest_extent_mm:.4g} < 1: coordinates look like "
                       "metres, femur_fe works in mm; scale the mesh by 1000 (mesh.scaled(1000))")
        return out

    def __str__(self) -> str:
        msgs = self.errors + self.warnings
        if not msgs:
            return f"mesh OK (min scaled Jacobian {self.min_scaled_jacobian:.3g})"
        return "mesh problems:\n  - " + "\n  - ".join(msgs)


def _head(ids, n: int = 10) -> str:
    ids = list(ids)
    s = ", ".join(str(i) for i in ids[:n])
    return f"[{s}{', ...' if len(ids) > n else ''}]"


def validate_mesh(mesh: Mesh, duplicate_tol: float = 1e-9) -> MeshReport:
    """Run all mesh checks; see :class:`MeshReport`.

    Scaled Jacobian = det J / (h^3 * c) where h is the longest vertex edge of the cell
    and c normalises a regular cell to 1; cells with |scaled| < 1e-8 are degenerate.
    """
    pts = mesh.points
    finite = np.isfinite(pts).all(axis=1)
    nonfinite = np.flatnonzero(~finite)
    used = np.zeros(mesh.n_points, dtype=bool)
    used[mesh.cells.ravel()] = True
    orphans = np.flatnonzero(~used)
    ext = mesh.points[finite].max(axis=0) - mesh.points[finite].min(axis=0) if finite.any() else np.zeros(3)
    largest = float(ext.max()) if ext.size else 0.0
    suspected_m = 0.0 < largest < 1.0

    inverted = np.array([], dtype=np.int64)
    degenerate = np.array([], dtype=np.int64)
    min_sj = float("nan")
    if mesh.n_cells:
        good_cells = finite[mesh.cells].all(axis=1)
        det = np.full((mesh.n_cells, len(quadrature(mesh.cell_type).weights)), np.nan)
        if good_cells.any():
            det[good_cells] = mesh.jacobian_determinants()[good_cells] if good_cells.all() else \
                np.linalg.det(jacobians(mesh.cell_type, pts, mesh.cells[good_cells],
                                        quadrature(mesh.cell_type).points))
        corners = mesh.corner_cells
        vx = pts[corners]
        h = np.zeros(mesh.n_cells)
        k = corners.shape[1]
        for a in range(k):
            for b in range(a + 1, k):
                h = np.maximum(h, np.linalg.norm(vx[:, a] - vx[:, b], axis=1))
        # normalisation: det J of a regular element with longest edge h
        norm = {"tetra": 1 / np.sqrt(2), "tetra10": 1 / np.sqrt(2), "hexahedron": 1 / (8 * 3 * np.sqrt(3))}[mesh.cell_type]
        with np.errstate(divide="ignore", invalid="ignore"):
            sj = det.min(axis=1) / (norm * h**3)
        sj[~good_cells] = np.nan
        degenerate = np.flatnonzero(good_cells & ((np.abs(sj) < 1e-8) | (h == 0)))
        inverted = np.flatnonzero(good_cells & (sj < 0) & ~np.isin(np.arange(mesh.n_cells), degenerate))
        min_sj = float(np.nanmin(sj)) if np.isfinite(sj).any() else float("nan")

    dup = np.zeros((0, 2), dtype=np.int64)
    if mesh.n_points > 1 and finite.any():
        from scipy.spatial import cKDTree

        idx = np.flatnonzero(finite)
        tree = cKDTree(pts[idx])
        pairs = tree.query_pairs(r=max(duplicate_tol * max(largest, 1.0), 0.0), output_type="ndarray")
        if len(pairs):
            dup = idx[pairs]
    return MeshReport(inverted, degenerate, orphans, dup, nonfinite, suspected_m, largest, min_sj)


def remove_orphan_nodes(mesh: Mesh) -> Mesh:
    """Return a copy without nodes that no cell uses (node sets and point data remapped)."""
    used = np.unique(mesh.cells)
    if len(used) == mesh.n_points:
        return mesh
    new_id = np.full(mesh.n_points, -1, dtype=np.int64)
    new_id[used] = np.arange(len(used))
    ns = {k: new_id[v][new_id[v] >= 0] for k, v in mesh.node_sets.items()}
    pd = {k: v[used] for k, v in mesh.point_data.items()}
    return Mesh(mesh.points[used], new_id[mesh.cells], mesh.cell_type, ns, mesh.cell_sets, mesh.cell_data, pd)


def element_mask(value, n_cells: int, name: str) -> np.ndarray:
    """(n_cells,) bool mask from a bool mask or from element ids (ids are range-checked).

    ``name`` is the argument named in the error messages.
    """
    arr = np.asarray(value)
    if arr.dtype == bool:
        if arr.shape != (n_cells,):
            raise FemurFeError(f"{name} mask must have shape ({n_cells},), got {arr.shape}")
        return arr.copy()
    ids = arr.astype(np.int64).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= n_cells):
        raise FemurFeError(f"{name} ids must be in [0, {n_cells})")
    mask = np.zeros(n_cells, dtype=bool)
    mask[ids] = True
    return mask


#: edges of a tet4 in VTK/meshio tet10 mid-node order
TET10_EDGES = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3)]


def tet10_from_tet4(mesh: Mesh) -> Mesh:
    """Add straight mid-edge nodes to a tet4 mesh (VTK/meshio ``tetra10`` node order).

    Mid-edge node ids follow the sorted unique edge list, so the result is deterministic.
    Node sets are carried over (vertices only); point data is dropped.
    """
    if mesh.cell_type != "tetra":
        raise MeshError(f"tet10_from_tet4 needs a tet4 mesh, got {mesh.cell_type!r}")
    c = mesh.cells
    e = c[:, TET10_EDGES].reshape(-1, 2)
    srt = np.sort(e, axis=1)
    n = np.int64(mesh.n_points)
    _, first, inv = np.unique(srt[:, 0] * n + srt[:, 1], return_index=True, return_inverse=True)
    uniq = srt[first]                      # sorted by (low id, high id): deterministic numbering
    mids = 0.5 * (mesh.points[uniq[:, 0]] + mesh.points[uniq[:, 1]])
    mid_ids = mesh.n_points + inv.ravel().reshape(-1, 6)
    cells = np.hstack([c, mid_ids])
    return Mesh(np.vstack([mesh.points, mids]), cells, "tetra10", mesh.node_sets, mesh.cell_sets,
                mesh.cell_data, {})
