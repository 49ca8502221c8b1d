"""Sparse linear solvers for K u = f with Dirichlet DOFs and rigid ties.

Displacement DOFs are interleaved (``dof = 3 * node + component``); units mm, N, MPa.

:class:`LinearSolver` sets up once and solves many right-hand sides and many sets of
prescribed values:

1. rigid ties (:class:`femur_fe.fe.RigidTie`) are eliminated master-slave, ``u = T z``;
2. Dirichlet DOFs are eliminated (not penalised): ``K_FF z_F = f_F - K_FP z_P``;
3. ``K_FF`` is factorised (CHOLMOD if scikit-sparse is importable, else SciPy SuperLU) or
   solved by conjugate gradients preconditioned by smoothed-aggregation multigrid
   (:mod:`femur_fe.fe.amg`) whose near-null space is the six rigid-body modes; the AMG path
   keeps the reduced matrix whole (3x3 blocks, no copy of a BSR ``K`` without ties) and masks
   the prescribed DOFs instead of cutting them out.

Before anything is factorised the constraints are checked for rigid-body modes left free
in each connected part of the mesh (:class:`femur_fe.errors.UnderConstrainedError`), and nodes in
no element (orphans) are fixed automatically with a warning.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import ConvergenceError, LoadCaseError, SolverError, UnderConstrainedError
from . import _amg
from .amg import SmoothedAggregation, pcg
from .constraints import (
    TIE_DOF_NAMES,
    RigidTie,
    TieReduction,
    TieResult,
    _check_load_on_free,
    _parse_tie_dofs,
    describe_free_modes,
    free_rigid_modes,
    rigid_body_modes,
    tie_overrides,
)
from .mesh import Mesh
from .topology import connected_components

log = logging.getLogger(__name__)

METHODS = ("auto", "direct", "amg", "direct-superlu", "direct-cholmod")

#: ``method="auto"`` uses a direct solver up to this many free DOFs. Fill, and so the cost of a
#: factorisation, depends on the shape, which the size alone does not tell (quiet machine,
#: ``OPENBLAS_NUM_THREADS=1``): the bundled femur in a sideways fall (73,605 free DOFs, elongated)
#: factorises with SciPy SuperLU in 7.3 s / 566 MB, after which every further right-hand side or
#: density change costs ~1 s, while AMG-CG needs 83 iterations there; a compact tet4 box of
#: 69,375 DOFs takes SuperLU 42.7 s / 3.1 GB (AMG-CG 2.3 s) and one of 144,384 DOFs 209 s / 9.5 GB
#: (CHOLMOD 91 s / 1.7 GB, AMG-CG 4.5 s) (``benchmarks/bench_solvers.py``). 80k bounds the
#: worst case near a minute and keeps clinical-resolution bones direct.
AUTO_DIRECT_MAX_FREE_SUPERLU = 80_000
#: ... or this many with CHOLMOD.
AUTO_DIRECT_MAX_FREE_CHOLMOD = 80_000
#: ... and only if the estimated factor fits in this fraction of the available memory.
AUTO_DIRECT_MEMORY_FRACTION = 0.5

DEFAULT_MAXITER = 2000
#: ``preconditioner=`` an AMG solver: CG first uses the base hierarchy as it is, and rebuilds it
#: (re-smoothed prolongators and Galerkin products on the base's aggregates) for the new
#: moduli when that takes more than this many times the base's last iteration count
REUSE_ITERATION_FACTOR = 1.5
#: ... but never below this many iterations
REUSE_MIN_ITERATIONS = 20


def _have_cholmod() -> bool:
    try:
        from sksparse.cholmod import cholesky  # noqa: F401
    except Exception:  # ImportError or a broken binary
        return False
    return True


# ---------------------------------------------------------------------- results
@dataclass
class SolveReport:
    """How a solve went. ``str()`` gives one line; :meth:`as_dict` is JSON-ready.

    ``iterations`` and ``residual`` are the worst over the right-hand sides;
    ``residual`` is ``||K_FF z_F - b_F|| / ||b_F||`` on the free DOFs (0 when b_F = 0).
    ``memory_estimate_bytes`` is the size of the factor or of the AMG hierarchy plus the
    reduced matrix.
    """

    method: str
    iterations: int
    residual: float
    setup_seconds: float
    solve_seconds: float
    memory_estimate_bytes: int
    n_dofs: int
    n_free: int
    n_rhs: int = 1
    n_ties: int = 0
    n_orphan_nodes: int = 0

    def __str__(self) -> str:
        # every method but a direct factorisation iterates (amg-cg, amg-reuse, cg-reuse, voxel-mg-cg)
        its = "" if self.method.startswith("direct") else f"{self.iterations} iterations, "
        rhs = f" x {self.n_rhs} load cases" if self.n_rhs > 1 else ""
        return (f"{self.method}: {self.n_dofs} DOFs ({self.n_free} free){rhs}, {its}"
                f"relative residual {self.residual:.2e}, setup {self.setup_seconds:.2f} s, "
                f"solve {self.solve_seconds:.2f} s, ~{self.memory_estimate_bytes / 2**20:.0f} MB")

    def as_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in vars(self).items()}


@dataclass
class Solution:
    """Displacements and reactions of a linear solve.

    Attributes
    ----------
    u : (3n,) displacements, mm (``(3n, r)`` for r load cases).
    reactions : (3n,) ``K u - f``, N: the forces the constraints (fixed DOFs, ties) apply
        to the mesh; zero (to round-off) at unconstrained DOFs.
    report : :class:`SolveReport`.
    ties : name -> :class:`femur_fe.fe.constraints.TieResult` (reference displacement,
        rotation, force and moment of each :class:`femur_fe.fe.RigidTie`).
    """

    u: np.ndarray
    reactions: np.ndarray
    report: SolveReport
    ties: dict[str, TieResult] = field(default_factory=dict)

    @property
    def displacements(self) -> np.ndarray:
        """Node displacements (n, 3) mm (``(n, 3, r)`` for r load cases)."""
        return self.u.reshape((-1, 3) + self.u.shape[1:])

    def reaction_force(self, node_ids) -> np.ndarray:
        """Sum of the reactions over ``node_ids`` (N): (3,), or (r, 3) for r load cases."""
        ids = np.asarray(node_ids, dtype=np.int64).ravel()
        n = self.reactions.shape[0] // 3
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise SolverError(f"reaction_force: node ids must be in [0, {n}), got [{ids.min()}, {ids.max()}]")
        r = self.reactions.reshape((n, 3) + self.reactions.shape[1:])[ids].sum(axis=0)
        return r if r.ndim == 1 else r.T

    def as_dict(self) -> dict:
        """JSON-ready summary (no arrays of node values)."""
        return {"report": self.report.as_dict(), "ties": {k: t.as_dict() for k, t in self.ties.items()}}


# ---------------------------------------------------------------------- input checks
def _as_csr(k) -> sp.csr_matrix | sp.bsr_matrix:
    """``k`` as CSR, or as it is when it is a 3x3-block BSR matrix (no copy)."""
    if not sp.issparse(k):
        raise SolverError(f"K must be a SciPy sparse matrix (e.g. from femur_fe.fe.assemble_stiffness), got "
                          f"{type(k).__name__}")
    if not (k.format == "bsr" and k.blocksize == (3, 3)):
        k = k.tocsr()
    if k.shape[0] != k.shape[1] or k.shape[0] % 3:
        raise SolverError(f"K must be square with 3 DOFs per node (interleaved), got shape {k.shape}")
    if not np.issubdtype(k.dtype, np.floating):
        k = k.astype(np.float64)
    return k


def _fixed_mask(fixed_dofs, n_dofs: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask (n_dofs,), the fixed DOF ids in the order given)."""
    arr = np.asarray(fixed_dofs if fixed_dofs is not None else [], dtype=None)
    if arr.dtype == bool:
        if arr.shape != (n_dofs,):
            raise SolverError(f"fixed_dofs as a boolean mask must have shape ({n_dofs},), got {arr.shape}")
        return arr.copy(), np.flatnonzero(arr)
    arr = arr.ravel()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise SolverError("fixed_dofs must be integer DOF ids (3 * node + component) or a boolean mask")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_dofs):
        raise SolverError(f"fixed_dofs must be in [0, {n_dofs}) (dof = 3 * node + component, 0-based), "
                          f"got [{arr.min()}, {arr.max()}]")
    if len(np.unique(arr)) != len(arr):
        raise SolverError("fixed_dofs contains duplicates; give each constrained DOF once")
    mask = np.zeros(n_dofs, dtype=bool)
    mask[arr] = True
    return mask, arr


