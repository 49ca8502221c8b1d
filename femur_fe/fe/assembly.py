"""Global stiffness assembly for isotropic linear elasticity (compiled, parallel, deterministic).

DOFs are interleaved (``dof = 3*node + component``). With a constant Poisson ratio the
element matrix is ``K_e = E_e * K̂_e`` (or ``sum_q E_q K̂_q`` with per-quadrature-point
moduli), so the geometry is kept apart from the modulus: :class:`StiffnessAssembler`
builds the sparsity pattern and a compact scatter map once, and every
:meth:`StiffnessAssembler.assemble` only recomputes values.

How the kernels stay deterministic: the assembly loops in parallel over *node rows*; the
thread owning node i sums the contributions of the elements around i (in increasing
element order) into the rows of i only, so no two threads touch the same entry and the
summation order never depends on the number of threads. The element matrices are not
stored (1.9M tets would need 2.2 GB): each row block is recomputed on the fly from the
node coordinates (closed-form gradients for tet4, precomputed reference gradients at the
quadrature points for tet10/hex8). Meshes of identical, translated elements (voxel grids)
use one precomputed unit-modulus element matrix instead.
"""
from __future__ import annotations

import logging
import numbers
import time

import numpy as np
import scipy.sparse as sp

from ..errors import FemurFeError, MaterialError, MeshError
from . import _kernels
from .elements import NODES_PER_CELL, quadrature, shape_gradients
from .mesh import Mesh
from .parallel import effective_n_threads

log = logging.getLogger(__name__)

_INT32_MAX = np.iinfo(np.int32).max
_MODES = {"tetra": _kernels.MODE_TET4, "tetra10": _kernels.MODE_ISO, "hexahedron": _kernels.MODE_ISO}
_NO_TEMPLATE = np.zeros((1, 1, 1))
_NO_GEOMETRY = np.zeros((1, 1, 1, 1))
#: cache scaled element gradients when they take at most this fraction of the CSR matrix
_CACHE_FRACTION = 0.6


# ----------------------------------------------------------------------------- argument checks
def check_mesh(mesh, name: str = "mesh") -> Mesh:
    """Check that ``mesh`` is a usable :class:`Mesh` for the compiled kernels; return it."""
    if not isinstance(mesh, Mesh):
        raise MeshError(f"{name} must be a femur_fe.Mesh, got {type(mesh).__name__} "
                        "(build one with femur_fe.Mesh(points, cells, cell_type) or femur_fe.read_mesh)")
    if mesh.cell_type not in _MODES:
        raise MeshError(f"{name}: unsupported cell type {mesh.cell_type!r}; expected one of "
                        f"{', '.join(_MODES)}")
    cells, points = mesh.cells, mesh.points
    k = NODES_PER_CELL[mesh.cell_type]
    if cells.ndim != 2 or cells.shape[1] != k or cells.dtype != np.int64 or not cells.flags.c_contiguous:
        raise MeshError(f"{name}.cells must be a C-contiguous int64 array of shape (m, {k}), got "
                        f"{cells.dtype} {cells.shape}; rebuild the Mesh instead of editing its arrays")
    if points.ndim != 2 or points.shape[1] != 3 or points.dtype != np.float64 or not points.flags.c_contiguous:
        raise MeshError(f"{name}.points must be a C-contiguous float64 array of shape (n, 3), got "
                        f"{points.dtype} {points.shape}; rebuild the Mesh instead of editing its arrays")
    if len(cells) == 0:
        raise MeshError(f"{name} has no cells; nothing to assemble (check the mesh file or the cell type)")
    if len(cells) > _INT32_MAX or len(points) > _INT32_MAX:
        raise MeshError(f"{name} has {len(cells)} cells and {len(points)} points; femur_fe supports "
                        f"at most {_INT32_MAX} of each")
    lo, hi = int(cells.min()), int(cells.max())
    if lo < 0 or hi >= len(points):
        raise MeshError(f"{name}.cells reference node ids in [{lo}, {hi}] but there are {len(points)} "
                        "points; rebuild the Mesh (its arrays were modified after validation)")
    if not np.isfinite(points).all():
        bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
        raise MeshError(f"{name}.points has {len(bad)} nodes with non-finite coordinates "
                        f"(e.g. {bad[:5].tolist()}); fix them in the mesh source")
    return mesh


