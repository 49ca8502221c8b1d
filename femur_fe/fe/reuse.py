"""Solve K(E) u = f for a sequence of moduli on one mesh, reusing one solver set-up.

:class:`ReusingSolver` keeps a :class:`~femur_fe.fe.solvers.LinearSolver` set up on an earlier
matrix and solves each new matrix with ``LinearSolver(K, ..., preconditioner=base)`` (the one
reuse implementation: CG preconditioned by the base factorisation, ``cg-reuse``, or by the base
AMG hierarchy, ``amg-reuse``), started from the previous solution. It sets up anew every
``rebuild_every`` solves, and whenever CG does not converge within ``max_pcg_iterations``.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp

from ..errors import ConvergenceError
from .solvers import LinearSolver

log = logging.getLogger(__name__)


class ReusingSolver:
    """Solve K(E) u = f for a sequence of moduli, reusing an earlier set-up as preconditioner.

    The first call (and every ``rebuild_every``-th, or when CG needs more than
    ``max_pcg_iterations``) builds a :class:`LinearSolver` on the current matrix. Other calls
    solve the new matrix by CG preconditioned by that set-up
    (``LinearSolver(k, ..., preconditioner=base)``), starting from the previous solution
    when the prescribed values are the same, else from the base solver's solution for the
    new prescribed values. The answer meets ``rtol`` on the new matrix either way.

    Measured with ``RemodelingModel`` on a 16x16x32 hex block (28.6k DOFs, Morgan 2003
    femoral-neck law, 12 monthly steps, 2 cores): rebuilding every step 137 s (CHOLMOD) /
    117 s (AMG); one set-up reused for all steps 16 s (CHOLMOD, one CG iteration per step) /
    46 s (AMG, ~10 CG iterations per step).

    Parameters
    ----------
    assembler : object with ``assemble(young) -> K`` (e.g. :class:`~femur_fe.fe.StiffnessAssembler`)
    fixed_dofs : prescribed DOF ids (``3 * node + component``)
    points : node coordinates (n, 3) in mm or the :class:`~femur_fe.fe.Mesh`
    method : set-up method of :class:`LinearSolver` (``"direct"``, ``"amg"``, ``"auto"``...)
    rebuild_every : solves between two set-ups
    max_pcg_iterations : CG iteration limit of a reused set-up before a new one is built
    rtol : relative residual target of CG

    Attributes
    ----------
    n_setups, n_pcg_solves, n_pcg_failures, pcg_iterations, setup_seconds, solve_seconds :
        statistics (``pcg_iterations`` summed over solves and load columns)
    method : the set-up method of the current base solver (None before the first solve)
    """

    def __init__(self, assembler, fixed_dofs, points, *, method: str = "auto", rebuild_every: int = 10,
                 max_pcg_iterations: int = 30, rtol: float = 1e-10) -> None:
        self.assembler = assembler
        self.fixed_dofs = np.asarray(fixed_dofs, dtype=np.int64)
        self.points = points
        self.set_up_method = method
        self.rebuild_every = int(rebuild_every)
        self.max_pcg_iterations = int(max_pcg_iterations)
        self.rtol = float(rtol)
        self._base: LinearSolver | None = None
        self._since = 0
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self.n_setups = 0
        self.n_pcg_solves = 0
        self.n_pcg_failures = 0
        self.pcg_iterations = 0
        self.setup_seconds = 0.0
        self.solve_seconds = 0.0
        self.last_report = None

    @property
    def method(self) -> str | None:
        return None if self._base is None else self._base.method

    def _setup(self, k) -> None:
        t0 = time.perf_counter()
        self._base = LinearSolver(k, self.fixed_dofs, points=self.points, method=self.set_up_method, rtol=self.rtol)
        self.setup_seconds += time.perf_counter() - t0
        self.n_setups += 1
        self._since = 0

    def _solve_base(self, k, f: np.ndarray, g: np.ndarray) -> np.ndarray:
        self._setup(k)
        sol = self._base.solve(f, g)
        self.last_report = sol.report
        return np.asarray(sol.u).reshape(f.shape)

    def solve(self, young: np.ndarray, f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
        """Displacements (3n, r) for moduli ``young`` (m,) MPa, forces f (3n, r), fixed values g (k, r);
        returns them with the assembled stiffness."""
        t0 = time.perf_counter()
        k = self.assembler.assemble(young)
        if self._base is None or self._since >= self.rebuild_every:
            u = self._solve_base(k, f, g)
        else:
            u = self._reuse(k, f, g)
            if u is None:
                log.info("CG with the reused set-up needed more than %d iterations: rebuilding",
                         self.max_pcg_iterations)
                u = self._solve_base(k, f, g)
        self._since += 1
        self._last = (u, np.array(g, copy=True))
        self.solve_seconds += time.perf_counter() - t0
        return u, k

    def _reuse(self, k, f: np.ndarray, g: np.ndarray) -> np.ndarray | None:
        """CG on ``k`` preconditioned by the base set-up; None when it does not converge."""
        base = self._base
        if self._last is not None and self._last[1].shape == g.shape and np.array_equal(self._last[1], g):
            u0 = self._last[0]  # the previous solution satisfies the same prescribed values
        else:
            u0 = np.asarray(base.solve(f, g).u).reshape(f.shape)  # satisfies the BCs, exact for K_old
        solver = LinearSolver(k, self.fixed_dofs, points=self.points, rtol=self.rtol,
                              maxiter=self.max_pcg_iterations, preconditioner=base)
        try:
            sol = solver.solve(f, g, initial_u=u0)
        except ConvergenceError:
            self.n_pcg_failures += 1
            return None
        self.pcg_iterations += int(sum(solver.last_iteration_counts))
        self.n_pcg_solves += 1
        self.last_report = sol.report
        return np.asarray(sol.u).reshape(f.shape)
