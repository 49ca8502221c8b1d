"""Matrix-free solver for hex8 voxel models: element-by-element products and geometric multigrid.

Every voxel element is ``E_e * K_hat`` with one (24, 24) template, so :class:`VoxelSolver`
solves ``K u = f`` (Dirichlet DOFs, rigid ties) without assembling ``K``: matrix-free
products preconditioned by geometric multigrid.

The method in full (equations, parameters, choices, sources): ``docs/engine.md``, section
``femur_fe.fe.voxel_solver``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import LoadCaseError, MaterialError, MeshError, SolverError, UnderConstrainedError
from . import _kernels, _voxel
from .assembly import check_poisson, element_stiffness
from .constraints import (
    TIE_DOF_NAMES,
    RigidTie,
    TieResult,
    _check_load_on_free,
    _parse_tie_dofs,
    _skew_rows,
    _tie_names,
    describe_free_modes,
    free_rigid_modes,
    tie_overrides,
    tie_slave_index,
)
from .mesh import Mesh
from .parallel import effective_n_threads
from .solvers import Solution, SolveReport, _fixed_mask

log = logging.getLogger(__name__)

#: hex8 corner offsets (VTK order) in grid index units
CORNERS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                    [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=np.int64)

#: the coarsest level is solved directly once it has at most this many DOFs (SuperLU on a
#: 3-D grid of ~6000 DOFs factorises in well under a second and ~20 MB)
COARSE_MAX_DOFS = 6000
#: Chebyshev smoother: polynomial degree and the ratio lambda_max / lambda_min of the
#: interval it damps (the upper part of the spectrum of D^-1 A)
CHEBYSHEV_DEGREE = 3
CHEBYSHEV_RATIO = 20.0
#: Lanczos steps for the largest eigenvalue of D^-1 A on each level, and the safety factor
#: on its estimate (Ritz values lie inside the spectrum)
LANCZOS_STEPS = 12
LAMBDA_SAFETY = 1.1
DEFAULT_MAXITER = 1000
#: levels with fewer DOFs than this run their kernels on one thread
SERIAL_BELOW_DOFS = 30_000


# ============================================================================ grids
class VoxelGrid:
    """The active voxels of a regular grid (one hex8 element per voxel).

    Parameters
    ----------
    mask : (d0, d1, d2) bool array, True where a voxel is an element.
    spacing : (3,) voxel edge lengths in mm (along the three index axes), or a (3, 3)
        matrix whose rows are the edge vectors of a voxel (mm) for a rotated grid.
    origin : (3,) world position (mm) of grid node (0, 0, 0), i.e. the outer corner of voxel
        [0, 0, 0].

    Attributes
    ----------
    shape : element grid shape (d0, d1, d2); the node grid is (d0 + 1, d1 + 1, d2 + 1).
    axes : (3, 3) rows = voxel edge vectors, mm.
    elem_flat : (m,) int64 flat C-order element index of each element (sorted).
    cells : (m, 8) int32 node ids, VTK corner order.
    node_flat : (n,) int64 flat C-order node-grid index of each node.

    Nodes are numbered in increasing ``node_flat`` (C order), elements in increasing
    ``elem_flat``, unless the grid came from a mesh (:meth:`from_mesh`), where the mesh's
    node numbering is kept.
    """

    def __init__(self, mask, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
        mask = np.asarray(mask)
        if mask.ndim != 3 or mask.dtype != bool:
            raise MeshError(f"mask must be a 3-D boolean array of voxels, got {mask.dtype} {mask.shape}")
        if not mask.any():
            raise MeshError("the voxel mask is empty: no element to solve on")
        self.shape = tuple(int(s) for s in mask.shape)
        self.axes = _axes(spacing)
        self.origin = np.asarray(origin, dtype=np.float64).reshape(3)
        if not np.isfinite(self.origin).all():
            raise MeshError(f"origin must be 3 finite coordinates in mm, got {origin!r}")
        self.elem_flat = np.flatnonzero(mask)
        node_map = _node_map(mask)
        self.node_flat = np.flatnonzero(node_map >= 0)
        self.cells = _cells(self.elem_flat, self.shape, node_map)
        self._mask = mask.copy()
        self._node_map = node_map

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_mesh(cls, mesh: Mesh) -> tuple["VoxelGrid", np.ndarray]:
        """The grid of a hex8 voxel mesh, and ``order`` with ``grid element e = mesh cell order[e]``.

        The mesh's node numbering is kept. Raises :class:`MeshError` when the mesh is not a
        conforming grid of translates of one parallelepiped (use :class:`femur_fe.fe.LinearSolver`).
        """
        if not isinstance(mesh, Mesh):
            raise MeshError(f"expected a femur_fe.Mesh or a VoxelGrid, got {type(mesh).__name__}")
        if mesh.cell_type != "hexahedron":
            raise MeshError(f"the voxel solver needs a hex8 voxel mesh, got {mesh.cell_type!r} cells; "
                            "use femur_fe.fe.LinearSolver for other meshes")
        pts, cells = mesh.points, mesh.cells
        x0 = pts[cells[0]]
        axes = np.stack([x0[1] - x0[0], x0[3] - x0[0], x0[4] - x0[0]])
        size = float(np.abs(axes).max())
        det = float(np.linalg.det(axes))
        if not (size > 0 and det > 1e-9 * size ** 3):
            raise MeshError("the first hex8 cell is degenerate or inverted; a voxel mesh needs boxes with "
                            "positive volume in VTK node order")
        tol = 1e-6 * size
        ideal = CORNERS.astype(np.float64) @ axes
        if np.abs((x0 - x0[0]) - ideal).max() > tol:
            raise MeshError("the first hex8 cell is not a parallelepiped (box); the voxel solver needs every "
                            "element to be the same box: use femur_fe.fe.LinearSolver")
        inv = np.linalg.inv(axes)
        grid_f = (pts - pts[cells[0, 0]]) @ inv
        grid_i = np.rint(grid_f)
        if np.abs(grid_f - grid_i).max() > 1e-6:
            raise MeshError("the mesh nodes do not lie on one regular grid (not all elements are translates "
                            "of the first one); use femur_fe.fe.LinearSolver")
        grid_i = grid_i.astype(np.int64)
        lo = grid_i.min(axis=0)
        grid_i -= lo
        node_dims = grid_i.max(axis=0) + 1
        shape = tuple(int(d - 1) for d in node_dims)
        if min(shape) < 1:
            raise MeshError("the voxel mesh is flat (one node layer); check the mesh")
        node_flat = (grid_i[:, 0] * node_dims[1] + grid_i[:, 1]) * node_dims[2] + grid_i[:, 2]
        if np.unique(node_flat).size != node_flat.size:
            raise MeshError("the voxel mesh has coincident nodes (not merged); merge duplicate nodes first")
        e_ijk = grid_i[cells[:, 0]]
        if (e_ijk >= np.array(shape)).any():
            raise MeshError("a hex8 cell is not oriented like the first one; the voxel solver needs all cells "
                            "in the same node order")
        elem_flat = (e_ijk[:, 0] * shape[1] + e_ijk[:, 1]) * shape[2] + e_ijk[:, 2]
        expect = ((e_ijk[:, None, :] + CORNERS[None]) * np.array([node_dims[1] * node_dims[2], node_dims[2], 1])).sum(2)
        if not np.array_equal(node_flat[cells], expect):
            raise MeshError("some hex8 cells are not translates of the first one (other node order or shape); "
                            "use femur_fe.fe.LinearSolver")
        order = np.argsort(elem_flat, kind="stable")
        elem_flat = elem_flat[order]
        if np.any(np.diff(elem_flat) == 0):
            raise MeshError("the voxel mesh has two cells on the same voxel; remove duplicate cells")
        grid = cls.__new__(cls)
        grid.shape = shape
        grid.axes = axes
        # node (0, 0, 0) of the grid: the first cell's first node sits at grid index -lo
        grid.origin = pts[cells[0, 0]] + lo @ axes
        grid.elem_flat = elem_flat
        grid.node_flat = node_flat
        grid.cells = np.ascontiguousarray(cells[order], dtype=np.int32)
        mask = np.zeros(int(np.prod(shape)), dtype=bool)
        mask[elem_flat] = True
        grid._mask = mask.reshape(shape)
        node_map = np.full(int(np.prod(node_dims)), -1, dtype=np.int32)
        node_map[node_flat] = np.arange(len(node_flat), dtype=np.int32)
        grid._node_map = node_map.reshape(tuple(node_dims))
        return grid, order

    # ---------------------------------------------------------------- properties
    @property
    def n_cells(self) -> int:
        return int(self.elem_flat.size)

    @property
    def n_points(self) -> int:
        return int(self.node_flat.size)

    @property
    def n_dofs(self) -> int:
        return 3 * self.n_points

    @property
    def mask(self) -> np.ndarray:
        """(d0, d1, d2) bool: active voxels."""
        return self._mask

    @property
    def node_dims(self) -> tuple[int, int, int]:
        return tuple(s + 1 for s in self.shape)

    def node_ijk(self) -> np.ndarray:
        """(n, 3) int64 node-grid indices."""
        return np.stack(np.unravel_index(self.node_flat, self.node_dims), axis=1)

    @property
    def points(self) -> np.ndarray:
        """(n, 3) node coordinates, mm."""
        return self.origin + self.node_ijk().astype(np.float64) @ self.axes

    def nodes_at(self, ijk_mask) -> np.ndarray:
        """Node ids where the (d0 + 1, d1 + 1, d2 + 1) boolean ``ijk_mask`` is True."""
        sel = np.asarray(ijk_mask, dtype=bool)
        if sel.shape != self.node_dims:
            raise MeshError(f"node mask must have shape {self.node_dims}, got {sel.shape}")
        ids = self._node_map[sel]
        return np.sort(ids[ids >= 0]).astype(np.int64)

    def to_mesh(self) -> Mesh:
        """The hex8 :class:`femur_fe.Mesh` of the grid (same node and element numbering)."""
        return Mesh(self.points, self.cells.astype(np.int64), "hexahedron")


def is_voxel_mesh(mesh) -> bool:
    """True when ``mesh`` is a hex8 mesh whose cells are translates of one parallelepiped with the
    same node order (what :class:`VoxelSolver` accepts; a voxel mesh rotated into a load frame
    still is one). Cheap: no grid is built."""
    if not isinstance(mesh, Mesh) or mesh.cell_type != "hexahedron" or mesh.n_cells == 0:
        return False
    x0 = mesh.points[mesh.cells[0]]
    axes = np.stack([x0[1] - x0[0], x0[3] - x0[0], x0[4] - x0[0]])
    size = float(np.abs(axes).max())
    if not (size > 0 and np.linalg.det(axes) > 1e-9 * size ** 3):
        return False
    if np.abs((x0 - x0[0]) - CORNERS.astype(np.float64) @ axes).max() > 1e-6 * size:
        return False
    tol = 64 * np.finfo(float).eps * float(np.abs(mesh.points).max()) + 1e-9 * size
    return bool(_kernels.translates_of_first(mesh.points, mesh.cells, tol))


def _axes(spacing) -> np.ndarray:
    arr = np.asarray(spacing, dtype=np.float64)
    if arr.shape == (3,):
        arr = np.diag(arr)
    if arr.shape != (3, 3) or not np.isfinite(arr).all() or np.linalg.det(arr) <= 0:
        raise MeshError(f"spacing must be 3 positive voxel sizes in mm (or a right-handed (3, 3) matrix of "
                        f"voxel edge vectors), got {spacing!r}")
    return arr


def _node_map(mask: np.ndarray) -> np.ndarray:
    """int32 node-grid map: node id (C order) of every grid node touched by an active voxel, else -1."""
    d0, d1, d2 = mask.shape
    used = np.zeros((d0 + 1, d1 + 1, d2 + 1), dtype=bool)
    for a, b, c in CORNERS:
        used[a:a + d0, b:b + d1, c:c + d2] |= mask
    node_map = np.full(used.shape, -1, dtype=np.int32)
    n = int(np.count_nonzero(used))
    if n >= np.iinfo(np.int32).max // 3:
        raise MeshError(f"the voxel model has {n} nodes; the voxel solver supports fewer than "
                        f"{np.iinfo(np.int32).max // 3}")
    node_map[used] = np.arange(n, dtype=np.int32)
    return node_map


def _cells(elem_flat: np.ndarray, shape, node_map: np.ndarray) -> np.ndarray:
    """(m, 8) int32 node ids of the elements ``elem_flat`` (VTK corner order)."""
    d0, d1, d2 = shape
    i, rem = np.divmod(elem_flat, d1 * d2)
    j, k = np.divmod(rem, d2)
    base = (i * (d1 + 1) + j) * (d2 + 1) + k
    flat_map = node_map.reshape(-1)
    out = np.empty((elem_flat.size, 8), dtype=np.int32)
    for a, (ci, cj, ck) in enumerate(CORNERS):
        out[:, a] = flat_map[base + (ci * (d1 + 1) + cj) * (d2 + 1) + ck]
    return out


def unit_template(axes: np.ndarray, poisson: float) -> np.ndarray:
    """(24, 24) stiffness of one voxel with edge vectors ``axes`` (rows, mm) and E = 1 MPa, N/mm."""
    pts = CORNERS.astype(np.float64) @ np.asarray(axes, dtype=np.float64)
    one = Mesh(pts, np.arange(8)[None], "hexahedron")
    k = element_stiffness(one, 1.0, poisson, n_threads=1)[0]
    return np.ascontiguousarray(0.5 * (k + k.T))


# ============================================================================ NumPy twins
def element_dofs(cells: np.ndarray) -> np.ndarray:
    """(m, 24) interleaved global DOFs of the elements."""
    return (3 * cells.astype(np.int64)[:, :, None] + np.arange(3)).reshape(len(cells), 24)


def matvec_numpy(cells: np.ndarray, young: np.ndarray, khat: np.ndarray, x: np.ndarray) -> np.ndarray:
    """NumPy twin of ``_voxel.matvec``: ``y = sum_e young[e] K_hat x_e`` scattered to the nodes."""
    dofs = element_dofs(cells)
    ye = (x[dofs] @ khat) * young[:, None]
    return np.bincount(dofs.ravel(), ye.ravel(), minlength=x.size)


def diagonal_numpy(cells: np.ndarray, young: np.ndarray, khat: np.ndarray, n_dofs: int) -> np.ndarray:
    """NumPy twin of ``_Level.diagonal`` (the compiled product with the diagonal of the template)."""
    dofs = element_dofs(cells)
    return np.bincount(dofs.ravel(), (young[:, None] * np.diag(khat)[None, :]).ravel(), minlength=n_dofs)


def _parents(fine_flat: np.ndarray, fine_dims, coarse_dims, shift) -> np.ndarray:
    """(n, 8) flat coarse node-grid index of ``(ijk + (o & s)) >> s`` for the eight o in {0, 1}^3
    (``s`` = 1 on the axes coarsened by 2, 0 on the kept ones)."""
    ijk = np.unravel_index(fine_flat, fine_dims)
    s = [int(v) for v in shift]
    out = np.empty((fine_flat.size, 8), dtype=np.int64)
    for o in range(8):
        out[:, o] = np.ravel_multi_index(tuple((ijk[a] + (((o >> a) & 1) & s[a])) >> s[a] for a in range(3)),
                                         coarse_dims)
    return out


def prolong_numpy(fine_flat, fine_dims, coarse_map, coarse_dims, shift, xc: np.ndarray) -> np.ndarray:
    """NumPy twin of ``_voxel.prolong_add`` (returns ``P xc``)."""
    par = coarse_map.reshape(-1)[_parents(fine_flat, fine_dims, coarse_dims, shift)]
    return (0.125 * xc.reshape(-1, 3)[par].sum(axis=1)).reshape(-1)


def restrict_numpy(fine_flat, fine_dims, coarse_map, coarse_dims, shift, rf: np.ndarray,
                   n_coarse: int) -> np.ndarray:
    """NumPy twin of ``_voxel.restrict`` (``P^T rf``), written as the scatter of the transpose."""
    par = coarse_map.reshape(-1)[_parents(fine_flat, fine_dims, coarse_dims, shift)]
    out = np.zeros((n_coarse, 3))
    for c in range(3):
        out[:, c] = np.bincount(par.ravel(), np.repeat(0.125 * rf[c::3], 8), minlength=n_coarse)
    return out.reshape(-1)


def chebyshev_step_numpy(d, x, b, ax, invdiag, c1: float, c2: float) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of ``_voxel.chebyshev_step``: returns the new (d, x)."""
    d_new = c1 * d + c2 * invdiag * (b - ax)
    return d_new, x + d_new


