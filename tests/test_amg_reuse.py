"""The AMG re-solve on new moduli of the same geometry (``LinearSolver(..., preconditioner=base)``
and ``solve(initial_u=...)``): a therapy scenario or a sweep point reuses the first set-up.

Reference: SciPy ``spsolve`` on the free block of the new matrix. CG runs to a relative residual
of 1e-12 so that the displacement error (at most cond(K_FF) times the residual; cond is ~1e5 for
these boxes with a 200x modulus contrast) stays below the 1e-8 the tests ask for.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import femur_fe as ff
from femur_fe.errors import UnderConstrainedError
from femur_fe.fe import amg, solvers
from femur_fe.fe.boxes import structured_mesh


def box(cell_type: str):
    mesh, params = structured_mesh((4, 4, 6), mapping=lambda p: p * np.array([10.0, 10.0, 15.0]),
                                   cell_type=cell_type)
    c = mesh.cell_centroids()
    rng = np.random.default_rng(1)
    young = np.exp(rng.uniform(np.log(100.0), np.log(20000.0), mesh.n_cells))  # 100-20,000 MPa
    # a therapy-like change: E times a smooth factor in [0.8, 1.25] (as in benchmarks/bench_speed.py)
    factor = np.exp(np.log(1.25) * np.sin(0.3 * c[:, 0]) * np.cos(0.2 * c[:, 2]))
    bottom = np.flatnonzero(params[:, 2] == 0.0)
    top = np.flatnonzero(params[:, 2] == 1.0)
    return mesh, young, young * factor, bottom, top


def spsolve_reference(k, fixed, values, f):
    n = k.shape[0]
    g = np.zeros(n)
    g[fixed] = values
    free = np.setdiff1d(np.arange(n), fixed)
    kc = k.tocsr()
    u = g.copy()
    u[free] = spla.spsolve(kc[free][:, free].tocsc(), (f - kc @ g)[free])
    return u


def rel_err(u, ref_u):
    return np.abs(u - ref_u).max() / np.abs(ref_u).max()


@pytest.mark.parametrize("cell_type", ["tetra", "tetra10", "hexahedron"])
def test_reuse_on_new_moduli_agrees_with_spsolve(cell_type, monkeypatch):
    mesh, young, young2, bottom, top = box(cell_type)
    asm = ff.fe.StiffnessAssembler(mesh, 0.3)
    # clamped bottom; top pushed down 0.05 mm and loaded sideways
    fixed = np.concatenate([(3 * bottom[:, None] + np.arange(3)).ravel(), 3 * top + 2])
    values = np.concatenate([np.zeros(3 * len(bottom)), np.full(len(top), -0.05)])
    f = np.zeros(3 * mesh.n_points)
    f[3 * top] = 50.0 / len(top)
    base = ff.fe.LinearSolver(asm.assemble(young, format="bsr"), fixed, points=mesh.points, method="amg",
                              rtol=1e-12)
    u1 = base.solve(f, values).u
    k2 = asm.assemble(young2, format="bsr")
    want = spsolve_reference(k2, fixed, values, f)
    checks = []
    monkeypatch.setattr(solvers.LinearSolver, "_check_constraints", lambda self, mesh: checks.append(1))
    reused = ff.fe.LinearSolver(k2, fixed, points=mesh.points, method="amg", rtol=1e-12, preconditioner=base)
    assert checks == []  # same fixed DOFs, points and pattern: the base's constraint check holds
    sol = reused.solve(f, values, initial_u=u1)
    assert sol.report.method == "amg-reuse" and reused.amg is base.amg  # a moderate change: no rebuild
    assert sol.report.residual <= 1e-12
    assert rel_err(sol.u, want) <= 1e-8
    np.testing.assert_array_equal(sol.u[fixed], values)
    # the reactions balance the load: K u - f vanishes at the free DOFs
    free = np.setdiff1d(np.arange(k2.shape[0]), fixed)
    assert np.abs(sol.reactions[free]).max() <= 1e-8 * np.abs(sol.reactions).max()
    # the previous displacement is a better start than zero with the same hierarchy
    cold = ff.fe.LinearSolver(k2, fixed, points=mesh.points, method="amg", rtol=1e-12, preconditioner=base)
    assert sol.report.iterations < cold.solve(f, values).report.iterations


def test_reuse_checks_constraints_that_differ():
    mesh, young, young2, bottom, top = box("tetra")
    asm = ff.fe.StiffnessAssembler(mesh, 0.3)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    base = ff.fe.LinearSolver(asm.assemble(young, format="bsr"), fixed, points=mesh.points, method="amg")
    k2 = asm.assemble(young2, format="bsr")
    with pytest.raises(UnderConstrainedError):  # only z held: the check runs again and refuses
        ff.fe.LinearSolver(k2, 3 * bottom + 2, points=mesh.points, method="amg", preconditioner=base)
    # the same fixed DOFs but another pattern (the cells at a clamped corner removed): checked again
    keep = ~np.isin(mesh.cells, bottom[:1]).any(axis=1)
    cut = ff.fe.StiffnessAssembler(ff.fe.Mesh(mesh.points, mesh.cells[keep], mesh.cell_type), 0.3)
    k3 = cut.assemble(young2[keep], format="bsr")
    assert k3.indptr[-1] < k2.indptr[-1]
    assert not ff.fe.LinearSolver(k3, fixed, points=mesh.points, method="direct")._checked_by(base)
    assert ff.fe.LinearSolver(k2, fixed, points=mesh.points, method="direct")._checked_by(base)


def test_pcg_guess_scaling_and_residual():
    """amg.pcg from a guess: the scaled guess's residual is formed without a second product and
    the returned residual is the true one."""
    rng = np.random.default_rng(0)
    n = 200
    a = sp.random(n, n, density=0.05, random_state=1)
    a = (a @ a.T + sp.identity(n) * 5.0).tocsr()
    b = rng.standard_normal(n)
    x_true = spla.spsolve(a.tocsc(), b)
    calls = [0]

    def matvec(x):
        calls[0] += 1
        return a @ x

    def jacobi(r):
        return r / a.diagonal()

    x, its, res = amg.pcg(matvec, b, jacobi, rtol=1e-12, maxiter=500, x0=1.7 * x_true)
    assert its == 0 and res <= 1e-12  # a multiple of the solution is scaled back to it
    assert calls[0] == 1
    x0 = x_true + 0.1 * rng.standard_normal(n)
    calls[0] = 0
    x, its, res = amg.pcg(matvec, b, jacobi, rtol=1e-10, maxiter=500, x0=x0)
    assert res == pytest.approx(np.linalg.norm(b - a @ x) / np.linalg.norm(b), rel=1e-6) and res <= 1e-10
    assert calls[0] == its + 2  # the guess, one product per iteration, the final true residual
    np.testing.assert_allclose(x, x_true, rtol=0, atol=1e-8 * np.abs(x_true).max())