def check_poisson(poisson, name: str = "poisson") -> float:
    """Return ``poisson`` as a float if it is a real number in (-1, 0.5), else raise MaterialError."""
    if isinstance(poisson, bool) or not isinstance(poisson, numbers.Real):
        arr = np.asarray(poisson)
        if arr.ndim != 0 or arr.dtype.kind not in "fiu":
            raise MaterialError(f"{name} must be a real number in (-1, 0.5), got {poisson!r}")
        poisson = arr.item()
    nu = float(poisson)
    if not (-1.0 < nu < 0.5):
        raise MaterialError(f"{name} must lie strictly between -1 and 0.5 for a stable isotropic "
                            f"material, got {nu!r} (bone is typically 0.3)")
    return nu


def check_young(young, mesh: Mesh, name: str = "young", *, per_qp: bool = True) -> np.ndarray:
    """Check Young's moduli (MPa) for ``mesh``; return a C-contiguous float64 (m, 1) or (m, q) array.

    Accepted: a positive scalar (homogeneous), (m,) per element, or (m, q) per quadrature point
    of :func:`femur_fe.fe.elements.quadrature` (``per_qp``), where (m, 1) also means per element.
    """
    m = mesh.n_cells
    q = len(quadrature(mesh.cell_type).weights)
    arr = np.asarray(young)
    if arr.dtype.kind not in "fiu":
        raise MaterialError(f"{name} must be real Young's moduli in MPa, got an array of dtype {arr.dtype}")
    shapes = f"({m},) per element" + (f" or ({m}, {q}) per quadrature point" if per_qp else "")
    if arr.ndim == 0:
        arr = np.full((m, 1), float(arr))
    elif arr.ndim == 1:
        if arr.shape[0] != m:
            raise MaterialError(f"{name} has length {arr.shape[0]} but the mesh has {m} cells; "
                                f"expected {shapes}")
        arr = arr.reshape(m, 1)
    elif arr.ndim == 2 and arr.shape[0] == m and (arr.shape[1] == 1 or (per_qp and arr.shape[1] == q)):
        pass
    else:
        raise MaterialError(f"{name} has shape {arr.shape}; expected {shapes} "
                            f"for {mesh.cell_type!r} cells")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    ok = np.isfinite(arr) & (arr > 0)
    if not ok.all():
        bad = np.flatnonzero(~ok.all(axis=1))
        raise MaterialError(
            f"{name} must be finite and > 0 MPa everywhere; {len(bad)} cells violate this, e.g. cell "
            f"{bad[0]} has {arr[bad[0]].tolist()} (apply a modulus floor, e.g. 1 MPa, to empty voxels)")
    return arr


def unit_lame(poisson: float) -> tuple[float, float]:
    """Lame constants (lambda, mu) of a unit Young's modulus, MPa/MPa."""
    return poisson / ((1.0 + poisson) * (1.0 - 2.0 * poisson)), 1.0 / (2.0 * (1.0 + poisson))


def _raise_bad_elements(bad: np.ndarray, what: str) -> None:
    ids = np.flatnonzero(bad)
    raise MeshError(f"{len(ids)} cells have a non-positive or non-finite Jacobian determinant "
                    f"({what}), e.g. {ids[:10].tolist()}; fix their node order (mesh.validate() lists "
                    "inverted and degenerate cells) or re-mesh")


def _rule(cell_type: str) -> tuple[np.ndarray, np.ndarray]:
    rule = quadrature(cell_type)
    dn = np.ascontiguousarray(shape_gradients(cell_type, rule.points), dtype=np.float64)
    return dn, np.ascontiguousarray(rule.weights, dtype=np.float64)


# ----------------------------------------------------------------------------- element matrices
def element_stiffness(mesh: Mesh, young=None, poisson: float = 0.3, *,
                      n_threads: int | None = None) -> np.ndarray:
    """Element stiffness matrices (m, 3k, 3k) in N/mm, interleaved local DOFs (3*a + c).

    Parameters
    ----------
    mesh : Mesh (tet4, tet10 or hex8)
    young : None (unit modulus), scalar, (m,) or (m, q) Young's moduli in MPa
    poisson : Poisson ratio in (-1, 0.5)
    n_threads : threads (None = all cores)
    """
    check_mesh(mesh)
    nu = check_poisson(poisson)
    e = check_young(1.0 if young is None else young, mesh)
    nt = effective_n_threads(n_threads)
    lam, mu = unit_lame(nu)
    dn, wq = _rule(mesh.cell_type)
    k = mesh.nodes_per_cell
    out = np.empty((mesh.n_cells, 3 * k, 3 * k))
    bad = np.zeros(mesh.n_cells, dtype=np.int8)
    _kernels.element_matrices(_MODES[mesh.cell_type], mesh.points, mesh.cells, dn, wq, e, lam, mu,
                              _NO_TEMPLATE, _NO_GEOMETRY, out, bad, nt)
    if bad.any():
        _raise_bad_elements(bad, "element_stiffness")
    return out


