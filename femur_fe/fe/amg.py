"""Smoothed-aggregation algebraic multigrid for 3-D elasticity, lean and in single precision.

The preconditioner of :class:`femur_fe.LinearSolver` (``method="amg"``). Classical smoothed
aggregation (Vanek, Mandel & Brezina 1996, Computing 56:179) with the six rigid-body modes as
near-null space, built on 3x3-block (BSR) matrices:

* strength of connection: every node-node coupling of the matrix (theta = 0: elasticity matrices
  have positive off-diagonal entries that a classical strength test would drop); nodes whose
  three DOFs are all prescribed are left out of the aggregates (the smoother solves them exactly);
* aggregation and tentative prolongator: pyamg's ``standard_aggregation`` and ``fit_candidates``
  (a QR of the rigid-body modes on each aggregate);
* one damped block-Jacobi smoothing step of the prolongator, ``P = (I - 4/3 / lmax D^-1 A) T``;
  Galerkin coarse matrices ``P^T A P``; a dense Cholesky factor on the coarsest level;
* smoother: Chebyshev polynomial of degree 2 in ``D^-1 A`` (D the 3x3 / 6x6 block diagonal) on
  ``[lmax / 10, 1.1 lmax]``, ``lmax`` from 10 steps of Jacobi-preconditioned CG (Lanczos)
  (Adams, Brezina, Hu & Tuminaro 2003, J Comput Phys 188:593). Chebyshev needs only matrix
  products, which run on all cores (``femur_fe._amg``); the same polynomial before and after the
  coarse correction keeps the V-cycle symmetric, as conjugate gradients needs.

The hierarchy is stored in float32 (half the memory traffic of float64; the outer conjugate
gradients stay in float64 on the float64 matrix, so the solution still meets its tolerance
on the exact system). The aggregates and tentative prolongators depend only on the geometry
and the constraints; :meth:`SmoothedAggregation.refresh` rebuilds the hierarchy for new moduli
on the same mesh by re-smoothing the prolongators and recomputing the Galerkin products only.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..errors import SolverError
from . import _amg
from .parallel import effective_n_threads

log = logging.getLogger(__name__)

#: coarsest level solved by a dense Cholesky factor when it has at most this many DOFs
MAX_COARSE = 1500
#: Chebyshev degree of the pre- and post-smoother
CHEB_DEGREE = 2
#: Chebyshev interval [lmax / CHEB_RATIO, CHEB_SAFETY * lmax] of D^-1 A
CHEB_RATIO = 10.0
CHEB_SAFETY = 1.1
#: prolongation smoothing weight omega / lmax(D^-1 A)
PROLONGATION_OMEGA = 4.0 / 3.0
#: CG (Lanczos) steps of the largest-eigenvalue estimate
LANCZOS_STEPS = 10
MAX_LEVELS = 12
#: levels with fewer block rows run their kernels on one thread (thread start-up dominates)
SERIAL_BELOW = 20000
#: row chunks of the restriction P^T r (partial sums added in chunk order: thread-count independent)
RESTRICT_CHUNKS = 8
#: coarse-row tasks per thread of the Galerkin product (dynamic scheduling on a busy machine)
GALERKIN_TASKS_PER_THREAD = 8


@dataclass
class _Level:
    A: sp.bsr_matrix                      # float32 level matrix
    dinv: np.ndarray                      # (nb, R, R) float32 inverse block diagonal
    lmax: float = 0.0                     # estimate of the largest eigenvalue of D^-1 A
    geo: "_Structure | None" = None       # aggregates, T and patterns (geometry only)
    P: sp.bsr_matrix | None = None        # smoothed prolongator (float32)
    scratch: np.ndarray | None = None     # (RESTRICT_CHUNKS, n_coarse) for P^T r
    work: dict = field(default_factory=dict)


@dataclass
class _Structure:
    """The geometry-only part of one level: aggregates, tentative prolongator, patterns."""
    agg: np.ndarray          # (nb,) int32 aggregate of each node (-1: none)
    tblk: np.ndarray         # (nb, R, C) block of T in each row (zero where agg < 0)
    pip: np.ndarray          # pattern of P (indptr, indices), int32, sorted rows
    pix: np.ndarray
    cip: np.ndarray          # pattern of A_c = P^T A P
    cix: np.ndarray
    max_touched: int         # bound on the coarse columns of one row of A P
    lower: np.ndarray        # positions of the blocks (I, J) with J < I in the pattern of A_c
    mirror: np.ndarray       # ... and of their transposes (J, I)

    @property
    def n_coarse(self) -> int:
        return len(self.cip) - 1


def _pattern(a) -> sp.csr_matrix:
    nb = a.shape[0] // a.blocksize[0]
    mb = a.shape[1] // a.blocksize[1]
    nnzb = int(a.indptr[-1])
    return sp.csr_matrix((np.ones(nnzb, dtype=np.int32), a.indices[:nnzb].copy(), a.indptr.copy()), shape=(nb, mb))


def _structure(a: sp.bsr_matrix, aggop: sp.csr_matrix, T: sp.bsr_matrix, dtype) -> _Structure:
    nb = aggop.shape[0]
    r, c = T.blocksize
    agg = np.full(nb, -1, dtype=np.int32)
    has = np.diff(aggop.indptr) > 0
    agg[has] = aggop.indices[aggop.indptr[:-1][has]]
    tblk = np.zeros((nb, r, c), dtype=dtype)
    trows = np.repeat(np.arange(nb), np.diff(T.indptr))
    tblk[trows] = T.data[:T.indptr[-1]]
    ap = _pattern(a)
    agg_op = sp.csr_matrix((np.ones(int(has.sum()), dtype=np.int32), agg[has], np.r_[0, np.cumsum(has)]),
                           shape=aggop.shape)
    pp = ap @ agg_op
    pp.sort_indices()
    plen = np.diff(pp.indptr).astype(np.int64)
    max_touched = int((ap @ plen).max()) if nb else 0
    cp = pp.T.tocsr() @ (ap @ pp)
    cp.sort_indices()
    rows = np.repeat(np.arange(cp.shape[0]), np.diff(cp.indptr))
    lower = np.flatnonzero(cp.indices < rows)
    # the pattern is symmetric: its transpose, sorted, lists for every entry (I, J) the position
    # of (J, I)
    pos = sp.csr_matrix((np.arange(cp.nnz, dtype=np.int64), cp.indices, cp.indptr), shape=cp.shape).T.tocsr()
    pos.sort_indices()
    if not (np.array_equal(pos.indptr, cp.indptr) and np.array_equal(pos.indices, cp.indices)):
        raise SolverError("the coarse matrix pattern is not symmetric; the stiffness pattern must be symmetric")
    mirror = pos.data[lower]
    i32 = np.int32
    return _Structure(agg, tblk, pp.indptr.astype(i32), pp.indices.astype(i32), cp.indptr.astype(i32),
                      cp.indices.astype(i32), max_touched, lower, mirror.astype(np.int64))


def _bsr(a, blocksize: int, dtype) -> sp.bsr_matrix:
    return _bsr_rect(a, blocksize, blocksize, dtype)


def block_diagonal(a: sp.bsr_matrix) -> np.ndarray:
    """(nb, R, R) diagonal blocks of a square BSR matrix (zero where a block is absent)."""
    nb, r = a.shape[0] // a.blocksize[0], a.blocksize[0]
    rows = np.repeat(np.arange(nb, dtype=np.int32), np.diff(a.indptr))
    on = np.flatnonzero(rows == a.indices)
    out = np.zeros((nb, r, r), dtype=np.float64)
    out[rows[on]] = a.data[on]
    return out


def _invert_blocks(d: np.ndarray) -> np.ndarray:
    """Inverse of each diagonal block; DOFs with a zero diagonal (decoupled) get 1."""
    d = d.copy()
    zero = np.einsum("nii->ni", d) == 0.0
    if zero.any():
        n_idx, i_idx = np.nonzero(zero)
        d[n_idx, i_idx, i_idx] = 1.0
    if d.shape[1] != 3:
        return np.linalg.inv(d)
    # 3x3: adjugate / determinant (vectorised; several times faster than a batched LU)
    a, b, c = d[:, 0, 0], d[:, 0, 1], d[:, 0, 2]
    e, f, g = d[:, 1, 0], d[:, 1, 1], d[:, 1, 2]
    h, i, j = d[:, 2, 0], d[:, 2, 1], d[:, 2, 2]
    adj = np.empty_like(d)
    adj[:, 0, 0], adj[:, 0, 1], adj[:, 0, 2] = f * j - g * i, c * i - b * j, b * g - c * f
    adj[:, 1, 0], adj[:, 1, 1], adj[:, 1, 2] = g * h - e * j, a * j - c * h, c * e - a * g
    adj[:, 2, 0], adj[:, 2, 1], adj[:, 2, 2] = e * i - f * h, b * h - a * i, a * f - b * e
    det = a * adj[:, 0, 0] + b * adj[:, 1, 0] + c * adj[:, 2, 0]
    if not np.all(det > 0):
        bad = np.flatnonzero(~(det > 0))
        raise SolverError(f"{bad.size} node(s) have a 3x3 diagonal stiffness block that is not positive definite "
                          f"(e.g. block {bad[0]}); check the moduli (E > 0, nu < 0.5) and the element orientation")
    adj /= det[:, None, None]
    return adj


def pin_dofs(a: sp.bsr_matrix, pinned: np.ndarray, dtype=np.float32) -> sp.bsr_matrix:
    """Copy of the square 3x3-block ``a`` in ``dtype`` with the rows and columns of the ``pinned``
    DOFs replaced by the identity (prescribed DOFs, decoupled from the free ones)."""
    r = a.blocksize[0]
    data = a.data.astype(dtype)
    pin = pinned.reshape(-1, r)
    pnodes = np.flatnonzero(pin.any(axis=1))
    if pnodes.size:
        node_pin = np.zeros(len(pin), dtype=bool)
        node_pin[pnodes] = True
        # blocks in the rows of pinned nodes
        starts, stops = a.indptr[pnodes].astype(np.int64), a.indptr[pnodes + 1].astype(np.int64)
        cnt = stops - starts
        blk = np.repeat(starts - np.r_[0, np.cumsum(cnt)[:-1]], cnt) + np.arange(int(cnt.sum()))
        brow = np.repeat(pnodes, cnt)
        data[blk] *= (~pin[brow])[:, :, None].astype(dtype)
        # blocks in the columns of pinned nodes
        hit = np.flatnonzero(node_pin[a.indices])
        data[hit] *= (~pin[a.indices[hit]])[:, None, :].astype(dtype)
        on = blk[a.indices[blk] == brow]  # diagonal blocks of the pinned nodes
        for c in range(r):
            sel = on[pin[a.indices[on], c]]
            data[sel, c, c] = 1.0
    return sp.bsr_matrix((data, a.indices.astype(np.int32, copy=False), a.indptr.astype(np.int32, copy=False)),
                         shape=a.shape)


class SmoothedAggregation:
    """Smoothed-aggregation V-cycle preconditioner for a 3x3-block SPD matrix.

    Parameters
    ----------
    A : (3n, 3n) sparse stiffness (N/mm), 3x3 blocks (BSR preferred: no copy of the structure),
        with the rows and columns of ``pinned`` DOFs ignored (treated as identity).
    B : (3n, 6) near-null space (rigid-body modes), rows of pinned DOFs are ignored.
    pinned : (3n,) bool, the prescribed DOFs.
    n_threads : threads of the compiled kernels (None = all cores).
    """

    def __init__(self, A, B: np.ndarray, pinned: np.ndarray | None = None, *, n_threads: int | None = None,
                 max_coarse: int = MAX_COARSE, dtype=np.float32) -> None:
        t0 = time.perf_counter()
        self.n_threads = effective_n_threads(n_threads)
        self.dtype = np.dtype(dtype)
        self.max_coarse = int(max_coarse)
        self.n = A.shape[0]
        if A.shape[0] % 3 or A.shape[0] != A.shape[1]:
            raise SolverError(f"AMG needs a square matrix with 3 DOFs per node, got {A.shape}")
        self.pinned = np.zeros(self.n, dtype=bool) if pinned is None else np.asarray(pinned, dtype=bool)
        B = np.array(B, dtype=np.float64)
        B[self.pinned] = 0.0
        a0 = pin_dofs(_bsr(A, 3, A.dtype), self.pinned, self.dtype)
        self.levels: list[_Level] = []
        self._build(a0, B, reuse=None)
        self.setup_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ set-up
    def _graph(self, a: sp.bsr_matrix, skip: np.ndarray | None) -> sp.csr_matrix:
        """Node graph (theta = 0 strength): off-diagonal blocks, without ``skip`` nodes."""
        nb = a.shape[0] // a.blocksize[0]
        rows = np.repeat(np.arange(nb, dtype=np.int32), np.diff(a.indptr))
        keep = rows != a.indices
        if skip is not None and skip.any():
            keep &= ~skip[rows] & ~skip[a.indices]
        # eliminate_zeros works in place: the graph gets its own index arrays
        g = sp.csr_matrix((keep.astype(np.int8), a.indices.copy(), a.indptr.copy()), shape=(nb, nb))
        g.eliminate_zeros()
        return g

    def _build(self, a: sp.bsr_matrix, B: np.ndarray | None, reuse: list[_Level] | None) -> None:
        from pyamg.aggregation.aggregate import standard_aggregation
        from pyamg.aggregation.tentative import fit_candidates

        levels = []
        depth = 0
        while True:
            r = a.blocksize[0]
            dinv = _invert_blocks(block_diagonal(a)).astype(self.dtype)
            lvl = _Level(A=a, dinv=dinv)
            levels.append(lvl)
            old = reuse[depth] if reuse is not None and depth < len(reuse) else None
            if reuse is not None and (old is None or old.geo is None):
                break  # the coarsest level of the original hierarchy
            if reuse is None and (a.shape[0] <= self.max_coarse or depth + 1 >= MAX_LEVELS):
                break
            lvl.lmax = self._lmax(lvl)
            if old is not None:
                lvl.geo = old.geo
            else:
                skip = self.pinned.reshape(-1, 3).all(axis=1) if depth == 0 else None
                agg = standard_aggregation(self._graph(a, skip))[0]
                if agg.shape[1] == 0 or agg.shape[1] * B.shape[1] >= a.shape[0]:
                    break  # no coarsening possible
                T, B = fit_candidates(agg, B)
                lvl.geo = _structure(a, agg, _bsr_rect(T, r, B.shape[1], self.dtype), self.dtype)
                del T, agg
            lvl.P = self._smooth_prolongator(lvl)
            a = self._galerkin(lvl)
            lvl.scratch = np.empty((RESTRICT_CHUNKS, lvl.P.shape[1]), dtype=self.dtype)
            depth += 1
        coarse = levels[-1].A.toarray().astype(np.float64)
        diag = np.diag(coarse).copy()
        zero = diag == 0.0
        coarse[zero, zero] = 1.0
        try:
            self._coarse = ("chol", sla.cho_factor(coarse, lower=True, check_finite=False))
        except np.linalg.LinAlgError:
            self._coarse = ("pinv", np.linalg.pinv(coarse, hermitian=True))
        self.levels = levels

    def _threads(self, rows: int) -> int:
        """Threads for a level of ``rows`` block rows (small levels run serially)."""
        return self.n_threads if rows >= SERIAL_BELOW else 1

    def _smooth_prolongator(self, lvl: _Level) -> sp.bsr_matrix:
        """P = T - omega / lmax D^-1 A T on the stored pattern (compiled, parallel)."""
        g, a = lvl.geo, lvl.A
        r, c = g.tblk.shape[1:]
        pd = np.empty((len(g.pix), r, c), dtype=self.dtype)
        _amg.smooth_prolongator(a.indptr, a.indices, a.data, lvl.dinv, g.agg, g.tblk, g.pip, g.pix, pd,
                                PROLONGATION_OMEGA / lvl.lmax, self._threads(len(g.agg)))
        return sp.bsr_matrix((pd, g.pix, g.pip), shape=(len(g.agg) * r, g.n_coarse * c))

    def _galerkin(self, lvl: _Level) -> sp.bsr_matrix:
        """A_c = P^T A P on the stored pattern (compiled, parallel, no A P kept)."""
        g, a, P = lvl.geo, lvl.A, lvl.P
        r, c = P.blocksize
        nc = g.n_coarse
        nt = self._threads(len(g.agg))
        cd = np.empty((len(g.cix), c, c), dtype=self.dtype)
        # coarse row ranges of equal pattern size, GALERKIN_TASKS_PER_THREAD per thread
        tasks = nt * GALERKIN_TASKS_PER_THREAD
        work = np.cumsum(np.diff(g.cip))
        split = np.searchsorted(work, np.arange(1, tasks) * work[-1] / tasks) + 1 if nc else np.zeros(0, np.int64)
        split = np.unique(np.r_[0, np.minimum(split, nc), nc]).astype(np.int32)
        iwork = np.empty((nt, 4 * nc + 1), dtype=np.int32)
        acc = np.empty((nt, max(g.max_touched, 1) * r * c), dtype=self.dtype)
        _amg.galerkin(a.indptr, a.indices, a.data, P.indptr, P.indices, P.data, g.cip, g.cix, cd, split, iwork,
                      acc, nt)
        cd[g.lower] = cd[g.mirror].transpose(0, 2, 1)  # symmetric: lower blocks from the upper ones
        return sp.bsr_matrix((cd, g.cix, g.cip), shape=(nc * c, nc * c))

    def _dinv_apply(self, lvl: _Level, r: np.ndarray) -> np.ndarray:
        nb, R = lvl.dinv.shape[:2]
        return np.einsum("nab,nb->na", lvl.dinv, r.reshape(nb, R)).ravel()

    def _matvec(self, a: sp.bsr_matrix, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        _amg.bsr_matvec(a.indptr, a.indices, a.data, x, y, False, self._threads(a.indptr.shape[0] - 1))
        return y

    def _lmax(self, lvl: _Level) -> float:
        """Largest eigenvalue of D^-1 A from LANCZOS_STEPS of Jacobi-preconditioned CG."""
        a = lvl.A
        n = a.shape[0]
        rng = np.random.default_rng(12345)
        r = rng.standard_normal(n).astype(self.dtype)
        r[self.pinned if n == self.n else np.zeros(n, bool)] = 0.0
        z = self._dinv_apply(lvl, r)
        p = z.copy()
        rz = float(r @ z)
        ap = np.empty_like(r)
        alphas, betas = [], []
        for _ in range(min(LANCZOS_STEPS, n)):
            self._matvec(a, p, ap)
            pap = float(p @ ap)
            if not pap > 0 or not rz > 0:
                break
            alpha = rz / pap
            r -= np.asarray(alpha, dtype=self.dtype) * ap
            z = self._dinv_apply(lvl, r)
            rz_new = float(r @ z)
            beta = rz_new / rz
            alphas.append(alpha)
            betas.append(beta)
            rz = rz_new
            p = z + np.asarray(beta, dtype=self.dtype) * p
        k = len(alphas)
        if k == 0:
            return 2.0
        t = np.zeros((k, k))
        for j in range(k):
            t[j, j] = 1.0 / alphas[j] + (betas[j - 1] / alphas[j - 1] if j else 0.0)
            if j + 1 < k:
                t[j, j + 1] = t[j + 1, j] = np.sqrt(max(betas[j], 0.0)) / alphas[j]
        return float(np.linalg.eigvalsh(t)[-1])

    # ------------------------------------------------------------------ re-use
    def refresh(self, A) -> "SmoothedAggregation":
        """A new hierarchy for ``A`` (same mesh, constraints and pattern, new moduli) that reuses
        the aggregates and tentative prolongators of this one."""
        t0 = time.perf_counter()
        new = object.__new__(SmoothedAggregation)
        new.n_threads, new.dtype, new.max_coarse, new.n = self.n_threads, self.dtype, self.max_coarse, self.n
        new.pinned = self.pinned
        if A.shape != (self.n, self.n):
            raise SolverError(f"refresh: the matrix has shape {A.shape}, the hierarchy was built for {(self.n,) * 2}")
        a0 = pin_dofs(_bsr(A, 3, A.dtype), self.pinned, self.dtype)
        new._build(a0, None, reuse=self.levels)
        new.setup_seconds = time.perf_counter() - t0
        return new

    # ------------------------------------------------------------------ cycle
    @property
    def nbytes(self) -> int:
        total = 0
        for lvl in self.levels:
            for m in (lvl.A, lvl.P):
                if m is not None:
                    total += m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
            if lvl.geo is not None:
                total += sum(x.nbytes for x in (lvl.geo.agg, lvl.geo.tblk, lvl.geo.pip, lvl.geo.pix, lvl.geo.cip,
                                                lvl.geo.cix))
            total += lvl.dinv.nbytes
        return int(total)

    def _smooth(self, lvl: _Level, b: np.ndarray, x: np.ndarray, zero: bool, residual: bool) -> np.ndarray:
        """Chebyshev smoothing of A x = b (in place on x); returns the residual b - A x if
        ``residual`` (one more product), else a work array."""
        a = lvl.A
        nt = self._threads(a.indptr.shape[0] - 1)
        w = lvl.work
        if "r" not in w:
            w.update(r=np.empty_like(b), d0=np.empty_like(b), d1=np.empty_like(b))
        r, d0, d1 = w["r"], w["d0"], w["d1"]
        upper = CHEB_SAFETY * lvl.lmax
        lower = upper / CHEB_RATIO
        theta, delta = 0.5 * (upper + lower), 0.5 * (upper - lower)
        sigma = theta / delta
        if zero:
            r[:] = b
            x[:] = 0.0
        else:
            _amg.bsr_residual(a.indptr, a.indices, a.data, x, b, r, nt)
        _amg.cheb_first(lvl.dinv, r, d0, x, 1.0 / theta, nt)
        rho = 1.0 / sigma
        for _ in range(CHEB_DEGREE - 1):
            rho_new = 1.0 / (2.0 * sigma - rho)
            _amg.cheb_step(a.indptr, a.indices, a.data, lvl.dinv, d0, d1, r, x, rho_new * rho, 2.0 * rho_new / delta, nt)
            d0, d1 = d1, d0
            rho = rho_new
        if residual:  # r -= A d (the last update of x)
            _amg.bsr_residual(a.indptr, a.indices, a.data, d0, r, r, nt)
        return r

    def _cycle(self, depth: int, b: np.ndarray) -> np.ndarray:
        lvl = self.levels[depth]
        if depth == len(self.levels) - 1:
            kind, fac = self._coarse
            b64 = b.astype(np.float64)
            x = sla.cho_solve(fac, b64, check_finite=False) if kind == "chol" else fac @ b64
            return x.astype(self.dtype)
        if "x" not in lvl.work:
            lvl.work.update(x=np.empty_like(b), bc=np.empty(lvl.P.shape[1], dtype=self.dtype))
        x, bc = lvl.work["x"], lvl.work["bc"]
        r = self._smooth(lvl, b, x, zero=True, residual=True)
        P = lvl.P
        nt = self._threads(P.indptr.shape[0] - 1)
        _amg.bsr_rmatvec(P.indptr, P.indices, P.data, r, bc, lvl.scratch, nt)
        xc = self._cycle(depth + 1, bc)
        _amg.bsr_matvec(P.indptr, P.indices, P.data, xc, x, True, nt)
        self._smooth(lvl, b, x, zero=False, residual=False)
        return x

    def __call__(self, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One V-cycle applied to ``b`` (float64 in, float64 out; pinned DOFs pass through 0)."""
        w = self.levels[0].work
        if "b" not in w:
            w["b"] = np.empty(self.n, dtype=self.dtype)
        w["b"][:] = b
        x = self._cycle(0, w["b"])
        out = np.empty(self.n) if out is None else out
        out[:] = x
        out[self.pinned] = 0.0
        return out