def _node_components(k: sp.csr_matrix, mesh: Mesh | None) -> np.ndarray:
    """Component label per node (orphans get their own labels)."""
    if mesh is not None:
        return connected_components(mesh)[1]
    from scipy.sparse.csgraph import connected_components as cc

    if k.format == "bsr":  # node-node pattern: the block pattern
        nb = k.shape[0] // 3
        kxx = sp.csr_matrix((np.ones(int(k.indptr[-1]), dtype=np.int8), k.indices[:k.indptr[-1]], k.indptr),
                            shape=(nb, nb))
    else:
        kxx = k[0::3, 0::3]  # node-node pattern through the x-x blocks (structural nonzeros)
    return cc(kxx, directed=False)[1]


# ---------------------------------------------------------------------- the solver
class LinearSolver:
    """Set up once, then solve ``K u = f`` for many loads and prescribed values.

    Parameters
    ----------
    K : (3n, 3n) sparse symmetric stiffness, N/mm, interleaved DOFs.
    fixed_dofs : DOF ids ``3 * node + component`` (or a (3n,) boolean mask) whose
        displacement is prescribed (values given to :meth:`solve`, default 0).
    points : (n, 3) node coordinates in mm, or the :class:`femur_fe.Mesh` (then its
        connectivity is used to find the connected parts). Needed for ``method="amg"``,
        for ties and for the rotation part of the under-constraint check.
    method : ``"direct"``, ``"amg"`` or ``"auto"`` (``"direct-superlu"`` and
        ``"direct-cholmod"`` force one direct back end). The auto rule: direct if the number of
        free DOFs is at most ``AUTO_DIRECT_MAX_FREE_CHOLMOD`` (80k) with CHOLMOD or
        ``AUTO_DIRECT_MAX_FREE_SUPERLU`` (80k) with SuperLU, *and* the estimated factor
        (``nnz(K_FF) * 15 * n_free**(1/3) / 10`` values with indices, the supernodal fill
        of 3-D meshes grows about as n^(1/3)) fits in half the available memory
        (psutil); otherwise AMG-CG.
    rtol : relative residual target of CG, ``||b - A x|| <= rtol ||b||``.
    maxiter : CG iteration limit (default 2000).
    constraints : list of :class:`femur_fe.fe.RigidTie`.
    preconditioner : another :class:`LinearSolver` set up for the same constraints (same
        fixed DOFs and ties) on the same mesh, e.g. the same bone before a density change.
        A factorisation is reused as the preconditioner of CG on ``K`` (method ``"cg-reuse"``):
        no new set-up, and few iterations when the moduli changed moderately. An AMG set-up
        (method ``"amg-reuse"``) is first used as it is; when CG on ``K`` needs more than
        ``REUSE_ITERATION_FACTOR`` (1.5) times the base's last iteration count, a hierarchy for
        ``K`` is built on the base's aggregates and tentative prolongators (geometry only):
        only the prolongator smoothing and the Galerkin products are recomputed, and CG goes
        on from where it stopped. The answer meets ``rtol`` on ``K`` itself either way.

    Raises
    ------
    UnderConstrainedError
        if a rigid-body mode of some connected part (or of a tie) is left free.
    SolverError
        on bad input, a singular matrix, or CG that does not converge.

    Examples
    --------
    >>> solver = LinearSolver(K, fixed_dofs, points=mesh.points, method="amg")  # doctest: +SKIP
    >>> sol = solver.solve(f)                     # first load case               # doctest: +SKIP
    >>> sol2 = solver.solve(f2, fixed_values=g)   # no new setup                  # doctest: +SKIP
    >>> print(sol.report); sol.reaction_force(bottom_nodes)                       # doctest: +SKIP
    """

    def __init__(self, K, fixed_dofs, *, points=None, method: str = "auto", rtol: float = 1e-8,
                 maxiter: int | None = None, constraints: Sequence[RigidTie] | None = None,
                 preconditioner: "LinearSolver | None" = None):
        t0 = time.perf_counter()
        if method not in METHODS:
            raise SolverError(f"method must be one of {METHODS}, got {method!r}")
        if not (0 < float(rtol) < 1):
            raise SolverError(f"rtol must be in (0, 1), got {rtol!r}")
        self.K = _as_csr(K)
        self.n_dofs = self.K.shape[0]
        n_nodes = self.n_dofs // 3
        mesh = points if isinstance(points, Mesh) else None
        pts = mesh.points if mesh is not None else (None if points is None else np.asarray(points, dtype=np.float64))
        if pts is not None and pts.shape != (n_nodes, 3):
            raise SolverError(f"points must have shape ({n_nodes}, 3) to match K {self.K.shape}, got {pts.shape}")
        self.points = pts
        self.rtol = float(rtol)
        self.maxiter = int(maxiter) if maxiter is not None else DEFAULT_MAXITER
        ties = list(constraints or [])
        for c in ties:
            if not isinstance(c, RigidTie):
                raise SolverError(f"constraints must be RigidTie objects, got {type(c).__name__}")
        fixed, self._fixed_given = _fixed_mask(fixed_dofs, self.n_dofs)
        self.red = TieReduction(n_nodes, pts, ties)
        self.tie_names = self.red.names
        self.last_iterations = 0
        self.last_iteration_counts: list[int] = []

        slave_nodes = np.flatnonzero(self.red.slave_of >= 0)
        clash = slave_nodes[fixed.reshape(-1, 3)[slave_nodes].any(axis=1)]
        if clash.size:
            k = int(self.red.slave_of[clash[0]])
            raise LoadCaseError(
                f"{clash.size} node(s) of RigidTie {self.tie_names[k]!r} also have fixed DOFs (e.g. node "
                f"{clash[0]}); a tied node moves with its tie: prescribe the tie's reference DOFs instead, "
                "or remove those nodes from the tie"
            )

        # orphans: no stiffness at all (zero diagonal in all three components)
        diag = self.K.diagonal().reshape(-1, 3)
        orphan = np.flatnonzero((diag == 0).all(axis=1))
        orphan = orphan[self.red.slave_of[orphan] < 0]
        self.orphan_nodes = orphan
        self._orphan_dofs = np.zeros(self.n_dofs, dtype=bool)
        if orphan.size:
            dofs = (3 * orphan[:, None] + np.arange(3)).ravel()
            self._orphan_dofs[dofs] = ~fixed[dofs]
            fixed[dofs] = True
            log.warning("%d orphan node(s) (in no element, no stiffness), e.g. %s: their displacement is "
                        "fixed at 0; remove them with femur_fe.fe.remove_orphan_nodes to silence this",
                        orphan.size, orphan[:5].tolist())
        self.fixed_mask = fixed

        if not self._checked_by(preconditioner):
            self._check_constraints(mesh)

        kz = self.red.reduce_matrix(self.K)
        fz = self.red.fixed_z(fixed)
        self._free = np.flatnonzero(~fz)
        self._presc = np.flatnonzero(fz)
        if self._free.size == 0:
            raise SolverError("every DOF is prescribed: nothing to solve (check fixed_dofs)")
        self.n_free = int(self._free.size)
        self._nnz_free = _free_rows_nnz(kz, self._free)
        amg_base = preconditioner is not None and getattr(preconditioner, "amg", None) is not None
        if amg_base or (preconditioner is None and self._choose(method) == "amg-cg"):
            # AMG-CG works on the whole reduced matrix (3x3 blocks, no copy when K is BSR and
            # there are no ties): the prescribed DOFs are masked, not cut out
            self._setup_amg(kz, fz, preconditioner if amg_base else None)
            self.setup_seconds = time.perf_counter() - t0
            log.info("solver set up: %s, %d DOFs (%d free), %.2f s", self.method, self.n_dofs, self.n_free,
                     self.setup_seconds)
            return
        self.amg = None
        if sp.isspmatrix_bsr(kz):
            kz = kz.tocsr()
        rows = kz[self._free]
        self.A = rows[:, self._free].tocsr()
        self._kfp = rows[:, self._presc].tocsr()
        del rows, kz
        if preconditioner is not None:
            self._reuse(preconditioner)
        else:
            self.method = self._choose(method)
            self._setup()
        self.setup_seconds = time.perf_counter() - t0
        log.info("solver set up: %s, %d DOFs (%d free), %.2f s", self.method, self.n_dofs, self.n_free,
                 self.setup_seconds)

    def _setup_amg(self, kz, pinned: np.ndarray, base: "LinearSolver | None") -> None:
        """Smoothed-aggregation hierarchy (:mod:`femur_fe.fe.amg`) on the masked reduced matrix."""

        if self.points is None:
            raise SolverError("method='amg' needs node coordinates for the rigid-body near-null space: "
                              "pass points=mesh.points (or the Mesh)")
        if kz.shape[0] % 3:
            raise SolverError(f"the reduced matrix has {kz.shape[0]} DOFs, not 3 per node")
        if not (sp.isspmatrix_bsr(kz) and kz.blocksize == (3, 3)):
            kz = kz.tobsr(blocksize=(3, 3))
        if kz.dtype != np.float64:
            kz = kz.astype(np.float64)
        self._kz = kz
        self._pinned = pinned
        self.A = None
        if base is not None:
            if base.n_free != self.n_free or not np.array_equal(base._free, self._free) \
                    or base.tie_names != self.tie_names:
                raise SolverError("preconditioner was set up for other constraints (free DOFs or ties differ); "
                                  "it can only be reused for the same fixed DOFs and ties")
            # the base hierarchy first; rebuilt on the aggregation of the base (geometry only)
            # when CG with it needs more than REUSE_ITERATION_FACTOR x the base's iterations
            self.amg = base.amg
            self._refresh_from = base
            self.method = "amg-reuse"
        else:
            self.amg = SmoothedAggregation(kz, self.red.near_null_space(self.points), pinned)
            self._refresh_from = None
            self.method = "amg-cg"
        self.memory_estimate_bytes = int(self.amg.nbytes + 8 * self.n_free * 6)

    def _amg_matvec(self, x: np.ndarray) -> np.ndarray:
        """Masked reduced matrix times x (prescribed rows zero)."""

        k = self._kz
        y = np.empty(k.shape[0])
        _amg.bsr_matvec(k.indptr, k.indices, k.data, np.ascontiguousarray(x, dtype=np.float64), y, False,
                        self.amg.n_threads)
        y[self._pinned] = 0.0
        return y

    def free_preconditioner(self) -> spla.LinearOperator:
        """The set-up (factor solve or one AMG V-cycle) as an operator on the free DOFs, in the
        order of the free DOFs of the reduced system (no ties: the unconstrained DOFs)."""
        n = self.n_free
        if self.amg is not None:
            nz = self._kz.shape[0]

            def mv(r):
                full = np.zeros(nz)
                full[self._free] = np.asarray(r).ravel()
                return self.amg(full)[self._free]

            return spla.LinearOperator((n, n), matvec=mv, dtype=float)
        fn = self._solve_fn if self.method.startswith("direct") else self._precond.matvec
        return spla.LinearOperator((n, n), matvec=lambda v: np.asarray(fn(v)).reshape(-1), dtype=float)

    def _reuse(self, other: "LinearSolver") -> None:
        """Use ``other``'s set-up as the CG preconditioner for this matrix."""
        if not isinstance(other, LinearSolver):
            raise SolverError(f"preconditioner must be a LinearSolver, got {type(other).__name__}")
        if other.n_free != self.n_free or not np.array_equal(other._free, self._free) \
                or other.tie_names != self.tie_names:
            raise SolverError("preconditioner was set up for other constraints (free DOFs or ties differ); "
                              "it can only be reused for the same fixed DOFs and ties")
        self._precond = other.free_preconditioner()
        self.method = "cg-reuse"
        self.memory_estimate_bytes = int(getattr(other, "memory_estimate_bytes", 0))

    # ------------------------------------------------------------------ constraint check
    def _checked_by(self, base) -> bool:
        """True when ``base`` (a solver set up before) passed the constraint check for the very same
        input: same fixed DOFs (orphans included), no ties, the same node coordinates and the same
        matrix pattern. The check depends on nothing else, so new moduli need no second check."""
        if not isinstance(base, LinearSolver) or self.red.n_ties or base.red.n_ties:
            return False
        if self.points is None or base.points is None or not np.array_equal(base.fixed_mask, self.fixed_mask):
            return False
        k, kb = self.K, base.K
        if k.format != kb.format or (k.format == "bsr" and k.blocksize != kb.blocksize):
            return False
        return ((self.points is base.points or np.array_equal(self.points, base.points))
                and (k.indptr is kb.indptr or np.array_equal(k.indptr, kb.indptr))
                and (k.indices is kb.indices or np.array_equal(k.indices, kb.indices)))

    def _check_constraints(self, mesh: Mesh | None) -> None:
        """Raise UnderConstrainedError if any rigid-body mode of a part or a tie is free."""
        red = self.red
        pts = self.points
        # 1) each tie must itself be rigidly attached (>= 3 non-collinear nodes) unless its
        #    rotations are prescribed
        for k, tie in enumerate(red.ties):
            if pts is None:
                break
            tmat = red.T[:, red.tie_dof(k)]
            rows = tmat[np.unique((3 * tie.node_ids[:, None] + np.arange(3)).ravel())].toarray()
            rows = np.vstack([rows, np.eye(6)[tie.prescribed_mask]])
            scale = np.r_[1.0, 1.0, 1.0, np.full(3, max(np.ptp(pts[tie.node_ids], axis=0).max(), 1e-300))]
            s = np.linalg.svd(rows / scale, compute_uv=False)
            s = np.r_[s, np.zeros(6 - len(s))]
            if (s < 1e-8 * s[0]).any():
                raise UnderConstrainedError(
                    f"RigidTie {self.tie_names[k]!r} has {tie.node_ids.size} node(s) that are collinear or "
                    "coincident, so its rotation about that line does not move any node and is undetermined: "
                    "tie at least three non-collinear nodes, or prescribe its rotations (rx, ry, rz)"
                )
        # 2) rigid modes per group of connected parts (joined by ties)
        labels = _node_components(self.K, mesh)
        is_orphan = np.zeros(len(labels), dtype=bool)
        is_orphan[self.orphan_nodes] = True
        n_lab = int(labels.max()) + 1 if labels.size else 0
        parent = np.arange(n_lab)

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for tie in red.ties:
            labs = np.unique(labels[tie.node_ids])
            r0 = find(int(labs[0]))
            for lab in labs[1:]:
                parent[find(int(lab))] = r0
        group = np.array([find(a) for a in range(n_lab)], dtype=np.int64)
        node_group = group[labels]
        tie_group = [int(node_group[t.node_ids[0]]) for t in red.ties]
        fixed_dofs = np.flatnonzero(self.fixed_mask & ~self._orphan_dofs)
        fixed_group = node_group[fixed_dofs // 3]
        order = np.argsort(node_group, kind="stable")
        bounds = np.searchsorted(node_group[order], np.arange(n_lab + 1))
        forder = np.argsort(fixed_group, kind="stable")
        fbounds = np.searchsorted(fixed_group[forder], np.arange(n_lab + 1))
        problems = []
        for g in np.unique(node_group[~is_orphan] if (~is_orphan).any() else node_group):
            nodes = order[bounds[g]:bounds[g + 1]]
            nodes = nodes[~is_orphan[nodes]] if (~is_orphan[nodes]).any() else nodes
            gfixed = fixed_dofs[forder[fbounds[g]:fbounds[g + 1]]]
            gties = [(t.reference_point, t.prescribed_mask) for t, tg in zip(red.ties, tie_group) if tg == g]
            if pts is None:
                # translations only: a translation is restrained by a fixed DOF in that direction
                comps = set((gfixed % 3).tolist())
                for _, mask in gties:
                    comps |= set(np.flatnonzero(mask[:3]).tolist())
                free = [f"translation along {'xyz'[a]}" for a in range(3) if a not in comps]
                if free:
                    problems.append((g, nodes, free, None))
                continue
            null, center, length = free_rigid_modes(pts, nodes, gfixed, gties)
            if null.shape[1]:
                problems.append((g, nodes, describe_free_modes(null, center, length), center))
        if pts is None:
            log.info("no node coordinates given: only translations were checked for under-constraint "
                     "(pass points=mesh.points to also check rotations)")
        if problems:
            lines = []
            for g, nodes, names, center in problems[:5]:
                where = f" around ({center[0]:.4g}, {center[1]:.4g}, {center[2]:.4g}) mm" if center is not None else ""
                lines.append(f"part {g} ({nodes.size} nodes, e.g. node {nodes[0]}{where}): " + "; ".join(names))
            more = f" (and {len(problems) - 5} more parts)" if len(problems) > 5 else ""
            raise UnderConstrainedError(
                "the boundary conditions leave rigid-body modes free, the stiffness matrix is singular:\n  "
                + "\n  ".join(lines) + more
                + "\nFix: fix more DOFs of each part (e.g. all three components on three non-collinear nodes, "
                "or one face), prescribe the free reference DOFs of a RigidTie, or remove parts that are not "
                "connected to the supported bone (femur_fe.fe.topology.connected_components)."
            )

    # ------------------------------------------------------------------ set-up
    def _estimate_direct_bytes(self) -> int:
        # supernodal Cholesky fill of 3-D FE meshes grows ~ n^(1/3) (nested dissection:
        # nnz(L) ~ n^(4/3)); the constant 1.5 fits SuperLU/CHOLMOD on tet4 boxes (bench_solvers)
        fill = 1.5 * self.n_free ** (1.0 / 3.0)
        return int(self._nnz_free * fill * 12)

    def _choose(self, method: str) -> str:
        have_cholmod = _have_cholmod()
        if method == "direct-cholmod" and not have_cholmod:
            raise SolverError("method='direct-cholmod' needs scikit-sparse (pip install scikit-sparse, with "
                              "SuiteSparse installed); use method='direct' to fall back to SuperLU")
        if method in ("direct-superlu", "direct-cholmod"):
            return method
        if method == "direct":
            return "direct-cholmod" if have_cholmod else "direct-superlu"
        if method == "amg":
            return "amg-cg"
        if self.points is None:
            return "direct-cholmod" if have_cholmod else "direct-superlu"
        import psutil

        limit = AUTO_DIRECT_MAX_FREE_CHOLMOD if have_cholmod else AUTO_DIRECT_MAX_FREE_SUPERLU
        fits = self._estimate_direct_bytes() <= AUTO_DIRECT_MEMORY_FRACTION * psutil.virtual_memory().available
        if self.n_free <= limit and fits:
            return "direct-cholmod" if have_cholmod else "direct-superlu"
        return "amg-cg"

    def _setup(self) -> None:
        a = self.A
        if self.method == "direct-cholmod":
            from sksparse.cholmod import CholmodNotPositiveDefiniteError, cholesky

            try:
                self._factor = cholesky(a.tocsc())
            except CholmodNotPositiveDefiniteError as exc:
                raise SolverError(f"the reduced stiffness matrix is not positive definite ({exc}); check the "
                                  "material (E > 0, nu < 0.5), inverted elements and the constraints") from None
            self._solve_fn = self._factor
            self.memory_estimate_bytes = self._estimate_direct_bytes()
        elif self.method == "direct-superlu":
            try:
                lu = spla.splu(a.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                               options={"SymmetricMode": True})
            except RuntimeError as exc:  # "Factor is exactly singular"
                raise SolverError(f"the reduced stiffness matrix is singular ({exc}); check the constraints "
                                  "(rigid modes), zero Young's moduli and disconnected elements") from None
            self._factor = lu
            self._solve_fn = lu.solve
            self.memory_estimate_bytes = int((lu.L.nnz + lu.U.nnz) * 12 + a.data.nbytes + a.indices.nbytes)
        else:
            raise SolverError(f"unknown set-up method {self.method!r}")
        log.debug("set-up %s done", self.method)

    # ------------------------------------------------------------------ solve
    def _prescribed(self, fixed_values, r: int, tie_values) -> np.ndarray:
        """(n_presc, r) prescribed values in z order."""
        n_fixed_given = len(self._fixed_given)
        g = np.zeros((self.n_dofs, r))
        if fixed_values is not None:
            fv = np.asarray(fixed_values, dtype=np.float64)
            if fv.ndim == 1:
                fv = fv[:, None]
            if fv.ndim != 2 or fv.shape[1] not in (1, r):
                raise SolverError(f"fixed_values must have shape (3n,), ({n_fixed_given},) or with a second axis "
                                  f"of {r} load cases, got {np.shape(fixed_values)}")
            if fv.shape[0] == self.n_dofs:
                g[:] = fv
            elif fv.shape[0] == n_fixed_given:
                g[self._fixed_given] = fv
            else:
                raise SolverError(f"fixed_values must have length 3n = {self.n_dofs} (full vector) or "
                                  f"{n_fixed_given} (one per fixed DOF, in the order given), got {fv.shape[0]}")
            if not np.isfinite(g[self.fixed_mask]).all():
                raise SolverError("fixed_values contains NaN or inf at fixed DOFs")
        g[self._orphan_dofs] = 0.0
        red = self.red
        z = np.zeros((red.n_z, r))
        z[: red.n_master] = g[red.master_dofs]
        over = tie_overrides(self.tie_names, tie_values, "tie_values")
        for k, tie in enumerate(red.ties):
            vals = tie.prescribed_values.copy()
            if k in over:
                new = _parse_tie_dofs(over[k], "tie_values", self.tie_names[k])
                for j, v in new.items():
                    if not tie.prescribed_mask[j]:
                        raise SolverError(
                            f"tie_values for {self.tie_names[k]!r} sets {TIE_DOF_NAMES[j]!r}, which is free in "
                            "this solver; declare it in RigidTie(prescribed=...) before setting up the solver"
                        )
                    vals[j] = v
            z[red.tie_dof(k)] = vals[:, None]
        return z[self._presc]

    def _tie_loads(self, tie_loads) -> np.ndarray:
        loads = np.zeros((self.red.n_ties, 6))
        over = tie_overrides(self.tie_names, tie_loads, "tie_loads")
        for k, tie in enumerate(self.red.ties):
            load = tie.load
            if k in over:
                load = np.asarray(over[k], dtype=np.float64).ravel()
                if load.shape != (6,) or not np.isfinite(load).all():
                    raise SolverError(f"tie_loads[{self.tie_names[k]!r}] must be 6 finite numbers "
                                      "(Fx, Fy, Fz in N, Mx, My, Mz in N mm)")
                _check_load_on_free(self.tie_names[k], {j: 0.0 for j in np.flatnonzero(tie.prescribed_mask)}, load)
            loads[k] = load
        return loads

    def _solve_free(self, b: np.ndarray, x0: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
        """Solve A x = b for (n_free, r) b; returns x and iterations per column. ``x0`` (n_free, r):
        start of CG (``cg-reuse``); a direct factorisation solves exactly and does not use it."""
        if self.method.startswith("direct"):
            x = self._solve_fn(b)
            return np.asarray(x).reshape(b.shape), [0] * b.shape[1]
        x = np.zeros_like(b)
        its = []
        for j in range(b.shape[1]):
            bj = b[:, j]
            nb = np.linalg.norm(bj)
            if nb == 0.0:
                its.append(0)
                continue
            count = [0]

            def cb(_xk, count=count):
                count[0] += 1

            xj, info = spla.cg(self.A, bj, x0=None if x0 is None else x0[:, j], rtol=self.rtol, atol=0.0,
                               maxiter=self.maxiter, M=self._precond, callback=cb)
            if info != 0:
                res = np.linalg.norm(bj - self.A @ xj) / nb
                raise ConvergenceError(
                    f"{self.method} preconditioned CG did not converge: {count[0]} iterations, relative residual {res:.3e} "
                    f"> rtol {self.rtol:.1e}. Try method='direct' (if memory allows), check the constraints "
                    "(nearly free rigid modes, parts hanging on a few nodes) and the material (E spanning many "
                    "orders of magnitude, nu close to 0.5), or raise maxiter"
                )
            x[:, j] = xj
            its.append(count[0])
        return x, its

    def _solve_amg(self, fz: np.ndarray, zp: np.ndarray, z0: np.ndarray | None
                   ) -> tuple[np.ndarray, list[int], list[float]]:
        """AMG-preconditioned CG on the masked reduced system for each column; z (n_z, r)."""

        nz, r = fz.shape
        z = np.zeros((nz, r))
        its, res = [], []
        for j in range(r):
            g = np.zeros(nz)
            g[self._presc] = zp[:, j]
            b = fz[:, j] - self._kz @ g if np.any(g) else fz[:, j].copy()
            b[self._pinned] = 0.0
            x0 = None
            if z0 is not None:
                x0 = np.array(z0[:, min(j, z0.shape[1] - 1)], dtype=np.float64)
                x0[self._pinned] = 0.0
            if self._refresh_from is not None:
                base = self._refresh_from
                cap = max(REUSE_MIN_ITERATIONS, int(REUSE_ITERATION_FACTOR * max(base.last_iterations, 1)))
                x, it, rj = pcg(self._amg_matvec, b, self.amg, rtol=self.rtol, maxiter=min(cap, self.maxiter),
                                x0=x0)
                if rj > self.rtol:
                    log.info("CG with the base AMG hierarchy: %d iterations, residual %.1e; rebuilding the "
                             "hierarchy on its aggregates for the new moduli", it, rj)
                    self.amg = base.amg.refresh(self._kz)
                    self._refresh_from = None
                    self.memory_estimate_bytes = int(self.amg.nbytes + 8 * self.n_free * 6)
                    x, it2, rj = pcg(self._amg_matvec, b, self.amg, rtol=self.rtol,
                                     maxiter=max(self.maxiter - it, 1), x0=x)
                    it += it2
            else:
                x, it, rj = pcg(self._amg_matvec, b, self.amg, rtol=self.rtol, maxiter=self.maxiter, x0=x0)
            if rj > self.rtol:
                raise ConvergenceError(
                    f"{self.method} preconditioned CG did not converge: {it} iterations, relative residual {rj:.3e} "
                    f"> rtol {self.rtol:.1e}. Try method='direct' (if memory allows), check the constraints "
                    "(nearly free rigid modes, parts hanging on a few nodes) and the material (E spanning many "
                    "orders of magnitude, nu close to 0.5), or raise maxiter"
                )
            x[self._presc] = zp[:, j]
            z[:, j] = x
            its.append(it)
            res.append(rj)
        return z, its, res

    def solve(self, f, fixed_values=None, *, tie_values: Mapping | Sequence | None = None,
              tie_loads: Mapping | Sequence | None = None, initial_u=None) -> Solution:
        """Solve for load(s) ``f`` and prescribed values, reusing the set-up.

        Parameters
        ----------
        f : (3n,) nodal forces in N, or (3n, r) for r load cases.
        fixed_values : prescribed displacements (mm): a (3n,) vector (only the entries at
            fixed DOFs are used) or one value per fixed DOF in the order given to the
            constructor; a trailing axis of r gives per-load-case values. Default 0.
            Orphan nodes fixed automatically always get 0.
        tie_values : ``{tie name or index: {"uy": -2.0, ...}}`` overriding the prescribed
            reference values of ties (mm, rad); DOFs must be prescribed in the tie.
        tie_loads : ``{tie name or index: (Fx, Fy, Fz, Mx, My, Mz)}`` (N, N mm) overriding
            the ties' force/moment on free reference DOFs.
        initial_u : (3n,) or (3n, r) displacements (mm) to start CG from, e.g. the solution of
            the same load on the previous moduli (AMG methods and ``cg-reuse``; a direct
            factorisation solves exactly and ignores it). Its values at prescribed DOFs are
            replaced by the prescribed ones.
        """
        t0 = time.perf_counter()
        fa = np.asarray(f, dtype=np.float64)
        one = fa.ndim == 1
        if fa.ndim == 1:
            fa = fa[:, None]
        if fa.ndim != 2 or fa.shape[0] != self.n_dofs:
            raise SolverError(f"f must have shape ({self.n_dofs},) or ({self.n_dofs}, r), got {np.shape(f)}")
        if not np.isfinite(fa).all():
            raise SolverError("f contains NaN or inf; check the load assembly")
        r = fa.shape[1]
        red = self.red
        zp = self._prescribed(fixed_values, r, tie_values)
        fz = red.reduce_vector(fa)
        fz = np.array(fz, dtype=np.float64, copy=True).reshape(red.n_z, r)
        loads = self._tie_loads(tie_loads)
        for k in range(red.n_ties):
            fz[red.tie_dof(k)] += loads[k][:, None]
        z0 = None
        if initial_u is not None and (self.amg is not None or self.method == "cg-reuse"):
            u0 = np.asarray(initial_u, dtype=np.float64)
            u0 = u0[:, None] if u0.ndim == 1 else u0
            if u0.ndim != 2 or u0.shape[0] != self.n_dofs or u0.shape[1] not in (1, r) \
                    or not np.isfinite(u0).all():
                raise SolverError(f"initial_u must be finite with shape ({self.n_dofs},) or ({self.n_dofs}, "
                                  f"{r}), got {np.shape(initial_u)}")
            z0 = np.zeros((red.n_z, u0.shape[1]))
            z0[: red.n_master] = u0[red.master_dofs]
        if self.amg is not None:
            z, its, res = self._solve_amg(fz, zp, z0)
        else:
            b = fz[self._free] - self._kfp @ zp
            x0 = None if z0 is None else np.repeat(z0[self._free], r // z0.shape[1], axis=1)
            xf, its = self._solve_free(b, x0)
            res = []
            for j in range(r):
                nb = np.linalg.norm(b[:, j])
                res.append(float(np.linalg.norm(self.A @ xf[:, j] - b[:, j]) / nb) if nb > 0 else 0.0)
            z = np.zeros((red.n_z, r))
            z[self._free] = xf
            z[self._presc] = zp
        u = np.asarray(red.expand(z))
        reac = self.K @ u - fa
        ties = {}
        if red.n_ties:
            rz = np.asarray(red.reduce_vector(reac))
            for k in range(red.n_ties):
                d = red.tie_dof(k)
                ties[self.tie_names[k]] = TieResult(
                    self.tie_names[k], _squeeze(z[d[:3]], one), _squeeze(z[d[3:]], one),
                    _squeeze(rz[d[:3]], one), _squeeze(rz[d[3:]], one))
        self.last_iterations = int(max(its))
        self.last_iteration_counts = [int(i) for i in its]
        report = SolveReport(self.method, int(max(its)), float(max(res)), self.setup_seconds,
                             time.perf_counter() - t0, int(self.memory_estimate_bytes), self.n_dofs, self.n_free,
                             r, red.n_ties, int(self.orphan_nodes.size))
        log.info("%s", report)
        if one:
            u, reac = u[:, 0], reac[:, 0]
        return Solution(u, reac, report, ties)


def _free_rows_nnz(k, free: np.ndarray) -> int:
    """Stored entries in the rows ``free`` of the CSR or 3x3-BSR matrix ``k`` (an upper bound of
    nnz(K_FF), exact up to the columns of the prescribed DOFs)."""
    if k.format == "bsr":
        per_row = np.repeat(np.diff(k.indptr) * k.blocksize[1], k.blocksize[0])
    else:
        per_row = np.diff(k.indptr)
    return int(per_row[free].sum())


def _squeeze(a: np.ndarray, one: bool) -> np.ndarray:
    return a[:, 0].copy() if one else a.copy()


def solve(K, f, fixed_dofs, fixed_values=None, **kw) -> Solution:
    """Set up a :class:`LinearSolver` and solve once; ``kw`` go to the constructor.

    ``tie_values`` and ``tie_loads`` in ``kw`` go to :meth:`LinearSolver.solve`.
    """
    solve_kw = {k: kw.pop(k) for k in ("tie_values", "tie_loads") if k in kw}
    return LinearSolver(K, fixed_dofs, **kw).solve(f, fixed_values, **solve_kw)


__all__ = ["LinearSolver", "Solution", "SolveReport", "solve", "rigid_body_modes", "RigidTie", "TieResult",
           "UnderConstrainedError"]