# ----------------------------------------------------------------------------- global assembly
class StiffnessAssembler:
    """Assemble the global stiffness of one mesh repeatedly with different moduli.

    The node-row CSR pattern (int32 where possible), the node->element incidence and a
    compact scatter map (one int32 per element node pair) are built once in the
    constructor; :meth:`assemble` only computes values. The assembler keeps a private
    copy of the node coordinates and cells, or, instead, the scaled shape-function
    gradients ``sqrt(w det J) dN/dX`` at the quadrature points when these take at most
    60% of the size of the assembled matrix in 3x3 blocks (otherwise they are recomputed at every
    assembly: closed form for tet4, precomputed reference gradients for tet10/hex8).
    Voxel meshes use one template element matrix.

    Parameters
    ----------
    mesh : Mesh (tet4, tet10 or hex8)
    poisson : Poisson ratio in (-1, 0.5), constant over the mesh
    n_threads : threads (None = all cores, negative counts back from all cores)
    cache_geometry : None (automatic, see above), True (always cache) or False (never)

    Attributes
    ----------
    n_dofs : number of DOFs (3 n)
    nnz : number of stored entries of the assembled matrix
    pattern_seconds : wall time spent building the pattern, s
    uses_template : True when all elements are translates of one (voxel fast path)
    caches_geometry : True when scaled element gradients are cached
    """

    def __init__(self, mesh: Mesh, poisson: float = 0.3, *, n_threads: int | None = None,
                 cache_geometry: bool | None = None) -> None:
        check_mesh(mesh)
        self.poisson = check_poisson(poisson)
        self.n_threads = effective_n_threads(n_threads)
        t0 = time.perf_counter()
        self.cell_type = mesh.cell_type
        self._points, self._cells = mesh.points, mesh.cells
        self._lam, self._mu = unit_lame(self.poisson)
        self._dn, self._wq = _rule(mesh.cell_type)
        self.n_points = mesh.n_points
        self.n_cells = mesh.n_cells
        self._templates: dict[int, np.ndarray] = {}
        self.uses_template = mesh.cell_type == "hexahedron" and self._all_translates()
        self._build_pattern()
        self._geometry = self._cache_geometry(cache_geometry)
        self._owns_geometry_arrays = self._geometry is None
        if self._owns_geometry_arrays:
            # the kernels read coordinates and cells at every assembly: keep private copies
            # so that later in-place edits of the mesh arrays cannot corrupt the assembly
            self._points, self._cells = self._points.copy(), self._cells.copy()
            self._points.flags.writeable = False
            self._cells.flags.writeable = False
        self.pattern_seconds = time.perf_counter() - t0
        log.debug("stiffness pattern: %d dofs, %d nonzeros, %.3f s%s", self.n_dofs, self.nnz,
                  self.pattern_seconds, " (voxel template)" if self.uses_template else "")

    # -------------------------------------------------------------- properties
    @property
    def caches_geometry(self) -> bool:
        return self._geometry is not None

    @property
    def n_dofs(self) -> int:
        return 3 * self.n_points

    @property
    def nnz(self) -> int:
        return 9 * int(self._bptr[-1])

    @property
    def index_dtype(self) -> type:
        """Integer type of the CSR ``indices``/``indptr`` (int32 unless nnz >= 2**31)."""
        return np.int32 if self.nnz <= _INT32_MAX else np.int64

    @property
    def pattern_nbytes(self) -> int:
        """Bytes held by the cached pattern, scatter map and geometry copy."""
        arrs = [self._ptr, self._elem, self._loc, self._bptr, self._bcols, self._bmap]
        arrs += list(self._templates.values())
        if self._owns_geometry_arrays:
            arrs += [self._points, self._cells]
        if self._geometry is not None:
            arrs.append(self._geometry)
        return int(sum(a.nbytes for a in arrs))

    # -------------------------------------------------------------- construction
    def _all_translates(self) -> bool:
        pts, cells = self._points, self._cells
        x0 = pts[cells[0]]
        size = float(np.ptp(x0, axis=0).max())
        tol = 64 * np.finfo(float).eps * float(np.abs(pts).max()) + 1e-12 * size
        if size <= 0:
            return False
        if not _kernels.translates_of_first(pts, cells, tol):
            return False
        det = np.linalg.det(np.einsum("qka,kb->qab", self._dn, x0))
        return bool(np.all(det > 0))

    def _build_pattern(self) -> None:
        cells, n = self._cells, self.n_points
        m, k = cells.shape
        nt = max(1, min(self.n_threads, 8))  # per-thread scratch is 8 bytes per node
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(cells.ravel(), minlength=n), out=ptr[1:])
        elem = np.empty(m * k, dtype=np.int32)
        loc = np.empty(m * k, dtype=np.int8)
        _kernels.node_incidence(cells, ptr, elem, loc)
        marks = np.full((nt, n), -1, dtype=np.int32)
        deg = np.empty(n, dtype=np.int64)
        _kernels.count_neighbours(cells, ptr, elem, deg, marks, nt)
        bptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(deg, out=bptr[1:])
        del deg
        if bptr[-1] > _INT32_MAX:
            raise MeshError(f"the mesh has {bptr[-1]} node pairs, more than femur_fe's limit "
                            f"{_INT32_MAX}; split the model")
        bcols = np.empty(int(bptr[-1]), dtype=np.int32)
        bmap = np.empty((m * k, k), dtype=np.int32)
        marks.fill(-1)
        pos = np.empty((nt, n), dtype=np.int32)
        _kernels.fill_pattern(cells, ptr, elem, bptr, bcols, bmap, marks, pos, nt)
        del marks, pos
        self._ptr, self._elem, self._loc = ptr, elem, loc
        self._bptr, self._bcols, self._bmap = bptr, bcols, bmap

    def _cache_geometry(self, request: bool | None) -> np.ndarray | None:
        """Scaled gradients (m, q, k, 3) for MODE_CACHED, or None when not worth/allowed."""
        if request is not None and not isinstance(request, (bool, np.bool_)):
            raise MeshError(f"cache_geometry must be None, True or False, got {request!r}")
        if self.uses_template or request is False:
            return None
        m, k = self._cells.shape
        nq = len(self._wq)
        nbytes = m * nq * k * 3 * 8
        # the matrix as 3x3 blocks (8-byte values, one int32 index per block), the layout the
        # AMG solver keeps: a cache larger than 60 % of it is recomputed instead (general hex8)
        matrix_bytes = self.nnz * 8 + (self.nnz // 9) * 4
        if request is None and nbytes > _CACHE_FRACTION * matrix_bytes:
            return None
        geo = np.empty((m, nq, k, 3))
        bad = np.zeros(m, dtype=np.int8)
        _kernels.geometry_cache(_MODES[self.cell_type], self._points, self._cells, self._dn, self._wq,
                                geo, bad, self.n_threads)
        if bad.any():
            _raise_bad_elements(bad, "StiffnessAssembler")
        geo.flags.writeable = False
        return geo

    def _template(self, qe: int) -> np.ndarray:
        """Unit-modulus element matrices (qe, 3k, 3k) of element 0: one per quadrature point
        (qe = q) or the whole element (qe = 1)."""
        if qe not in self._templates:
            k = self._cells.shape[1]
            one = np.arange(k, dtype=np.int64)[None]
            pts = np.ascontiguousarray(self._points[self._cells[0]])
            out = np.empty((qe, 3 * k, 3 * k))
            bad = np.zeros(1, dtype=np.int8)
            for q in range(qe):
                e = np.ones((1, 1)) if qe == 1 else np.eye(qe)[q:q + 1].copy()
                _kernels.element_matrices(_MODES[self.cell_type], pts, one, self._dn, self._wq, e,
                                          self._lam, self._mu, _NO_TEMPLATE, _NO_GEOMETRY,
                                          out[q:q + 1], bad, 1)
            self._templates[qe] = out
        return self._templates[qe]

    def csr_structure(self) -> tuple[np.ndarray, np.ndarray]:
        """Fresh CSR ``indptr`` (3n+1) and ``indices`` (nnz) arrays of the interleaved pattern."""
        dt = self.index_dtype
        indptr = np.empty(self.n_dofs + 1, dtype=dt)
        indices = np.empty(self.nnz, dtype=dt)
        _kernels.csr_structure(self._bptr, self._bcols, indptr, indices, self.n_threads)
        return indptr, indices

    # -------------------------------------------------------------- assembly
    def assemble_data(self, young, out: np.ndarray | None = None, *, format: str = "csr") -> np.ndarray:
        """Values (nnz,) of the global matrix in the order of :meth:`csr_structure`
        (``format="bsr"``: the 3x3 blocks of :meth:`bsr_structure`, row-major, flattened).

        ``out``: optional float64 (nnz,) array to fill, e.g. ``K.data`` of a matrix returned by
        :meth:`assemble` (untouched since), for re-assembly without any allocation:
        ``asm.assemble_data(new_young, out=K.data)`` (``K.data.reshape(-1)`` for BSR).
        """
        if format not in ("csr", "bsr"):
            raise FemurFeError(f"format must be 'csr' or 'bsr', got {format!r}")
        e = check_young(young, _MeshShape(self))
        if out is None:
            out = np.empty(self.nnz)
        elif out.shape != (self.nnz,) or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise FemurFeError(f"out must be a C-contiguous float64 array of shape ({self.nnz},), "
                                f"got {out.dtype} {out.shape}")
        bad = np.zeros(self.n_cells, dtype=np.int8)
        mode, tmpl, geo = _MODES[self.cell_type], _NO_TEMPLATE, _NO_GEOMETRY
        if self.uses_template:
            mode, tmpl = _kernels.MODE_TEMPLATE, self._template(e.shape[1])
        elif self._geometry is not None:
            mode, geo = _kernels.MODE_CACHED, self._geometry
        _kernels.assemble_values(mode, self._points, self._cells, self._dn, self._wq, e, self._lam,
                                 self._mu, tmpl, geo, self._ptr, self._elem, self._loc, self._bptr,
                                 self._bmap, out, bad, self.n_threads, int(format == "bsr"))
        if bad.any():
            _raise_bad_elements(bad, "StiffnessAssembler.assemble")
        return out

    def bsr_structure(self) -> tuple[np.ndarray, np.ndarray]:
        """Fresh BSR ``indptr`` (n+1) and ``indices`` (nnz / 9) int32 arrays of the 3x3-block pattern."""
        if self._bptr[-1] > _INT32_MAX:
            raise MeshError("the node pattern is too large for int32 BSR indices; split the model")
        return self._bptr.astype(np.int32), self._bcols.copy()

    def assemble(self, young, *, format: str = "csr") -> sp.csr_matrix | sp.bsr_matrix:
        """Global stiffness (3n, 3n) in N/mm for Young's moduli ``young`` (MPa).

        ``young``: scalar, (m,) per element, or (m, q) per quadrature point.
        ``format``: ``"csr"`` or ``"bsr"`` (3x3 node blocks, the same values; 9 nnz / 8 bytes
        fewer index bytes than CSR and the layout :class:`femur_fe.LinearSolver` uses for AMG
        without a copy).
        """
        if format == "bsr":
            data = self.assemble_data(young, format="bsr")
            indptr, indices = self.bsr_structure()
            mat = sp.bsr_matrix((data.reshape(-1, 3, 3), indices, indptr), shape=(self.n_dofs, self.n_dofs),
                                copy=False)
            mat.has_sorted_indices = True
            return mat
        data = self.assemble_data(young, format=format)
        indptr, indices = self.csr_structure()
        mat = sp.csr_matrix((data, indices, indptr), shape=(self.n_dofs, self.n_dofs), copy=False)
        mat.has_sorted_indices = True
        mat.has_canonical_format = True
        return mat


class _MeshShape:
    """The bits of a Mesh that :func:`check_young` reads (cell count and type)."""

    def __init__(self, asm: StiffnessAssembler) -> None:
        self.n_cells = asm.n_cells
        self.cell_type = asm.cell_type


def assemble_stiffness(mesh: Mesh, young, poisson: float = 0.3, *,
                       n_threads: int | None = None) -> sp.csr_matrix:
    """Global stiffness matrix (3n, 3n) CSR in N/mm, symmetric, interleaved DOFs.

    Parameters
    ----------
    mesh : Mesh (tet4, tet10 or hex8)
    young : Young's moduli in MPa: (m,) per element or (m, q) per quadrature point
        (q = 1 tet4, 4 tet10, 8 hex8; rule :func:`femur_fe.fe.elements.quadrature`)
    poisson : Poisson ratio in (-1, 0.5)
    n_threads : threads (None = all cores); the result is bitwise identical for any count

    For repeated assembly on one mesh use :class:`StiffnessAssembler`.
    """
    check_mesh(mesh)
    e = check_young(young, mesh)  # fail before the pattern work is done
    return StiffnessAssembler(mesh, poisson, n_threads=n_threads).assemble(e)
