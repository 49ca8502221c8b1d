"""Smoothed-aggregation AMG (femur_fe.fe.amg, femur_fe.fe._amg): kernels vs NumPy twins, hierarchy
vs dense products, AMG-CG variants vs the direct solution, re-use for new moduli."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
import scipy.sparse as sp

import femur_fe as ff
from femur_fe.fe import reference as ref
from femur_fe.fe import _amg, amg
from femur_fe.fe.boxes import structured_mesh

RNG = np.random.default_rng(7)


def random_bsr(nb: int, mb: int, r: int, c: int, density: float, seed: int) -> sp.bsr_matrix:
    rng = np.random.default_rng(seed)
    pat = sp.random(nb, mb, density=density, random_state=seed, format="csr")
    pat.sort_indices()
    data = rng.standard_normal((pat.nnz, r, c))
    return sp.bsr_matrix((data, pat.indices.astype(np.int32), pat.indptr.astype(np.int32)), shape=(nb * r, mb * c))


@pytest.mark.parametrize("r,c", [(3, 3), (3, 6), (6, 6), (2, 5)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_bsr_products_match_twin(r, c, n_threads):
    a = random_bsr(37, 23, r, c, 0.15, seed=r * 10 + c)
    dense = ref.bsr_to_dense(a.indptr, a.indices, a.data, 23)
    x = RNG.standard_normal(a.shape[1])
    y = np.full(a.shape[0], 3.0)
    _amg.bsr_matvec(a.indptr, a.indices, a.data, x, y, False, n_threads)
    # float64 kernels sum ~10 products per entry: 1e-12 relative is far above round-off
    np.testing.assert_allclose(y, dense @ x, rtol=1e-12, atol=1e-12 * np.abs(dense @ x).max())
    y0 = RNG.standard_normal(a.shape[0])
    y = y0.copy()
    _amg.bsr_matvec(a.indptr, a.indices, a.data, x, y, True, n_threads)
    np.testing.assert_allclose(y, y0 + dense @ x, rtol=1e-12, atol=1e-12)
    xr = RNG.standard_normal(a.shape[0])
    yr = np.empty(a.shape[1])
    _amg.bsr_rmatvec(a.indptr, a.indices, a.data, xr, yr, np.empty((n_threads, a.shape[1])), n_threads)
    np.testing.assert_allclose(yr, dense.T @ xr, rtol=1e-12, atol=1e-12 * np.abs(dense.T @ xr).max())
    # float32: single-precision round-off of ~10-term sums
    y32 = np.empty(a.shape[0], dtype=np.float32)
    _amg.bsr_matvec(a.indptr, a.indices, a.data.astype(np.float32), x.astype(np.float32), y32, False, n_threads)
    np.testing.assert_allclose(y32, dense @ x, rtol=1e-5, atol=1e-5 * np.abs(dense @ x).max())


def small_problem(cell_type="tetra", shape=(5, 5, 7), seed=0):
    mesh, params = structured_mesh(shape, mapping=lambda p: p * np.array([10.0, 10.0, 14.0]), cell_type=cell_type)
    rng = np.random.default_rng(seed)
    young = np.exp(rng.uniform(np.log(100.0), np.log(20000.0), mesh.n_cells))  # 100-20,000 MPa
    k = ff.fe.StiffnessAssembler(mesh, 0.3).assemble(young, format="bsr")
    bottom = np.flatnonzero(params[:, 2] == 0.0)
    top = np.flatnonzero(params[:, 2] == 1.0)
    return mesh, params, young, k, bottom, top


def test_chebyshev_kernels_match_twin():
    mesh, params, young, k, bottom, top = small_problem()
    pinned = np.zeros(k.shape[0], bool)
    pinned[(3 * bottom[:, None] + np.arange(3)).ravel()] = True
    a = amg.pin_dofs(k, pinned, np.float64)
    dense = a.toarray()
    dinv = np.linalg.inv(amg.block_diagonal(a))
    b = RNG.standard_normal(k.shape[0])
    x0 = RNG.standard_normal(k.shape[0])
    for degree in (1, 2, 3):
        x = x0.copy()
        r = np.empty_like(x)
        d0, d1 = np.empty_like(x), np.empty_like(x)
        lower, upper = 0.2, 2.5
        theta, delta = 0.5 * (upper + lower), 0.5 * (upper - lower)
        sigma = theta / delta
        _amg.bsr_residual(a.indptr, a.indices, a.data, x, b, r, 2)
        np.testing.assert_allclose(r, b - dense @ x, rtol=1e-12, atol=1e-10 * np.abs(r).max())
        _amg.cheb_first(dinv, r, d0, x, 1.0 / theta, 2)
        rho = 1.0 / sigma
        for _ in range(degree - 1):
            rho_new = 1.0 / (2.0 * sigma - rho)
            _amg.cheb_step(a.indptr, a.indices, a.data, dinv, d0, d1, r, x, rho_new * rho, 2.0 * rho_new / delta, 2)
            d0, d1 = d1, d0
            rho = rho_new
        want = ref.chebyshev_smooth(dense, dinv, b, x0, lower, upper, degree)
        # a few dense products of a matrix with entries ~1e4: 1e-10 relative to the scale of x
        np.testing.assert_allclose(x, want, rtol=0, atol=1e-10 * np.abs(want).max())


def test_pin_dofs_is_identity_on_prescribed_dofs():
    mesh, params, young, k, bottom, top = small_problem()
    pinned = np.zeros(k.shape[0], bool)
    pinned[(3 * bottom[:, None] + np.arange(3)).ravel()] = True
    pinned[3 * top + 2] = True  # partially prescribed nodes
    got = amg.pin_dofs(k, pinned, np.float64).toarray()
    want = k.toarray()
    want[pinned] = 0.0
    want[:, pinned] = 0.0
    want[pinned, pinned] = 1.0
    assert np.array_equal(got, want)


@pytest.mark.parametrize("cell_type", ["tetra", "tetra10", "hexahedron"])
def test_hierarchy_products_match_dense(cell_type):
    shape = (2, 2, 3) if cell_type == "tetra10" else (4, 4, 6)
    mesh, params, young, k, bottom, top = small_problem(cell_type, shape)
    pinned = np.zeros(k.shape[0], bool)
    pinned[(3 * bottom[:, None] + np.arange(3)).ravel()] = True
    pinned[3 * top + 2] = True
    h = amg.SmoothedAggregation(k, ff.fe.rigid_body_modes(mesh.points), pinned, dtype=np.float64, max_coarse=40,
                                n_threads=2)
    assert len(h.levels) >= 2
    for lvl, nxt in zip(h.levels[:-1], h.levels[1:]):
        a = lvl.A.toarray()
        g = lvl.geo
        r, c = g.tblk.shape[1:]
        t = np.zeros((a.shape[0], g.n_coarse * c))
        for i, j in enumerate(g.agg):
            if j >= 0:
                t[i * r:(i + 1) * r, j * c:(j + 1) * c] = g.tblk[i]
        dinv = lvl.dinv.astype(np.float64)
        p = ref.smoothed_prolongator(a, dinv, t, amg.PROLONGATION_OMEGA / lvl.lmax)
        # float64 sums of ~30 products: 1e-12 of the largest entry
        np.testing.assert_allclose(lvl.P.toarray(), p, rtol=0, atol=1e-12 * np.abs(p).max())
        ac = p.T @ a @ p
        np.testing.assert_allclose(nxt.A.toarray(), ac, rtol=0, atol=1e-12 * np.abs(ac).max())
        # the Lanczos estimate of the largest eigenvalue of D^-1 A is a Ritz value (a lower
        # bound) within 10 %, so the Chebyshev interval [., 1.1 lmax] covers the spectrum
        dmat = ref.bsr_to_dense(np.arange(len(dinv) + 1), np.arange(len(dinv)), np.linalg.inv(dinv), len(dinv))
        ev = sla.eigh(a, dmat, eigvals_only=True, subset_by_index=[len(a) - 1, len(a) - 1])[0]
        assert 0.9 * ev <= lvl.lmax <= ev * (1 + 1e-8) and amg.CHEB_SAFETY * lvl.lmax >= ev


def test_set_up_does_not_depend_on_thread_count():
    mesh, params, young, k, bottom, top = small_problem("tetra", (6, 6, 9))
    pinned = np.zeros(k.shape[0], bool)
    pinned[(3 * bottom[:, None] + np.arange(3)).ravel()] = True
    old = amg.SERIAL_BELOW
    amg.SERIAL_BELOW = 0  # run every level on the requested threads
    try:
        h1 = amg.SmoothedAggregation(k, ff.fe.rigid_body_modes(mesh.points), pinned, max_coarse=60, n_threads=1)
        h2 = amg.SmoothedAggregation(k, ff.fe.rigid_body_modes(mesh.points), pinned, max_coarse=60, n_threads=2)
        b = RNG.standard_normal(k.shape[0])
        for l1, l2 in zip(h1.levels, h2.levels):
            assert np.array_equal(l1.A.data, l2.A.data)
            if l1.P is not None:
                assert np.array_equal(l1.P.data, l2.P.data)
        # every kernel sums in a fixed order: the V-cycle is bitwise the same
        np.testing.assert_array_equal(h1(b), h2(b))
    finally:
        amg.SERIAL_BELOW = old


def direct_reference(k, fixed, values, f):
    n = k.shape[0]
    is_fixed = np.zeros(n, bool)
    is_fixed[fixed] = True
    g = np.zeros(n)
    g[fixed] = values
    free = np.flatnonzero(~is_fixed)
    kc = k.tocsr()
    u = g.copy()
    u[free] = sp.linalg.spsolve(kc[free][:, free].tocsc(), (f - kc @ g)[free])
    return u


def rel_err(u, ref_u):
    return np.abs(u - ref_u).max() / np.abs(ref_u).max()


@pytest.mark.parametrize("cell_type", ["tetra", "tetra10", "hexahedron"])
@pytest.mark.parametrize("fmt", ["bsr", "csr"])
def test_amg_agrees_with_direct(cell_type, fmt):
    mesh, params, young, k, bottom, top = small_problem(cell_type, (5, 5, 7))
    fixed = np.concatenate([(3 * bottom[:, None] + np.arange(3)).ravel(), 3 * top + 2])
    values = np.concatenate([np.zeros(3 * len(bottom)), np.full(len(top), -0.05)])  # mm
    f = np.zeros(k.shape[0])
    f[3 * top] = 50.0 / len(top)
    kin = k if fmt == "bsr" else k.tocsr()
    sol = ff.fe.LinearSolver(kin, fixed, points=mesh.points, method="amg", rtol=1e-12).solve(f, values)
    assert sol.report.method == "amg-cg" and sol.report.residual <= 1e-12
    # CG to 1e-12 on a system of condition ~1e6: the error is below 1e-8 of the displacement
    assert rel_err(sol.u, direct_reference(k, fixed, values, f)) <= 1e-8
    # reactions: the prescribed DOFs carry the load (force balance along x to CG accuracy)
    assert abs(sol.reactions[0::3].sum() + f[0::3].sum()) <= 1e-8 * 50.0


def test_amg_with_tie_agrees_with_direct():
    mesh, params, young, k, bottom, top = small_problem("tetra", (5, 5, 7))
    cap = ff.fe.RigidTie(top, reference_point=mesh.points[top].mean(axis=0),
                      prescribed={"ux": 0.0, "uy": 0.0, "uz": -0.05, "rx": 0.0, "ry": 0.0}, name="cap")
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    f = np.zeros(k.shape[0])
    a = ff.fe.LinearSolver(k, fixed, points=mesh.points, method="amg", constraints=[cap], rtol=1e-12).solve(f)
    d = ff.fe.LinearSolver(k.tocsr(), fixed, points=mesh.points, method="direct", constraints=[cap]).solve(f)
    assert rel_err(a.u, d.u) <= 1e-8
    np.testing.assert_allclose(a.ties["cap"].force, d.ties["cap"].force, rtol=1e-7)


def test_reuse_for_new_moduli_matches_fresh_set_up(monkeypatch):
    mesh, params, young, k, bottom, top = small_problem("tetra", (5, 5, 8))
    asm = ff.fe.StiffnessAssembler(mesh, 0.3)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    f = np.zeros(k.shape[0])
    f[3 * top + 2] = -100.0 / len(top)
    base = ff.fe.LinearSolver(k, fixed, points=mesh.points, method="amg", rtol=1e-12)
    u_base = base.solve(f).u
    young2 = young * np.exp(np.random.default_rng(3).uniform(-1.0, 1.0, mesh.n_cells))  # a large change
    k2 = asm.assemble(young2, format="bsr")
    fresh = ff.fe.LinearSolver(k2, fixed, points=mesh.points, method="amg", rtol=1e-12)
    s_fresh = fresh.solve(f)
    want = direct_reference(k2, fixed, np.zeros(len(fixed)), f)
    assert rel_err(s_fresh.u, want) <= 1e-8
    # 1) a moderate change (+-10 %, a therapy scenario): the base hierarchy as it is
    k3 = asm.assemble(young * np.random.default_rng(4).uniform(0.9, 1.1, mesh.n_cells), format="bsr")
    reused = ff.fe.LinearSolver(k3, fixed, points=mesh.points, method="amg", rtol=1e-12, preconditioner=base)
    s_reused = reused.solve(f, initial_u=u_base)
    assert reused.method == "amg-reuse" and reused.amg is base.amg
    assert rel_err(s_reused.u, direct_reference(k3, fixed, np.zeros(len(fixed)), f)) <= 1e-8
    # a large change: CG with the base hierarchy gives up after 1.5x its iterations, the
    # hierarchy is rebuilt and CG goes on
    big = ff.fe.LinearSolver(k2, fixed, points=mesh.points, method="amg", rtol=1e-12, preconditioner=base)
    assert rel_err(big.solve(f).u, want) <= 1e-8
    # 2) forced rebuild on the base's aggregates: the very hierarchy of a fresh set-up
    monkeypatch.setattr(ff.fe.solvers, "REUSE_MIN_ITERATIONS", 1)
    monkeypatch.setattr(ff.fe.solvers, "REUSE_ITERATION_FACTOR", 1e-3)
    rebuilt = ff.fe.LinearSolver(k2, fixed, points=mesh.points, method="amg", rtol=1e-12, preconditioner=base)
    s_rebuilt = rebuilt.solve(f)
    assert rebuilt.amg is not base.amg
    for l1, l2 in zip(rebuilt.amg.levels, fresh.amg.levels):
        assert np.array_equal(l1.A.data, l2.A.data)
        assert (l1.P is None) == (l2.P is None) and (l1.P is None or np.array_equal(l1.P.data, l2.P.data))
    assert rel_err(s_rebuilt.u, want) <= 1e-8
    # a further solve uses the rebuilt hierarchy from the start: the fresh iteration count
    assert rebuilt.solve(f).report.iterations == s_fresh.report.iterations