def _bsr_rect(a, r: int, c: int, dtype, *, temporary: bool = False) -> sp.bsr_matrix:
    """``a`` as BSR with (r, c) blocks, sorted, int32 indices, exactly nnzb stored blocks
    (``temporary``: ``a`` may be sorted in place)."""
    a = a if sp.isspmatrix_bsr(a) and a.blocksize == (r, c) else sp.bsr_matrix(a, blocksize=(r, c))
    if not a.has_sorted_indices:
        if not temporary:
            a = a.copy()
        a.sort_indices()
    nnzb = int(a.indptr[-1])
    return sp.bsr_matrix((np.ascontiguousarray(a.data[:nnzb], dtype=dtype),
                          a.indices[:nnzb].astype(np.int32, copy=False), a.indptr.astype(np.int32, copy=False)),
                         shape=a.shape)


def _axpy(x: np.ndarray, y: np.ndarray, *, a: float) -> np.ndarray:
    """``y + a x``, in place in ``y`` when it is a contiguous float64 array (BLAS daxpy: no
    temporary vector)."""
    return sla.blas.daxpy(x, y, a=a)


def pcg(matvec, b: np.ndarray, precond, *, rtol: float, maxiter: int, x0: np.ndarray | None = None
        ) -> tuple[np.ndarray, int, float]:
    """Preconditioned conjugate gradients in float64: ``||b - A x|| <= rtol ||b||``.

    Returns (x, iterations, relative residual); the residual is recomputed from ``matvec`` at
    the end and CG restarts from x if the recursive residual drifted (at most twice). A guess
    ``x0`` is first scaled by the factor that minimises the energy norm of the error along it,
    ``(x0 . b) / (x0 . A x0)`` (never worse than x0 or 0; a global stiffness change only rescales
    the displacement).
    """
    nb = float(np.linalg.norm(b))
    if nb == 0.0:
        return np.zeros_like(b), 0, 0.0
    x = np.zeros_like(b)
    r = b.copy()
    if x0 is not None:
        x = np.array(x0, dtype=np.float64)
        ax = matvec(x)
        xax = float(x @ ax)
        scale = float(x @ b) / xax if xax > 0 else 0.0
        x *= scale
        r -= scale * ax  # b - A (scale x0) without a second product
        del ax
    its = 0
    for _restart in range(3):
        res = float(np.linalg.norm(r)) / nb
        if res <= rtol:
            return x, its, res
        z = precond(r)
        p = z.copy()
        rz = float(r @ z)
        while its < maxiter:
            q = matvec(p)
            alpha = rz / float(p @ q)
            x = _axpy(p, x, a=alpha)     # x += alpha p
            r = _axpy(q, r, a=-alpha)    # r -= alpha q
            its += 1
            if float(np.linalg.norm(r)) <= rtol * nb:
                break
            z = precond(r)
            rz_new = float(r @ z)
            p *= rz_new / rz
            p += z
            rz = rz_new
        r = b - matvec(x)  # the true residual; CG restarts from it if the recursive one drifted
        res = float(np.linalg.norm(r)) / nb
        if res <= rtol or its >= maxiter:
            return x, its, res
    return x, its, res