# ============================================================================ multigrid
class _Level:
    """One level of the voxel hierarchy: elements, moduli, template, node grid, held DOFs, the
    smoother's data and ``shift`` (axes coarsened from the finer level, for the transfers)."""

    def __init__(self, mask: np.ndarray, elem_flat: np.ndarray, cells: np.ndarray, node_flat: np.ndarray,
                 node_map: np.ndarray, young: np.ndarray, axes: np.ndarray, poisson: float, fixed: np.ndarray,
                 n_threads: int, dtype, khat: np.ndarray | None = None) -> None:
        self.mask = mask
        self.shape = mask.shape
        self.elem_flat = elem_flat
        self.cells = cells
        self.node_flat = node_flat
        self.node_map = node_map
        self.node_dims = np.array(node_map.shape, dtype=np.int64)
        self.young = young
        self.dtype = np.dtype(dtype)
        self.axes = axes
        self.poisson = poisson
        self.khat64 = unit_template(axes, poisson) if khat is None else khat
        self.khat = np.ascontiguousarray(self.khat64.reshape(-1), dtype=self.dtype)
        # small levels run serially: a parallel region costs more than it saves there
        self.nt = n_threads if 3 * node_flat.size >= SERIAL_BELOW_DOFS else 1
        layer = elem_flat // (self.shape[1] * self.shape[2])
        self.layer_ptr = np.searchsorted(layer, np.arange(self.shape[0] + 1)).astype(np.int64)
        self.n_nodes = int(node_flat.size)
        self.n = 3 * self.n_nodes
        self.fixed = fixed  # int64 DOF ids held at zero
        self.shift = np.zeros(3, dtype=np.int64)

    def apply(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        _voxel.matvec(self.cells, self.layer_ptr, self.young, self.khat, x, out, self.nt)
        out[self.fixed] = 0
        return out

    def diagonal(self) -> np.ndarray:
        """diag(K): the product of the diagonal part of the template with a vector of ones."""
        d = np.empty(self.n)
        _voxel.matvec(self.cells, self.layer_ptr, self.young, np.diag(np.diag(self.khat64)).reshape(-1),
                      np.ones(self.n), d, self.nt)
        return d

    def nbytes(self) -> int:
        arrs = [self.mask, self.elem_flat, self.cells, self.node_flat, self.node_map, self.young, self.fixed,
                self.layer_ptr]
        return int(sum(a.nbytes for a in arrs))


def _coarsen(lv: _Level, n_threads: int, dtype) -> _Level:
    """The 2 x 2 x 2 coarsening of ``lv`` (2 x 2 x 1 etc. along axes already one element thick:
    a sheet stays a sheet, so its coarse bending stiffness is not inflated)."""
    d0, d1, d2 = lv.shape
    shift = np.array([1 if d > 1 else 0 for d in lv.shape], dtype=np.int64)
    s0, s1, s2 = (int(v) for v in shift)
    c0, c1, c2 = ((d + (1 << s) - 1) >> s for d, s in zip(lv.shape, shift))
    i, rem = np.divmod(lv.elem_flat, d1 * d2)
    j, k = np.divmod(rem, d2)
    parent = ((i >> s0) * c1 + (j >> s1)) * c2 + (k >> s2)
    del i, j, k, rem
    cmask = np.zeros(c0 * c1 * c2, dtype=bool)
    cmask[parent] = True
    celem = np.flatnonzero(cmask)
    cmask = cmask.reshape(c0, c1, c2)
    slot = np.searchsorted(celem, parent)
    # mean of the children (absent ones count 0), on the template of the coarse box
    cyoung = np.bincount(slot, weights=lv.young, minlength=celem.size) / float(1 << (s0 + s1 + s2))
    del parent, slot
    cmap = _node_map(cmask)
    cnodes = np.flatnonzero(cmap.reshape(-1) >= 0)
    ccells = _cells(celem, cmask.shape, cmap)
    # held coarse DOFs: every parent of a held fine DOF (same component)
    fixed = np.zeros(0, dtype=np.int64)
    if lv.fixed.size:
        fnode, comp = np.divmod(lv.fixed, 3)
        par = cmap.reshape(-1)[_parents(lv.node_flat[fnode], tuple(lv.node_dims), cmap.shape, shift)]
        fixed = np.unique((3 * par.astype(np.int64) + comp[:, None]).ravel())
    out = _Level(cmask, celem, ccells, cnodes, cmap, cyoung.astype(lv.young.dtype),
                 lv.axes * (1 << shift)[:, None].astype(np.float64), lv.poisson, fixed, n_threads, dtype)
    out.shift = shift
    return out


def _lanczos_lmax(apply, invdiag: np.ndarray, free: np.ndarray, steps: int, seed: int = 0) -> float:
    """Largest Ritz value of ``D^-1/2 A D^-1/2`` after ``steps`` Lanczos steps (free DOFs)."""
    rng = np.random.default_rng(seed)
    s = np.sqrt(invdiag)
    v = (rng.standard_normal(invdiag.size) * free).astype(invdiag.dtype)
    v /= np.linalg.norm(v)
    v_old = np.zeros_like(v)
    beta = 0.0
    alphas, betas = [], []
    w = np.empty_like(v)
    for _ in range(steps):
        apply(s * v, w)
        w *= s
        alpha = float(w @ v)
        w -= alpha * v + beta * v_old
        alphas.append(alpha)
        beta = float(np.linalg.norm(w))
        if beta < 1e-12 * abs(alpha):
            break
        betas.append(beta)
        v_old, v = v, w / beta
        w = np.empty_like(v)
    n = len(alphas)
    t = np.diag(alphas) + np.diag(betas[:n - 1], 1) + np.diag(betas[:n - 1], -1)
    return float(np.linalg.eigvalsh(t).max())


class VoxelMultigrid:
    """Geometric multigrid V-cycle for ``K`` of a voxel level with held DOFs.

    Parameters
    ----------
    fine : the finest :class:`_Level`.
    coarse_max_dofs : stop coarsening at this many DOFs (solved by SuperLU).
    degree, ratio : Chebyshev degree and damped interval ``[lmax / ratio, lmax]``.
    dtype : float64 or float32 vectors and moduli on the coarse levels.
    """

    def __init__(self, fine: _Level, *, coarse_max_dofs: int = COARSE_MAX_DOFS, degree: int = CHEBYSHEV_DEGREE,
                 ratio: float = CHEBYSHEV_RATIO, n_threads: int = 1, dtype=np.float64) -> None:
        self.levels = [fine]
        self.degree = int(degree)
        self.ratio = float(ratio)
        self.nt = n_threads
        while self.levels[-1].n > coarse_max_dofs and max(self.levels[-1].shape) > 2:
            nxt = _coarsen(self.levels[-1], n_threads, dtype)
            if nxt.n > 0.6 * self.levels[-1].n:  # nothing left to coarsen (e.g. a one-voxel sheet)
                break
            self.levels.append(nxt)
        if self.levels[-1].n > 20 * coarse_max_dofs:
            log.warning("the coarsest multigrid level keeps %d DOFs (the voxel grid cannot be coarsened "
                        "further); its direct factorisation may be slow", self.levels[-1].n)
        for lv in self.levels[:-1]:
            self._setup_smoother(lv)
        self._setup_coarse(self.levels[-1])
        # work vectors per level: x and b (the level's problem; the caller's arrays on the finest
        # level in float64), r (residual), d (Chebyshev direction), t (A x)
        self._work = []
        for li, lv in enumerate(self.levels):
            own = li > 0 or lv.dtype != np.float64
            xb = [np.zeros(lv.n, dtype=lv.dtype) for _ in range(2)] if own else [None, None]
            rdt = [np.zeros(lv.n, dtype=lv.dtype) for _ in range(3)] if li < len(self.levels) - 1 else [None] * 3
            self._work.append(tuple(xb + rdt))

    def _setup_smoother(self, lv: _Level) -> None:
        diag = lv.diagonal()
        free = np.ones(lv.n, dtype=bool)
        free[lv.fixed] = False
        bad = free & ~(diag > 0)
        if bad.any():
            raise SolverError(f"{int(bad.sum())} free DOFs have no stiffness on a multigrid level; check the moduli")
        invd = np.where(free, 1.0 / np.where(diag > 0, diag, 1.0), 0.0)
        lv.invdiag = invd.astype(lv.dtype)
        lmax = _lanczos_lmax(lv.apply, lv.invdiag, free, LANCZOS_STEPS) * LAMBDA_SAFETY
        lv.lmax = lmax
        lv.lmin = lmax / self.ratio

    def _setup_coarse(self, lv: _Level) -> None:
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        free = np.ones(lv.n, dtype=bool)
        free[lv.fixed] = False
        lv.free = np.flatnonzero(free)
        lv.lu = None
        if lv.free.size == 0:
            return
        dofs = element_dofs(lv.cells)
        rows = np.repeat(dofs, 24, axis=1).ravel()
        cols = np.tile(dofs, (1, 24)).ravel()
        vals = (lv.young.astype(np.float64)[:, None, None] * lv.khat64[None]).ravel()
        k = sp.csr_matrix((vals, (rows, cols)), shape=(lv.n, lv.n))
        a = k[lv.free][:, lv.free].tocsc()
        try:
            lv.lu = spla.splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                              options={"SymmetricMode": True})
        except RuntimeError as exc:
            raise SolverError(f"the coarsest multigrid level is singular ({exc}); check the constraints (rigid "
                              "modes left free) and the moduli") from None

    # ---------------------------------------------------------------- cycle
    def _smooth(self, lv: _Level, b, x, d, t, zero_start: bool) -> None:
        """Chebyshev smoothing of ``A x = b`` (Saad 2003, Alg. 12.1 on D^-1 A)."""
        alpha, beta = lv.lmin, lv.lmax
        delta = 2.0 / (beta - alpha)
        theta = 0.5 * (beta + alpha)
        s1 = theta * delta
        if zero_start:
            np.multiply(lv.invdiag, b, out=d)
            d *= 1.0 / theta
            x[:] = d
            steps = self.degree - 1
        else:
            d[:] = 0
            lv.apply(x, t)
            _voxel.chebyshev_step(d, x, b, t, lv.invdiag, 0.0, 1.0 / theta, lv.nt)
            steps = self.degree - 1
        rho = 1.0 / s1
        for _ in range(steps):
            lv.apply(x, t)
            rho_new = 1.0 / (2.0 * s1 - rho)
            _voxel.chebyshev_step(d, x, b, t, lv.invdiag, rho_new * rho, 2.0 * rho_new * delta, lv.nt)
            rho = rho_new

    def _cycle(self, li: int, b: np.ndarray, x: np.ndarray) -> None:
        lv = self.levels[li]
        if li == len(self.levels) - 1:
            x[:] = 0
            if lv.lu is not None:
                x[lv.free] = lv.lu.solve(b[lv.free].astype(np.float64))
            return
        _, _, r, d, t = self._work[li]
        self._smooth(lv, b, x, d, t, zero_start=True)
        lv.apply(x, t)
        np.subtract(b, t, out=r)
        nxt = self.levels[li + 1]
        xc, bc = self._work[li + 1][0], self._work[li + 1][1]
        _voxel.restrict(nxt.node_flat, nxt.node_dims, lv.node_map.reshape(-1), lv.node_dims, nxt.shift, r, bc,
                        lv.nt)
        bc[nxt.fixed] = 0
        self._cycle(li + 1, bc, xc)
        _voxel.prolong_add(lv.node_flat, lv.node_dims, nxt.node_map.reshape(-1), nxt.node_dims, nxt.shift, xc, x,
                           lv.nt)
        x[lv.fixed] = 0
        self._smooth(lv, b, x, d, t, zero_start=False)

    def apply(self, b: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out = M b``: one V-cycle from a zero guess (b zero at the held DOFs)."""
        lv = self.levels[0]
        if lv.dtype == np.float64:
            self._cycle(0, b, out)
        else:
            xx, bb = self._work[0][0], self._work[0][1]
            bb[:] = b
            self._cycle(0, bb, xx)
            out[:] = xx
        return out

    def nbytes(self) -> int:
        n = sum(lv.nbytes() for lv in self.levels)
        n += sum(sum(w.nbytes for w in ws if w is not None) for ws in self._work)
        n += sum(lv.invdiag.nbytes for lv in self.levels[:-1])
        lu = self.levels[-1].lu
        if lu is not None:
            n += (lu.L.nnz + lu.U.nnz) * 12
        return int(n)

    def describe(self) -> str:
        return " / ".join(f"{lv.n}" for lv in self.levels) + " DOFs"


# ============================================================================ the solver
@dataclass
class _TieData:
    name: str
    tie: RigidTie
    nodes: np.ndarray  # (k,) node ids
    r: np.ndarray  # (k, 3) node position - reference point, mm
    free: np.ndarray  # (6,) bool: free reference DOFs


class VoxelSolver:
    """Matrix-free ``K u = f`` on a hex8 voxel model with Dirichlet DOFs and rigid ties.

    Parameters
    ----------
    model : a :class:`VoxelGrid`, or a hex8 :class:`femur_fe.Mesh` whose cells are translates
        of one box (e.g. from :func:`femur_fe.bone.hexmesh_from_mask`, also rotated into a load
        frame); node and cell numbering of the mesh are kept for inputs and results.
    young : (m,) Young's moduli per element in MPa (float64 or float32), or a scalar.
    poisson : Poisson ratio, one for the whole model.
    fixed_dofs : DOF ids ``3 * node + component`` (or a (3n,) boolean mask) whose displacement
        is prescribed (values given to :meth:`solve`, default 0).
    ties : list of :class:`femur_fe.fe.RigidTie` (master-slave, as in :class:`femur_fe.fe.LinearSolver`).
    rtol : CG target ``||b - A x|| <= rtol ||b||`` on the free DOFs.
    maxiter : CG iteration limit.
    n_threads : threads of the compiled kernels (None = all cores).
    coarse_max_dofs, degree, ratio : multigrid settings (see the module constants).
    mg_dtype : float32 (default) or float64 vectors and template in the multigrid
        preconditioner. CG, its operator and the reported residual are float64 either way: the
        preconditioner only steers the iterates, so the answer meets ``rtol`` (tested to 1e-11)
        while the V-cycle moves half the bytes.

    Raises
    ------
    MeshError, MaterialError, LoadCaseError, UnderConstrainedError, SolverError

    Examples
    --------
    >>> grid = VoxelGrid(mask, spacing=(0.5, 0.5, 0.5))                           # doctest: +SKIP
    >>> bottom = grid.nodes_at(bottom_face); top = grid.nodes_at(top_face)        # doctest: +SKIP
    >>> plate = RigidTie(top, grid.points[top].mean(0), prescribed={"uz": -0.1, "rx": 0, "ry": 0,
    ...                  "rz": 0}, name="plate")                                   # doctest: +SKIP
    >>> s = VoxelSolver(grid, young, 0.3, (3 * bottom[:, None] + np.arange(3)).ravel(),
    ...                 ties=[plate])                                              # doctest: +SKIP
    >>> sol = s.solve(np.zeros(grid.n_dofs)); sol.ties["plate"].force            # doctest: +SKIP
    """

    def __init__(self, model, young, poisson: float = 0.3, fixed_dofs=None, *,
                 ties: Sequence[RigidTie] | None = None, rtol: float = 1e-8, maxiter: int | None = None,
                 n_threads: int | None = None, coarse_max_dofs: int = COARSE_MAX_DOFS,
                 degree: int = CHEBYSHEV_DEGREE, ratio: float = CHEBYSHEV_RATIO, mg_dtype=np.float32):
        t0 = time.perf_counter()
        if not (0 < float(rtol) < 1):
            raise SolverError(f"rtol must be in (0, 1), got {rtol!r}")
        if int(degree) < 1 or not float(ratio) > 1:
            raise SolverError(f"degree must be >= 1 and ratio > 1, got {degree!r}, {ratio!r}")
        if np.dtype(mg_dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise SolverError(f"mg_dtype must be float64 or float32, got {mg_dtype!r}")
        self.rtol = float(rtol)
        self.maxiter = int(maxiter) if maxiter is not None else DEFAULT_MAXITER
        self.nt = effective_n_threads(n_threads)
        nu = check_poisson(poisson)
        if isinstance(model, VoxelGrid):
            grid, order = model, None
        else:
            grid, order = VoxelGrid.from_mesh(model)
        self.grid = grid
        # node coordinates (mm) for the tie arms and the constraint checks: the mesh's own when a mesh
        # is given (the ones LinearSolver uses), else the grid's
        self._points = grid.points if order is None else np.asarray(model.points, dtype=np.float64)
        self.n_nodes = grid.n_points
        self.n_dofs = 3 * self.n_nodes
        self.young = _check_young(young, grid.n_cells, order)
        self.khat = unit_template(grid.axes, nu)
        fixed, self._fixed_given = _fixed_mask(fixed_dofs, self.n_dofs)
        self.fixed_mask = fixed
        self._ties = self._tie_data(list(ties or []))
        self.tie_names = [t.name for t in self._ties]
        # held DOFs of the node part: Dirichlet + tied nodes
        held = fixed.copy()
        for td in self._ties:
            held[(3 * td.nodes[:, None] + np.arange(3)).ravel()] = True
        self._held = np.flatnonzero(held)
        self._slave_dofs = [(3 * td.nodes[:, None] + np.arange(3)).ravel() for td in self._ties]
        self._check_constraints()
        # free tie reference DOFs, positions in the tie block (6 per tie)
        self._tie_free = np.flatnonzero(np.concatenate([td.free for td in self._ties])) if self._ties \
            else np.zeros(0, dtype=np.int64)
        self.n_free = int(self.n_dofs - self._held.size + self._tie_free.size)
        if self.n_free == 0:
            raise SolverError("every DOF is prescribed: nothing to solve (check fixed_dofs and ties)")

        node_map = grid._node_map
        fine = _Level(grid.mask, grid.elem_flat, grid.cells, grid.node_flat, node_map, self.young, grid.axes, nu,
                      self._held, self.nt, mg_dtype, khat=self.khat)
        self._fine = fine
        self.mg = VoxelMultigrid(fine, coarse_max_dofs=coarse_max_dofs, degree=degree, ratio=ratio,
                                 n_threads=self.nt, dtype=mg_dtype)
        self._setup_tie_block()
        self.memory_estimate_bytes = int(self.mg.nbytes() + 6 * 8 * self.n_dofs
                                         + (self._w.nbytes if self._w is not None else 0))
        self.method = "voxel-mg-cg"
        self.setup_seconds = time.perf_counter() - t0
        log.info("voxel solver set up: %d DOFs (%d free), levels %s, %.2f s", self.n_dofs, self.n_free,
                 self.mg.describe(), self.setup_seconds)

    # ---------------------------------------------------------------- constraints
    def _tie_data(self, ties: list) -> list[_TieData]:
        for tie in ties:
            if not isinstance(tie, RigidTie):
                raise SolverError(f"ties must be RigidTie objects, got {type(tie).__name__}")
        names = _tie_names(ties)
        tie_slave_index(self.n_nodes, ties, names)  # checks ids and disjoint node sets
        out = []
        pts = self._points
        for tie, name in zip(ties, names):
            ids = tie.node_ids
            fixed_here = self.fixed_mask.reshape(-1, 3)[ids].any(axis=1)
            if fixed_here.any():
                raise LoadCaseError(
                    f"{int(fixed_here.sum())} node(s) of RigidTie {name!r} also have fixed DOFs (e.g. node "
                    f"{ids[fixed_here][0]}); a tied node moves with its tie: prescribe the tie's reference DOFs "
                    "instead, or remove those nodes from the tie")
            out.append(_TieData(name, tie, ids, pts[ids] - tie.reference_point, ~tie.prescribed_mask))
        return out

    def _check_constraints(self) -> None:
        """Raise UnderConstrainedError if a rigid-body mode of a part (or of a tie) is left free."""
        from scipy import ndimage

        pts = self._points
        for td in self._ties:
            rows = np.zeros((3 * td.nodes.size, 6))
            rows[:, :3] = np.tile(np.eye(3), (td.nodes.size, 1))
            rows[:, 3:] = _skew_rows(td.r).reshape(-1, 3)
            rows = np.vstack([rows, np.eye(6)[~td.free]])
            scale = np.r_[1.0, 1.0, 1.0, np.full(3, max(float(np.ptp(pts[td.nodes], axis=0).max()), 1e-300))]
            s = np.linalg.svd(rows / scale, compute_uv=False)
            if (np.r_[s, np.zeros(6 - len(s))] < 1e-8 * s[0]).any():
                raise UnderConstrainedError(
                    f"RigidTie {td.name!r} has {td.nodes.size} node(s) that are collinear or coincident, so its "
                    "rotation about that line is undetermined: tie at least three non-collinear nodes, or "
                    "prescribe its rotations (rx, ry, rz)")
        # parts: voxels sharing a node (26-connectivity) belong to one part
        labels, n_parts = ndimage.label(self.grid.mask, structure=np.ones((3, 3, 3), dtype=bool))
        elem_part = labels.reshape(-1)[self.grid.elem_flat] - 1
        del labels
        node_part = np.empty(self.n_nodes, dtype=np.int64)
        node_part[self.grid.cells.reshape(-1)] = np.repeat(elem_part, 8)
        joined = []  # parts held together by one tie
        for td in self._ties:
            labs = np.unique(node_part[td.nodes])
            joined += [(labs[0], lab) for lab in labs[1:]]
        group = _union_roots(n_parts, joined)[node_part]
        fixed_dofs = np.flatnonzero(self.fixed_mask)
        problems = []
        for g in np.unique(group):
            nodes = np.flatnonzero(group == g) if n_parts > 1 else np.arange(self.n_nodes)
            gfixed = fixed_dofs[group[fixed_dofs // 3] == g]
            gties = [(td.tie.reference_point, ~td.free) for td in self._ties if group[td.nodes[0]] == g]
            null, center, length = free_rigid_modes(pts, nodes, gfixed, gties)
            if null.shape[1]:
                problems.append((g, nodes, describe_free_modes(null, center, length), center))
        if problems:
            lines = [f"part {g} ({nodes.size} nodes, e.g. node {nodes[0]} around ({c[0]:.4g}, {c[1]:.4g}, "
                     f"{c[2]:.4g}) mm): " + "; ".join(names) for g, nodes, names, c in problems[:5]]
            raise UnderConstrainedError(
                "the boundary conditions leave rigid-body modes free, the stiffness matrix is singular:\n  "
                + "\n  ".join(lines) + "\nFix: fix more DOFs of each part, prescribe the free reference DOFs of a "
                "RigidTie, or remove voxels not connected to the supported bone (scipy.ndimage.label)")
        self._warn_hinges(n_parts, pts)

    def _warn_hinges(self, n_parts: int, pts: np.ndarray) -> None:
        """Warn about voxel groups joined to the rest only through edges or corners (hinges).

        Voxels sharing a face form one rigid part; a part that touches the others only along
        one edge line or at one node can rotate without strain there, so the stiffness leaves
        that rotation undetermined and the displacement of the hinged voxels is arbitrary
        (any solver: the rest of the answer is unaffected).
        """
        from scipy import ndimage

        labels, n_faces = ndimage.label(self.grid.mask)  # face connectivity
        if n_faces == n_parts:
            return
        grid = self.grid
        part = labels.reshape(-1)[grid.elem_flat] - 1
        del labels
        size = np.bincount(part, minlength=n_faces)
        flat_nodes = grid.cells.reshape(-1)
        elem_part = np.repeat(part, 8)
        last = np.empty(self.n_nodes, dtype=np.int64)
        last[flat_nodes] = elem_part  # the part of one element at each node
        other = elem_part != last[flat_nodes]  # (element, node) pairs of another part at that node
        shared = np.zeros(self.n_nodes, dtype=bool)
        shared[flat_nodes[other]] = True
        touching = np.unique(np.stack([elem_part[other], last[flat_nodes[other]]], axis=1), axis=0)
        del elem_part, last, other
        # the largest face-connected part of each group of touching parts is checked against the
        # supports by the rigid-mode test; every other part is checked against what it touches
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(n_faces + 1))
        root = _union_roots(n_faces, touching)
        biggest = {}
        for p_ in np.argsort(-size, kind="stable"):
            biggest.setdefault(int(root[p_]), int(p_))
        held = self.fixed_mask
        tied = np.zeros(self.n_nodes, dtype=bool)
        for td in self._ties:
            tied[td.nodes] = True
        hinged, n_vox, example = 0, 0, None
        for p_ in range(n_faces):
            if biggest[int(root[p_])] == p_:
                continue
            nodes = np.unique(grid.cells[order[bounds[p_]:bounds[p_ + 1]]].reshape(-1)).astype(np.int64)
            anchors = nodes[shared[nodes] | tied[nodes]]
            dofs = (3 * nodes[:, None] + np.arange(3)).ravel()
            given = np.union1d(dofs[held[dofs]], (3 * anchors[:, None] + np.arange(3)).ravel())
            null, _, _ = free_rigid_modes(pts, nodes, given)
            if null.shape[1]:
                hinged += 1
                n_vox += int(size[p_])
                if example is None:
                    example = pts[nodes].mean(axis=0)
        if hinged:
            log.warning("%d group(s) of %d voxel(s) in all are joined to the rest only through edges or corners "
                        "(hinges, e.g. around (%.4g, %.4g, %.4g) mm): their rotation about the hinge is not "
                        "resisted, so their displacements and strains are arbitrary (the stiffness is not "
                        "affected); remove them, e.g. keep face-connected voxels (scipy.ndimage.label with its "
                        "default structure) before meshing", hinged, n_vox, *example)

    # ---------------------------------------------------------------- operators
    def _expand(self, v: np.ndarray, vt: np.ndarray) -> None:
        """Write ``T z`` into the tied nodes of the node vector ``v`` from tie DOFs ``vt`` (6 per tie)."""
        for k, td in enumerate(self._ties):
            ut, th = vt[6 * k:6 * k + 3], vt[6 * k + 3:6 * k + 6]
            v[self._slave_dofs[k]] = (ut[None, :] + np.cross(th[None, :], td.r)).reshape(-1)

    def _reduce(self, y: np.ndarray, yt: np.ndarray) -> None:
        """``yt = T^T y`` on the tie DOFs (force and moment about the reference point)."""
        for k, td in enumerate(self._ties):
            yk = y[self._slave_dofs[k]].reshape(-1, 3)
            yt[6 * k:6 * k + 3] = yk.sum(axis=0)
            yt[6 * k + 3:6 * k + 6] = np.cross(td.r, yk).sum(axis=0)

    def _apply_full(self, v: np.ndarray, vt: np.ndarray, out: np.ndarray, out_t: np.ndarray) -> None:
        """``T^T K T z`` with z = (v on untied nodes, vt): no DOF held (for lifting and reactions)."""
        u = v.copy()
        self._expand(u, vt)
        _voxel.matvec(self.grid.cells, self._fine.layer_ptr, self.young, self.khat.reshape(-1), u, out, self._fine.nt)
        self._reduce(out, out_t)
        for sd in self._slave_dofs:
            out[sd] = 0.0

    def _apply(self, v: np.ndarray, out: np.ndarray) -> None:
        """The CG operator on the concatenated vector (3n node DOFs, 6 per tie); held entries are 0."""
        n = self.n_dofs
        vn, vt = v[:n], v[n:]
        if self._ties:
            self._expand(vn, vt)
        _voxel.matvec(self.grid.cells, self._fine.layer_ptr, self.young, self.khat.reshape(-1), vn, out[:n],
                      self._fine.nt)
        if self._ties:
            self._reduce(out[:n], out[n:])
            for sd in self._slave_dofs:
                vn[sd] = 0.0
            out[n:][~np.concatenate([td.free for td in self._ties])] = 0.0
        out[:n][self._held] = 0.0

    def _setup_tie_block(self) -> None:
        """Schur complement of the free tie DOFs with the V-cycle as the inverse of the node block."""
        self._w = None
        if self._tie_free.size == 0:
            return
        n, nt6 = self.n_dofs, 6 * len(self._ties)
        k = self._tie_free.size
        w = np.empty((k, n))
        a_mt = np.empty((k, n))
        a_tt = np.empty((k, k))
        e = np.zeros(n + nt6)
        col = np.empty(n + nt6)
        for a, j in enumerate(self._tie_free):
            e[:] = 0.0
            e[n + j] = 1.0
            self._apply(e, col)
            a_mt[a] = col[:n]
            a_tt[:, a] = col[n + self._tie_free]
            self.mg.apply(col[:n], w[a])
        s = a_tt - a_mt @ w.T
        s = 0.5 * (s + s.T)
        try:
            self._s_chol = np.linalg.cholesky(s)
        except np.linalg.LinAlgError:
            raise UnderConstrainedError("the free reference DOFs of the rigid ties are not restrained by the model "
                                        "(singular tie block); prescribe them or support the model") from None
        self._w = w

    def _precondition(self, r: np.ndarray, z: np.ndarray) -> None:
        n = self.n_dofs
        self.mg.apply(r[:n], z[:n])
        if self._w is None:
            if self._ties:
                z[n:] = 0.0
            return
        from scipy.linalg import cho_solve

        rt = r[n:][self._tie_free] - self._w @ r[:n]
        zt = cho_solve((self._s_chol, True), rt)
        z[:n] -= self._w.T @ zt
        z[n:] = 0.0
        z[n:][self._tie_free] = zt

    # ---------------------------------------------------------------- solve
    def _prescribed(self, fixed_values, tie_values) -> tuple[np.ndarray, np.ndarray]:
        """(node vector with the prescribed Dirichlet values, tie vector with prescribed reference values)."""
        g = np.zeros(self.n_dofs)
        if fixed_values is not None:
            fv = np.asarray(fixed_values, dtype=np.float64).ravel()
            if fv.shape[0] == self.n_dofs:
                g[self.fixed_mask] = fv[self.fixed_mask]
            elif fv.shape[0] == len(self._fixed_given):
                g[self._fixed_given] = fv
            else:
                raise SolverError(f"fixed_values must have length 3n = {self.n_dofs} (full vector) or "
                                  f"{len(self._fixed_given)} (one per fixed DOF, in the order given), got {fv.shape[0]}")
            if not np.isfinite(g).all():
                raise SolverError("fixed_values contains NaN or inf at fixed DOFs")
        gt = np.zeros(6 * len(self._ties))
        over = tie_overrides(self.tie_names, tie_values, "tie_values")
        for k, td in enumerate(self._ties):
            vals = td.tie.prescribed_values.copy()
            if k in over:
                for j, v in _parse_tie_dofs(over[k], "tie_values", td.name).items():
                    if td.free[j]:
                        raise SolverError(f"tie_values for {td.name!r} sets {TIE_DOF_NAMES[j]!r}, which is free in "
                                          "this solver; declare it in RigidTie(prescribed=...) first")
                    vals[j] = v
            gt[6 * k:6 * k + 6] = vals
        return g, gt

    def _tie_loads(self, tie_loads) -> np.ndarray:
        loads = np.zeros(6 * len(self._ties))
        over = tie_overrides(self.tie_names, tie_loads, "tie_loads")
        for k, td in enumerate(self._ties):
            load = td.tie.load
            if k in over:
                load = np.asarray(over[k], dtype=np.float64).ravel()
                if load.shape != (6,) or not np.isfinite(load).all():
                    raise SolverError(f"tie_loads[{td.name!r}] must be 6 finite numbers (Fx, Fy, Fz in N, "
                                      "Mx, My, Mz in N mm)")
                _check_load_on_free(td.name, {j: 0.0 for j in np.flatnonzero(~td.free)}, load)
            loads[6 * k:6 * k + 6] = load
        return loads

    def _cg(self, b: np.ndarray) -> tuple[np.ndarray, int]:
        nb = float(np.linalg.norm(b))
        x = np.zeros_like(b)
        if nb == 0.0:
            return x, 0
        r = b.copy()
        z = np.empty_like(b)
        q = np.empty_like(b)
        self._precondition(r, z)
        p = z.copy()
        rz = float(r @ z)
        target = self.rtol * nb
        for it in range(1, self.maxiter + 1):
            self._apply(p, q)
            pq = float(p @ q)
            if not pq > 0:
                raise SolverError(f"voxel CG broke down at iteration {it} (p.Ap = {pq:.3e}): the operator or the "
                                  "preconditioner is not positive definite; check the moduli and the constraints")
            alpha = rz / pq
            x += alpha * p
            r -= alpha * q
            if float(np.linalg.norm(r)) <= target:
                return x, it
            self._precondition(r, z)
            rz_new = float(r @ z)
            p *= rz_new / rz
            p += z
            rz = rz_new
        res = float(np.linalg.norm(r)) / nb
        raise SolverError(f"voxel multigrid CG did not converge: {self.maxiter} iterations, relative residual "
                          f"{res:.3e} > rtol {self.rtol:.1e}; check the constraints (parts hanging on a few nodes) "
                          "and the moduli, or raise maxiter")

    def solve(self, f=None, fixed_values=None, *, tie_values: Mapping | Sequence | None = None,
              tie_loads: Mapping | Sequence | None = None) -> Solution:
        """Solve for nodal forces ``f`` (N, (3n,) or (3n, r)) and prescribed values.

        Same arguments and result as :meth:`femur_fe.fe.LinearSolver.solve`: ``fixed_values``
        (mm) as a full (3n,) vector or one per fixed DOF in the order given; ``tie_values``
        ``{tie: {"uz": -0.1}}`` (mm, rad) on prescribed reference DOFs; ``tie_loads``
        ``{tie: (Fx, Fy, Fz, Mx, My, Mz)}`` (N, N mm) on free ones.
        """
        t0 = time.perf_counter()
        fa = np.zeros(self.n_dofs) if f is None else np.asarray(f, dtype=np.float64)
        one = fa.ndim == 1
        if one:
            fa = fa[:, None]
        if fa.ndim != 2 or fa.shape[0] != self.n_dofs:
            raise SolverError(f"f must have shape ({self.n_dofs},) or ({self.n_dofs}, r), got {np.shape(f)}")
        if not np.isfinite(fa).all():
            raise SolverError("f contains NaN or inf; check the load assembly")
        n, nt6 = self.n_dofs, 6 * len(self._ties)
        g, gt = self._prescribed(fixed_values, tie_values)
        loads = self._tie_loads(tie_loads)
        tie_free_mask = np.zeros(nt6, dtype=bool)
        tie_free_mask[self._tie_free] = True
        # lifting: b = T^T f - T^T K T z_P on the free entries
        lift, lift_t = np.empty(n), np.empty(nt6)
        self._apply_full(g, gt, lift, lift_t)
        us, reacs, its, res = [], [], [], []
        tie_out = {td.name: [] for td in self._ties}
        for j in range(fa.shape[1]):
            fz_t = np.zeros(nt6)
            self._reduce(fa[:, j], fz_t)
            b = np.concatenate([fa[:, j] - lift, fz_t + loads - lift_t])
            b[:n][self._held] = 0.0
            b[n:][~tie_free_mask] = 0.0
            x, it = self._cg(b)
            ax = np.empty_like(x)
            self._apply(x, ax)
            nb = float(np.linalg.norm(b))
            res.append(float(np.linalg.norm(ax - b) / nb) if nb > 0 else 0.0)
            its.append(it)
            u = x[:n] + g
            zt = x[n:] + np.where(tie_free_mask, 0.0, gt)
            self._expand(u, zt)
            ku = np.empty(n)
            _voxel.matvec(self.grid.cells, self._fine.layer_ptr, self.young, self.khat.reshape(-1), u, ku, self._fine.nt)
            reac = ku - fa[:, j]
            rt = np.zeros(nt6)
            self._reduce(reac, rt)
            for k, td in enumerate(self._ties):
                tie_out[td.name].append((zt[6 * k:6 * k + 6], rt[6 * k:6 * k + 6]))
            us.append(u)
            reacs.append(reac)
        u = us[0] if one else np.stack(us, axis=1)
        reac = reacs[0] if one else np.stack(reacs, axis=1)
        ties = {}
        for name, vals in tie_out.items():
            z = np.stack([v[0] for v in vals], axis=1)
            rr = np.stack([v[1] for v in vals], axis=1)
            sq = (lambda a: a[:, 0].copy()) if one else (lambda a: a.copy())
            ties[name] = TieResult(name, sq(z[:3]), sq(z[3:]), sq(rr[:3]), sq(rr[3:]))
        report = SolveReport(self.method, int(max(its)), float(max(res)), self.setup_seconds,
                             time.perf_counter() - t0, int(self.memory_estimate_bytes), self.n_dofs, self.n_free,
                             fa.shape[1], len(self._ties), 0)
        log.info("%s", report)
        return Solution(u, reac, report, ties)


# ============================================================================ input checks
def _union_roots(n: int, pairs) -> np.ndarray:
    """(n,) representative of each item after joining the ``pairs`` (union-find)."""
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    for a, b in pairs:
        parent[find(int(a))] = find(int(b))
    return np.array([find(a) for a in range(n)], dtype=np.int64)



def _check_young(young, m: int, order: np.ndarray | None) -> np.ndarray:
    arr = np.asarray(young)
    if arr.dtype.kind not in "fiu":
        raise MaterialError(f"young must be real Young's moduli in MPa, got an array of dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(m, float(arr))
    elif arr.shape != (m,):
        raise MaterialError(f"young has shape {arr.shape}; expected ({m},) per element (one modulus per voxel)")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = np.ascontiguousarray(arr if order is None else arr[order], dtype=dtype)
    ok = np.isfinite(arr) & (arr > 0)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        e = int(bad[0] if order is None else order[bad[0]])
        raise MaterialError(f"young must be finite and > 0 MPa everywhere; {bad.size} elements violate this, e.g. "
                            f"element {e} has {float(arr[bad[0]])!r} (apply a modulus floor, e.g. 1 MPa)")
    return arr


__all__ = ["VoxelGrid", "VoxelSolver", "is_voxel_mesh", "VoxelMultigrid", "unit_template", "matvec_numpy", "diagonal_numpy",
           "prolong_numpy", "restrict_numpy", "chebyshev_step_numpy"]
