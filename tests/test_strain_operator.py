"""The sparse strain operator and the matrix-free Krylov solvers of the nonlinear analysis.

* ``B u`` equals the compiled strain kernel (femur_fe.fe.recovery.strain) and
  ``B^T diag(w E) D1 B`` the assembled stiffness (StiffnessAssembler) on distorted tet4,
  tet10 and hex8 meshes: the same integrals in double precision by different formulas, so
  1e-12 relative to the largest entry (as in test_kernels.py);
* with a column map ``T`` the operator is ``B T``;
* :func:`femur_fe.fe.krylov.gmres` / :func:`pcg` reach their stated tolerance on small
  non-symmetric / symmetric systems and agree with a dense solve.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from femur_fe.fe.assembly import StiffnessAssembler, unit_lame
from femur_fe.fe.boxes import box_mesh
from femur_fe.fe.krylov import gmres, pcg
from femur_fe.fe.recovery import strain
from femur_fe.fe.strain_operator import (
    StrainOperator,
    strain_operator_nbytes,
    unit_isotropic_stress,
    voigt_to_tensor,
)

CELL_TYPES = ["tetra", "tetra10", "hexahedron"]
NQ = {"tetra": 1, "tetra10": 4, "hexahedron": 8}
RTOL = 1e-12


def rel_err(a, b) -> float:
    a = a.toarray() if sp.issparse(a) else np.asarray(a)
    b = b.toarray() if sp.issparse(b) else np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_strain_and_stiffness_match_kernel_and_assembler(cell_type):
    mesh = box_mesh(cell_type, 3, 2, 2, h=2.0, distortion=0.2, seed=4)
    so = StrainOperator(mesh)
    q = NQ[cell_type]
    assert so.n_points == mesh.n_cells * q and so.points_per_cell == q
    assert so.weights.sum() == pytest.approx(mesh.cell_volumes().sum(), rel=1e-12)
    assert so.nbytes <= strain_operator_nbytes(mesh)
    u = np.random.default_rng(5).normal(size=mesh.n_dofs)
    eps = so.strain(u)  # (6, P)
    assert eps.shape == (6, mesh.n_cells * q)
    ref = strain(mesh, u, at="quadrature").reshape(-1, 3, 3)
    assert rel_err(voigt_to_tensor(eps), ref) < RTOL
    young = np.random.default_rng(0).uniform(1, 10, (mesh.n_cells, q))
    lam, mu = unit_lame(0.3)
    k = StiffnessAssembler(mesh, 0.3).assemble(young)
    f = so.forces(unit_isotropic_stress(eps, lam, mu, young.ravel()))
    assert rel_err(f, k @ u) < RTOL
    # the operator as a matrix: B^T diag(w E) D1 B column by column on a few unit vectors
    for j in (0, 7, mesh.n_dofs - 1):
        e = np.zeros(mesh.n_dofs)
        e[j] = 1.0
        col = so.forces(unit_isotropic_stress(so.strain(e), lam, mu, young.ravel()))
        assert rel_err(col, k[:, j].toarray().ravel()) < RTOL


def test_column_map():
    mesh = box_mesh("tetra", 2, 2, 2, h=1.0, distortion=0.1, seed=1)
    rng = np.random.default_rng(2)
    t = sp.random(mesh.n_dofs, 10, density=0.3, random_state=3, format="csr")
    z = rng.normal(size=10)
    so_t = StrainOperator(mesh, columns=t)
    so = StrainOperator(mesh)
    assert rel_err(so_t.strain(z), so.strain(t @ z)) < RTOL
    s = rng.normal(size=(6, so.n_points))
    assert rel_err(so_t.forces(s), t.T @ so.forces(s)) < RTOL


def _system(n: int, symmetric: bool, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)) / np.sqrt(n)
    a = a @ a.T + np.diag(rng.uniform(1, 100, n)) if symmetric else a + np.diag(rng.uniform(2, 100, n))
    d = 1.0 / np.diag(a)
    return a, (lambda v: a @ v), (lambda r: d * r), rng.normal(size=n)


def test_gmres_reaches_its_tolerance_and_the_dense_answer():
    a, mv, jac, b = _system(80, symmetric=False, seed=0)
    exact = np.linalg.solve(a, b)
    for restart in (80, 7):  # with and without restarts
        x, its, rel = gmres(mv, jac, b, rtol=1e-10, maxiter=400, restart=restart)
        assert rel <= 1e-10 and its <= 400
        # the preconditioned residual it reports is the true one
        assert np.linalg.norm(jac(b - a @ x)) <= 1.01e-10 * np.linalg.norm(jac(b))
        np.testing.assert_allclose(x, exact, rtol=1e-7, atol=1e-9 * np.abs(exact).max())
    # z0 = M b given: the same iterate, one application of M fewer
    calls = [0]

    def counted(r):
        calls[0] += 1
        return jac(r)

    x1, its1, _ = gmres(mv, counted, b, rtol=1e-6, maxiter=200, restart=200)
    n1 = calls[0]
    calls[0] = 0
    x2, its2, _ = gmres(mv, counted, b, rtol=1e-6, maxiter=200, restart=200, z0=jac(b))
    assert its1 == its2 and calls[0] == n1 - 1 == its2
    np.testing.assert_allclose(x1, x2, rtol=1e-12)
    # an iteration limit returns the best iterate with its residual, without raising
    x, its, rel = gmres(mv, jac, b, rtol=1e-14, maxiter=3)
    assert its == 3 and 1e-14 < rel < 1


def test_pcg_reaches_its_tolerance_and_the_dense_answer():
    a, mv, jac, b = _system(60, symmetric=True, seed=1)
    x, its, rel = pcg(mv, jac, b, rtol=1e-10, maxiter=500)
    r = b - a @ x
    assert rel <= 1e-10 and np.sqrt(r @ jac(r)) <= 1.01e-10 * np.sqrt(b @ jac(b))
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-7, atol=1e-12)
    # an exact preconditioner converges in one iteration
    inv = np.linalg.inv(a)
    x, its, _ = pcg(mv, lambda v: inv @ v, b, rtol=1e-10, maxiter=10)
    assert its == 1
