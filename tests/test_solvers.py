"""Tests of femur_fe.fe.solvers and femur_fe.fe.constraints.

Stiffness matrices are assembled independently with scikit-fem (the reference assembler)
on tet4 boxes; scikit-fem's vector P1 DOFs are already interleaved (3 * node + component),
which the first test checks through the rigid-body modes.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp

import femur_fe as ff
from femur_fe.errors import LoadCaseError, SolverError, UnderConstrainedError
from femur_fe.fe.constraints import RigidTie, TieReduction
from femur_fe.fe.solvers import _have_cholmod

skfem = pytest.importorskip("skfem")
from skfem.helpers import ddot, sym_grad, trace  # noqa: E402


@skfem.BilinearForm
def _elasticity(u, v, w):
    nu = 0.3
    lam = w.E * nu / ((1 + nu) * (1 - 2 * nu))
    mu = w.E / (2 * (1 + nu))
    eu, ev = sym_grad(u), sym_grad(v)
    return 2 * mu * ddot(eu, ev) + lam * trace(eu) * trace(ev)


def box(n=(4, 4, 6), size=(10.0, 10.0, 15.0), young=None, seed=0, offset=(0.0, 0.0, 0.0)):
    """tet4 box [0,size] (mm) with n cells per side; returns points (N,3), cells (M,4), K (csr)."""
    m = skfem.MeshTet.init_tensor(*[np.linspace(0, s, k + 1) + o for s, k, o in zip(size, n, offset)])
    basis = skfem.Basis(m, skfem.ElementVector(skfem.ElementTetP1()))
    if young is None:
        # heterogeneous E (log-normal around 1000 MPa, factor ~e^±1) so that the tests
        # are not special to a homogeneous material
        young = 1000.0 * np.exp(np.random.default_rng(seed).normal(size=m.t.shape[1]))
    e_qp = np.repeat(np.asarray(young, dtype=float).reshape(-1, 1) * np.ones((m.t.shape[1], 1)),
                     basis.X.shape[1], axis=1)
    k = _elasticity.assemble(basis, E=e_qp).tocsr()
    return m.p.T.copy(), m.t.T.copy(), k


def dofs(nodes, comps=(0, 1, 2)):
    return (3 * np.asarray(nodes)[:, None] + np.asarray(comps)).ravel()


@pytest.fixture(scope="module")
def column():
    """Box column, bottom z=0 clamped, top z=15 loaded by a uniform 100 N (x) + -300 N (z)."""
    pts, cells, k = box()
    bottom = np.flatnonzero(pts[:, 2] < 1e-9)
    top = np.flatnonzero(pts[:, 2] > 15 - 1e-9)
    f = np.zeros(k.shape[0])
    f[3 * top + 0] = 100.0 / len(top)
    f[3 * top + 2] = -300.0 / len(top)
    return dict(points=pts, cells=cells, K=k, bottom=bottom, top=top, f=f, fixed=dofs(bottom))


def test_rigid_body_modes_are_in_the_kernel_of_K(column):
    b = ff.fe.rigid_body_modes(column["points"])
    assert b.shape == (3 * len(column["points"]), 6)
    kb = column["K"] @ b
    # K B = 0 up to round-off: |K| ~ E h ~ 1e3 * 2.5 N/mm, |B| ~ 10 mm -> scale 1e4, eps 1e-16
    assert np.abs(kb).max() < 1e-9 * abs(column["K"]).max() * np.abs(b).max()
    # rotation about z at the centroid: u = (-(y - cy), x - cx, 0)
    c = column["points"].mean(axis=0)
    np.testing.assert_allclose(b[0::3, 5], -(column["points"][:, 1] - c[1]))
    np.testing.assert_allclose(b[1::3, 5], column["points"][:, 0] - c[0])


def _dense_reference(k, f, fixed, g):
    """Independent elimination with a dense solve."""
    kd = k.toarray()
    n = kd.shape[0]
    free = np.setdiff1d(np.arange(n), fixed)
    u = np.zeros(n)
    u[fixed] = g[fixed]
    u[free] = np.linalg.solve(kd[np.ix_(free, free)], f[free] - kd[np.ix_(free, fixed)] @ u[fixed])
    return u


def test_direct_matches_dense_elimination_and_reactions_balance(column):
    k, f, fixed = column["K"], column["f"], column["fixed"]
    sol = ff.fe.solve(k, f, fixed, points=column["points"], method="direct-superlu")
    ref = _dense_reference(k, f, fixed, np.zeros_like(f))
    # same linear system, two factorisations: agreement to ~cond * eps ~ 1e-10 relative
    np.testing.assert_allclose(sol.u, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    # reactions at the support balance the applied load (100, 0, -300) N to 1e-8 relative
    r = sol.reaction_force(column["bottom"])
    np.testing.assert_allclose(r, [-100.0, 0.0, 300.0], rtol=0, atol=1e-8 * 300)
    # and are zero (round-off) where nothing is constrained
    free = np.setdiff1d(np.arange(len(f)), fixed)
    assert np.abs(sol.reactions[free]).max() < 1e-9 * 300
    assert sol.report.method == "direct-superlu" and sol.report.n_free == len(free)


@pytest.mark.parametrize("method", ["amg", "direct-cholmod"])
def test_amg_and_cholmod_agree_with_superlu(column, method):
    if method == "direct-cholmod" and not _have_cholmod():
        pytest.skip("scikit-sparse (CHOLMOD) not installed")
    k, f, fixed = column["K"], column["f"], column["fixed"]
    ref = ff.fe.solve(k, f, fixed, points=column["points"], method="direct-superlu").u
    sol = ff.fe.solve(k, f, fixed, points=column["points"], method=method, rtol=1e-10)
    # CG to rtol 1e-10 in the residual; with cond(K_FF) ~ 1e4 the error is << 1e-6
    np.testing.assert_allclose(sol.u, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    if method == "amg":
        assert 0 < sol.report.iterations < 60
        assert sol.report.residual <= 1e-10


def test_reuse_setup_for_many_loads_and_prescribed_values(column):
    k, f, fixed, pts = column["K"], column["f"], column["fixed"], column["points"]
    top = column["top"]
    for method in ("direct-superlu", "amg"):
        solver = ff.fe.LinearSolver(k, fixed, points=pts, method=method, rtol=1e-11)
        s1 = solver.solve(f)
        # prescribe a rigid lift of the bottom (the load is unchanged): u = s1.u + lift
        g = np.zeros_like(f)
        g[2::3] = 0.05
        s2 = solver.solve(f, fixed_values=g)
        np.testing.assert_allclose(s2.u[2::3], s1.u[2::3] + 0.05, atol=1e-8)
        np.testing.assert_allclose(s2.reactions, s1.reactions, atol=1e-6)
        # values given per fixed DOF, in the order of fixed_dofs
        s3 = solver.solve(f, fixed_values=g[fixed])
        np.testing.assert_allclose(s3.u, s2.u, atol=1e-10)
        # several load cases at once: columns equal the single solves
        f2 = np.zeros_like(f)
        f2[3 * top + 1] = 50.0 / len(top)
        both = solver.solve(np.column_stack([f, f2]))
        single2 = solver.solve(f2)
        np.testing.assert_allclose(both.u[:, 0], s1.u, atol=1e-7 * np.abs(s1.u).max())
        np.testing.assert_allclose(both.u[:, 1], single2.u, atol=1e-7 * np.abs(single2.u).max())
        assert both.reaction_force(column["bottom"]).shape == (2, 3)
        np.testing.assert_allclose(both.reaction_force(column["bottom"])[1], [0, -50.0, 0], atol=1e-6)
        assert both.report.n_rhs == 2


def test_report_is_readable_and_json(column):
    sol = ff.fe.solve(column["K"], column["f"], column["fixed"], points=column["points"], method="amg")
    line = str(sol.report)
    assert "amg-cg" in line and "iterations" in line and "\n" not in line
    d = json.loads(json.dumps(sol.as_dict()))
    for key in ("method", "iterations", "residual", "setup_seconds", "solve_seconds",
                "memory_estimate_bytes", "n_dofs", "n_free"):
        assert key in d["report"]
    assert d["report"]["memory_estimate_bytes"] > 0
    # every iterative method reports its iterations; a direct factorisation does not iterate
    sizes = (0.0, 0.1, 0.2, 2**20, 300, 200)
    for method in ("voxel-mg-cg", "cg-reuse", "amg-reuse"):
        assert "17 iterations" in str(ff.fe.SolveReport(method, 17, 1e-9, *sizes)), method
    assert "iterations" not in str(ff.fe.SolveReport("direct-superlu", 0, 1e-15, *sizes))


def test_auto_picks_direct_for_small_problems(column):
    s = ff.fe.LinearSolver(column["K"], column["fixed"], points=column["points"])
    assert s.method.startswith("direct")


def test_cg_nonconvergence_raises_with_advice():
    # big enough (2873 nodes > max_coarse = 1000 block rows: the AMG works on 3x3 node blocks) for a
    # multilevel hierarchy; 2 CG iterations cannot reach 1e-12
    pts, _, k = box(n=(12, 12, 16))
    bottom = np.flatnonzero(pts[:, 2] < 1e-9)
    f = np.zeros(k.shape[0])
    f[2::3] = -1.0
    with pytest.raises(SolverError, match=r"did not converge: 2 iterations.*method='direct'"):
        ff.fe.solve(k, f, dofs(bottom), points=pts, method="amg", maxiter=2, rtol=1e-12)


# ---------------------------------------------------------------------- under-constraint
def test_under_constrained_names_free_modes(column):
    k, pts, bottom = column["K"], column["points"], column["bottom"]
    # only u_z fixed on the bottom: x, y translations and rotation about z are free
    with pytest.raises(UnderConstrainedError) as exc:
        ff.fe.LinearSolver(k, dofs(bottom, [2]), points=pts)
    msg = str(exc.value)
    assert "translation along x" in msg and "translation along y" in msg and "rotation about z" in msg
    assert "translation along z" not in msg and "rotation about x" not in msg
    assert "Fix:" in msg
    # one node fully fixed: the three rotations about that node are free
    with pytest.raises(UnderConstrainedError) as exc:
        ff.fe.LinearSolver(k, dofs(bottom[:1]), points=pts)
    msg = str(exc.value)
    assert np.allclose(pts[bottom[0]], 0)
    # the axes go through the fixed node (0, 0, 0); named by their point closest to the
    # centroid (5, 5, 7.5)
    assert "rotation about x (axis through (5, 0, 0) mm)" in msg
    assert "rotation about y (axis through (0, 5, 0) mm)" in msg
    assert "rotation about z (axis through (0, 0, 7.5) mm)" in msg
    assert "translation" not in msg
    # without coordinates only translations can be checked
    with pytest.raises(UnderConstrainedError, match="translation along x"):
        ff.fe.LinearSolver(k, dofs(bottom, [2]))
    # three non-collinear nodes fully fixed restrain everything
    ff.fe.LinearSolver(k, dofs(bottom[[0, 4, 20]]), points=pts, method="direct-superlu")


def test_under_constrained_second_part_is_named():
    p1, c1, k1 = box(n=(2, 2, 2))
    p2, c2, k2 = box(n=(2, 2, 2), offset=(20.0, 0.0, 0.0), seed=1)
    pts = np.vstack([p1, p2])
    k = sp.block_diag([k1, k2]).tocsr()
    mesh = ff.Mesh(pts, np.vstack([c1, c2 + len(p1)]), "tetra")
    fixed = dofs(np.flatnonzero(pts[:, 2] < 1e-9)[: 9])  # the bottom of the first box only
    assert np.all(fixed // 3 < len(p1))
    for where in (pts, mesh):  # components from K's pattern, and from the mesh topology
        with pytest.raises(UnderConstrainedError) as exc:
            ff.fe.LinearSolver(k, fixed, points=where)
        msg = str(exc.value)
        assert f"e.g. node {len(p1)}" in msg  # the second part
        assert msg.count("\n  part ") == 1
        for name in ("translation along x", "translation along y", "translation along z",
                     "rotation about x", "rotation about y", "rotation about z"):
            assert name in msg


def test_orphan_nodes_are_fixed_with_warning(column, caplog):
    k, pts, f, fixed = column["K"], column["points"], column["f"], column["fixed"]
    n = len(pts)
    pts2 = np.vstack([pts, [[50.0, 50.0, 50.0], [60.0, 0.0, 0.0]]])
    k2 = sp.block_diag([k, sp.csr_matrix((6, 6))]).tocsr()
    f2 = np.r_[f, np.zeros(6)]
    with caplog.at_level(logging.WARNING, logger="femur_fe.fe.solvers"):
        sol = ff.fe.solve(k2, f2, fixed, points=pts2, method="direct-superlu")
    assert "2 orphan node(s)" in caplog.text
    assert np.all(sol.u[3 * n:] == 0)
    ref = ff.fe.solve(k, f, fixed, points=pts, method="direct-superlu")
    np.testing.assert_allclose(sol.u[: 3 * n], ref.u, atol=1e-12)
    assert sol.report.n_orphan_nodes == 2


def test_bad_inputs_are_named(column):
    k, pts = column["K"], column["points"]
    with pytest.raises(SolverError, match="fixed_dofs must be in"):
        ff.fe.LinearSolver(k, [0, 3 * len(pts)], points=pts)
    with pytest.raises(SolverError, match="duplicates"):
        ff.fe.LinearSolver(k, [0, 0, 1], points=pts)
    with pytest.raises(SolverError, match="method must be one of"):
        ff.fe.LinearSolver(k, column["fixed"], points=pts, method="cholesky")
    with pytest.raises(SolverError, match="sparse"):
        ff.fe.LinearSolver(k.toarray(), column["fixed"], points=pts)
    s = ff.fe.LinearSolver(k, column["fixed"], points=pts, method="direct-superlu")
    with pytest.raises(SolverError, match="f must have shape"):
        s.solve(np.zeros(5))
    with pytest.raises(SolverError, match="fixed_values must have length"):
        s.solve(column["f"], fixed_values=np.zeros(7))
    with pytest.raises(SolverError, match="NaN"):
        s.solve(np.full(k.shape[0], np.nan))


# ---------------------------------------------------------------------- rigid ties
def test_tie_reduction_reproduces_rigid_motion(column):
    pts = column["points"]
    top = column["top"]
    tie = RigidTie(top, [5.0, 5.0, 20.0])
    red = TieReduction(len(pts), pts, [tie])
    z = np.zeros(red.n_z)
    d = red.tie_dof(0)
    z[d] = [0.1, -0.2, 0.3, 0.01, -0.02, 0.03]
    u = red.expand(z).reshape(-1, 3)
    expect = z[d[:3]] + np.cross(z[d[3:]], pts[top] - [5.0, 5.0, 20.0])
    np.testing.assert_allclose(u[top], expect, atol=1e-14)
    # the near-null space in z maps to the rigid-body modes of all nodes
    np.testing.assert_allclose(red.expand(red.near_null_space(pts)), ff.fe.rigid_body_modes(pts), atol=1e-12)


def test_fully_prescribed_tie_equals_dirichlet(column):
    k, pts, f, bottom, top = column["K"], column["points"], column["f"], column["bottom"], column["top"]
    delta = np.array([0.01, -0.02, -0.05])
    cap = RigidTie(top, [5.0, 5.0, 15.0], prescribed=dict(zip(("ux", "uy", "uz", "rx", "ry", "rz"),
                                                               [*delta, 0, 0, 0])), name="cap")
    tie_sol = ff.fe.solve(k, np.zeros_like(f), dofs(bottom), points=pts, method="direct-superlu", constraints=[cap])
    g = np.zeros_like(f)
    g[dofs(top)] = np.tile(delta, len(top))
    dir_sol = ff.fe.solve(k, np.zeros_like(f), np.r_[dofs(bottom), dofs(top)], g, points=pts,
                       method="direct-superlu")
    np.testing.assert_allclose(tie_sol.u, dir_sol.u, atol=1e-12)
    res = tie_sol.ties["cap"]
    np.testing.assert_allclose(res.displacement, delta)
    np.testing.assert_allclose(res.rotation, 0)
    # the tie force is the sum of the Dirichlet reactions on the top nodes, the moment their
    # moment about the reference point; the support carries the opposite force
    np.testing.assert_allclose(res.force, dir_sol.reaction_force(top), rtol=1e-10)
    rt = dir_sol.reactions.reshape(-1, 3)[top]
    np.testing.assert_allclose(res.moment, np.cross(pts[top] - [5.0, 5.0, 15.0], rt).sum(axis=0),
                               rtol=1e-9, atol=1e-9 * np.abs(res.force).max())
    np.testing.assert_allclose(tie_sol.reaction_force(bottom), -res.force, rtol=1e-8)


@pytest.mark.parametrize("method", ["direct-superlu", "amg"])
def test_force_controlled_tie_and_displacement_control_agree(column, method):
    k, pts, bottom, top = column["K"], column["points"], column["bottom"], column["top"]
    zero = np.zeros(k.shape[0])
    ref_pt = [5.0, 5.0, 17.0]
    # displacement control: uz = -0.1 mm, everything else of the cap locked
    disp = RigidTie(top, ref_pt, prescribed={"ux": 0, "uy": 0, "uz": -0.1, "rx": 0, "ry": 0, "rz": 0}, name="cap")
    s1 = ff.fe.solve(k, zero, dofs(bottom), points=pts, method=method, constraints=[disp], rtol=1e-12)
    fz = s1.ties["cap"].force[2]
    assert fz < 0  # the cap pushes the column down
    # force control with the measured force on a free uz gives back uz = -0.1 mm
    force = RigidTie(top, ref_pt, prescribed=["ux", "uy", "rx", "ry", "rz"], force=[0, 0, fz], name="cap")
    solver = ff.fe.LinearSolver(k, dofs(bottom), points=pts, method=method, constraints=[force], rtol=1e-12)
    s2 = solver.solve(zero)
    np.testing.assert_allclose(s2.ties["cap"].displacement[2], -0.1, rtol=1e-7)
    np.testing.assert_allclose(s2.u, s1.u, atol=1e-7 * 0.1)
    np.testing.assert_allclose(s2.ties["cap"].force, s1.ties["cap"].force, rtol=1e-6, atol=1e-6 * abs(fz))
    # linear in the load, and the override works without a new set-up
    s3 = solver.solve(zero, tie_loads={"cap": [0, 0, 2 * fz, 0, 0, 0]})
    np.testing.assert_allclose(s3.ties["cap"].displacement[2], -0.2, rtol=1e-7)
    with pytest.raises(LoadCaseError, match="prescribed reference DOF"):
        solver.solve(zero, tie_loads={"cap": [1.0, 0, 0, 0, 0, 0]})
    with pytest.raises(SolverError, match="free in this solver"):
        solver.solve(zero, tie_values={"cap": {"uz": -1.0}})


def test_moment_on_free_rotation_is_balanced(column):
    k, pts, bottom, top = column["K"], column["points"], column["bottom"], column["top"]
    ref_pt = np.array([5.0, 5.0, 15.0])
    torque = np.array([0.0, 0.0, 2000.0])  # N mm about z
    cap = RigidTie(top, ref_pt, moment=torque, name="cap")  # all six reference DOFs free
    sol = ff.fe.solve(k, np.zeros(k.shape[0]), dofs(bottom), points=pts, method="direct-superlu", constraints=[cap])
    res = sol.ties["cap"]
    np.testing.assert_allclose(res.moment, torque, atol=1e-8 * 2000)
    np.testing.assert_allclose(res.force, 0, atol=1e-8 * 2000 / 10)
    # twist about z dominates (heterogeneous E couples a little bending)
    assert res.rotation[2] > 10 * np.abs(res.rotation[:2]).max()
    # global balance: the support reacts with the opposite torque about the same point
    rb = sol.reactions.reshape(-1, 3)[bottom]
    np.testing.assert_allclose(np.cross(pts[bottom] - ref_pt, rb).sum(axis=0), -torque, atol=1e-8 * 2000)


def test_tie_values_override_and_amg_with_ties_matches_direct(column):
    k, pts, bottom, top = column["K"], column["points"], column["bottom"], column["top"]
    zero = np.zeros(k.shape[0])
    cap = RigidTie(top, [5.0, 5.0, 15.0], prescribed={"uz": -0.1, "ux": 0, "uy": 0}, name="cap")  # rotations free
    d = ff.fe.LinearSolver(k, dofs(bottom), points=pts, method="direct-superlu", constraints=[cap])
    a = ff.fe.LinearSolver(k, dofs(bottom), points=pts, method="amg", constraints=[cap], rtol=1e-11)
    for val in (-0.1, -0.3):
        sd = d.solve(zero, tie_values={"cap": {"uz": val}})
        sa = a.solve(zero, tie_values={0: {"uz": val}})
        np.testing.assert_allclose(sa.u, sd.u, atol=1e-6 * abs(val))
        np.testing.assert_allclose(sd.ties["cap"].displacement[2], val)
        # free rotations carry no moment
        np.testing.assert_allclose(sd.ties["cap"].moment, 0, atol=1e-8 * np.abs(sd.ties["cap"].force).max() * 10)


def test_tie_joins_disconnected_parts():
    p1, c1, k1 = box(n=(2, 2, 2))
    p2, c2, k2 = box(n=(2, 2, 2), offset=(0.0, 0.0, 20.0), seed=1)
    pts = np.vstack([p1, p2])
    k = sp.block_diag([k1, k2]).tocsr()
    n1 = len(p1)
    bottom = np.flatnonzero(pts[:, 2] < 1e-9)
    top1 = np.flatnonzero(np.abs(pts[:, 2] - 15) < 1e-9)
    bot2 = np.flatnonzero(np.abs(pts[:, 2] - 20) < 1e-9)
    top2 = np.flatnonzero(np.abs(pts[:, 2] - 35) < 1e-9)
    f = np.zeros(k.shape[0])
    f[3 * top2 + 2] = -10.0 / len(top2)
    # without the tie the upper box floats
    with pytest.raises(UnderConstrainedError, match=f"e.g. node {n1}"):
        ff.fe.LinearSolver(k, dofs(bottom), points=pts)
    link = RigidTie(np.r_[top1, bot2], [5.0, 5.0, 17.5], name="link")  # a rigid spacer
    sol = ff.fe.solve(k, f, dofs(bottom), points=pts, constraints=[link], method="direct-superlu")
    np.testing.assert_allclose(sol.reaction_force(bottom), [0, 0, 10.0], atol=1e-9)
    # the spacer transmits the load: the upper box's bottom nodes sit on the spacer
    np.testing.assert_allclose(sol.reaction_force(bot2), [0, 0, 10.0], atol=1e-9)


def test_tie_errors_are_clear(column):
    k, pts, bottom, top = column["K"], column["points"], column["bottom"], column["top"]
    # collinear tie nodes with free rotations: a mechanism
    line = top[np.abs(pts[top, 1]) < 1e-9]
    with pytest.raises(UnderConstrainedError, match="collinear"):
        ff.fe.LinearSolver(k, dofs(bottom), points=pts, constraints=[RigidTie(line, [5, 0, 15])])
    # ... fine with prescribed rotations
    ff.fe.LinearSolver(k, dofs(bottom), points=pts, method="direct-superlu",
                    constraints=[RigidTie(line, [5, 0, 15], prescribed=["rx", "ry", "rz"])])
    with pytest.raises(LoadCaseError, match="also have fixed DOFs"):
        ff.fe.LinearSolver(k, dofs(bottom), points=pts, constraints=[RigidTie(bottom, [5, 5, 0])])
    with pytest.raises(LoadCaseError, match="share"):
        ff.fe.LinearSolver(k, dofs(bottom), points=pts,
                        constraints=[RigidTie(top, [0, 0, 0], name="a"), RigidTie(top[:3], [0, 0, 0], name="b")])
    with pytest.raises(LoadCaseError, match="unknown reference DOF 'uw'"):
        RigidTie(top, [0, 0, 0], prescribed={"uw": 1.0})
    with pytest.raises(LoadCaseError, match="either displacement-controlled or force-controlled"):
        RigidTie(top, [0, 0, 0], prescribed={"uz": -1.0}, force=[0, 0, 5.0])
    with pytest.raises(LoadCaseError, match="empty"):
        RigidTie([], [0, 0, 0])
    with pytest.raises(SolverError, match="points="):
        ff.fe.LinearSolver(k, dofs(bottom), constraints=[RigidTie(top, [0, 0, 0])])
