"""Tests of femur_fe.fe.nonlinear against analytic load-displacement curves.

* one hexahedron in uniaxial tension/compression: yield load E A eps_y, plateau (h = 0)
  or hardening line E A (eps_y + h (eps - eps_y));
* a bar of two segments in series (nu = 0, so each segment is exactly uniaxial): elastic
  line, first yield at A E1 eps_y1, then the analytic hardening line or the plastic
  plateau — the secant iterations must converge to it;
* a bar of two halves in parallel with different yield strains: first yield and the
  plateau E (A1 eps_y1 + A2 eps_y2) are analytic;
* loading through a RigidTie, density-dependent yield, non-convergence bookkeeping.
"""
from __future__ import annotations

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.analysis.failure import DensityYieldStress, MaxPrincipalStrain
from femur_fe.analysis.risk import summary_fields
from femur_fe.errors import LoadCaseError
from femur_fe.fe.nonlinear import (
    SecantYield,
    _PointMaterial,
    nonlinear_strength,
    principal_direction,
    principal_strain_extremes,
    secant_modulus,
)


def one_hex(size=(1.0, 1.0, 2.0)):
    a, b, c = size
    pts = np.array([[0, 0, 0], [a, 0, 0], [a, b, 0], [0, b, 0], [0, 0, c], [a, 0, c], [a, b, c], [0, b, c]],
                   dtype=float)
    return ff.Mesh(pts, np.arange(8)[None], "hexahedron")


def tet_box(n=(2, 2, 8), size=(10.0, 10.0, 40.0)):
    skfem = pytest.importorskip("skfem")
    m = skfem.MeshTet.init_tensor(*[np.linspace(0, s, k + 1) for s, k in zip(size, n)])
    pts, cells = m.p.T.copy(), m.t.T.copy()
    neg = np.linalg.det(pts[cells[:, 1:]] - pts[cells[:, :1]]) < 0
    cells[neg] = cells[neg][:, [0, 2, 1, 3]]
    return ff.Mesh(pts, cells, "tetra")


def axial_bcs(mesh, delta):
    """Bottom uz = 0 and top uz = delta, plus 3 DOFs against rigid motion (lateral strain free)."""
    pts = mesh.points
    top = np.flatnonzero(pts[:, 2] == pts[:, 2].max())
    bottom = np.flatnonzero(pts[:, 2] == 0.0)
    o = np.flatnonzero((pts == 0).all(axis=1))[0]
    x = np.flatnonzero((pts[:, 0] == pts[:, 0].max()) & (pts[:, 1] == 0) & (pts[:, 2] == 0))[0]
    fixed = np.r_[3 * bottom + 2, 3 * o, 3 * o + 1, 3 * x + 1, 3 * top + 2]
    values = np.r_[np.zeros(len(bottom) + 3), np.full(len(top), delta)]
    return fixed, values, top, bottom


@pytest.mark.parametrize("sign, limit", [(+1, 0.0073), (-1, 0.0104)])
@pytest.mark.parametrize("hardening", [0.0, 0.05])
def test_single_element_yield_and_plateau(sign, limit, hardening):
    young, area, length = 2000.0, 1.0, 2.0
    mesh = one_hex()
    dmax = 4 * limit * length
    fixed, values, top, _ = axial_bcs(mesh, sign * dmax)
    res = nonlinear_strength(mesh, np.full(1, young), fixed_dofs=fixed, fixed_values=values, load_nodes=top,
                             load_direction=[0, 0, sign], yield_model=SecantYield(hardening=hardening),
                             n_steps=6, rtol=1e-10, stop_at_peak=False)
    assert res.converged and res.report["mode"] == "explicit"
    # a single trilinear hex in uniaxial stress has a uniform strain: everything is exact
    assert res.elastic_stiffness_N_per_mm == pytest.approx(young * area / length, rel=1e-10)
    assert res.first_yield_force_N == pytest.approx(young * area * limit, rel=1e-10)
    assert res.first_yield_displacement_mm == pytest.approx(limit * length, rel=1e-10)
    eps = res.curve_displacement_mm / length
    expected = young * area * np.where(eps <= limit, eps, limit + hardening * (eps - limit))
    np.testing.assert_allclose(res.curve_force_N, expected, rtol=1e-9, atol=1e-9)
    assert res.peak_force_N == pytest.approx(expected.max(), rel=1e-9)
    assert res.peak_reached == (hardening == 0.0)
    assert all(s.iterations == 1 for s in res.steps)  # uniform strain: the predictor is exact


def _series_case(hardening):
    mesh = tet_box()
    seg1 = mesh.cell_centroids()[:, 2] < 20.0
    young = np.where(seg1, 1000.0, 3000.0)
    eps_t = np.where(seg1, 0.004, 0.009)
    return mesh, seg1, young, eps_t


@pytest.mark.parametrize("hardening", [0.1, 0.0])
def test_series_bar_first_yield_and_post_yield_curve(hardening):
    mesh, seg1, young, eps_t = _series_case(hardening)
    area, l1, l2, e1, e2, ey1 = 100.0, 20.0, 20.0, 1000.0, 3000.0, 0.004
    dmax = 0.5
    fixed, values, top, _ = axial_bcs(mesh, dmax)
    res = nonlinear_strength(mesh, young, poisson=0.0, fixed_dofs=fixed, fixed_values=values, load_nodes=top,
                             load_direction=[0, 0, 1], yield_model=SecantYield(eps_t, 0.0104, hardening),
                             n_steps=5, rtol=1e-9, stop_at_peak=False)
    assert res.converged
    sy = e1 * ey1
    d_fy = sy * (l1 / e1 + l2 / e2)
    assert res.first_yield_displacement_mm == pytest.approx(d_fy, rel=1e-10)
    assert res.first_yield_force_N == pytest.approx(sy * area, rel=1e-10)
    d = res.curve_displacement_mm
    if hardening > 0:
        post = (d - l1 * ey1 + l1 * sy / (hardening * e1)) / (l1 / (hardening * e1) + l2 / e2)
    else:
        post = np.full_like(d, sy)
    sigma = np.where(d <= d_fy, d / (l1 / e1 + l2 / e2), post)
    # energy-norm rtol 1e-9 -> forces to ~1e-8 relative
    np.testing.assert_allclose(res.curve_force_N, sigma * area, rtol=1e-7, atol=1e-9)
    assert max(s.iterations for s in res.steps) > 1  # the redistribution needs secant iterations
    if hardening == 0.0:
        assert res.peak_reached and res.peak_force_N == pytest.approx(sy * area, rel=1e-7)


def test_parallel_halves_first_yield_and_plateau():
    mesh = tet_box(n=(2, 2, 4))
    half1 = mesh.cell_centroids()[:, 0] < 5.0
    young = np.full(mesh.n_cells, 1500.0)
    eps_t = np.where(half1, 0.003, 0.006)
    fixed, values, top, _ = axial_bcs(mesh, 0.6)  # strain 0.015
    lines = []
    res = nonlinear_strength(mesh, young, fixed_dofs=fixed, fixed_values=values, load_nodes=top,
                             load_direction=[0, 0, 1], yield_model=SecantYield(eps_t, 0.0104), n_steps=6,
                             rtol=1e-10, stop_at_peak=False, adaptive=False, progress=lines.append)
    assert res.converged
    # yielded volume: half 1 (2000 mm^3) beyond strain 0.003, both halves (4000 mm^3) beyond 0.006
    # (the steps fall at strains 0.003 (first yield, r = 1: not yielded), 0.005, 0.007, ...)
    eps_steps = np.array([st.displacement_mm for st in res.steps]) / 40.0
    expected_v = np.where(eps_steps > 0.006 + 1e-9, 4000.0, np.where(eps_steps > 0.003 + 1e-9, 2000.0, 0.0))
    np.testing.assert_allclose([st.yielded_volume_percent for st in res.steps], 100.0 * expected_v / 4000.0,
                               rtol=1e-12)
    # one progress line per step with load, displacement, yielded volume and iterations
    assert len(lines) == len(res.steps)
    st = res.steps[1]
    assert lines[1].startswith(f"nonlinear step 2: load {st.force_N:.4g} N, plate displacement "
                               f"{st.displacement_mm:.4g} mm, yielded 50.00 % of the bone volume, "
                               f"{st.iterations} iterations ({st.linear_iterations} linear), ")
    # uniform strain stays the exact solution (same E and nu in both halves)
    assert res.first_yield_force_N == pytest.approx(1500.0 * 100.0 * 0.003, rel=1e-9)
    eps = res.curve_displacement_mm / 40.0
    expected = 1500.0 * (50.0 * np.minimum(eps, 0.003) + 50.0 * np.minimum(eps, 0.006))
    np.testing.assert_allclose(res.curve_force_N, expected, rtol=1e-8, atol=1e-9)
    assert res.peak_force_N == pytest.approx(1500.0 * (50 * 0.003 + 50 * 0.006), rel=1e-8)


@pytest.mark.parametrize("how", ["tie", "nodes"])
def test_load_through_rigid_tie_or_nodes_and_auto_displacement(how):
    mesh, seg1, young, eps_t = _series_case(0.0)
    pts = mesh.points
    top = np.flatnonzero(pts[:, 2] == 40.0)
    bottom = np.flatnonzero(pts[:, 2] == 0.0)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()  # clamped (exact with nu = 0)
    kw = dict(poisson=0.0, fixed_dofs=fixed, load_direction=[0, 0, 1], yield_model=SecantYield(eps_t, 0.0104),
              n_steps=8, rtol=1e-8)
    if how == "tie":
        cap = ff.fe.RigidTie(top, [5.0, 5.0, 40.0], prescribed={k: 0.0 for k in ("ux", "uy", "uz", "rx", "ry", "rz")},
                          name="cap")
        res = nonlinear_strength(mesh, young, ties=[cap], load_tie="cap", **kw)
    else:
        res = nonlinear_strength(mesh, young, load_nodes=top, **kw)
    assert res.report["mode"] == how
    assert res.converged and res.peak_reached and res.report["stop_reason"] == "peak reached"
    assert res.peak_force_N == pytest.approx(400.0, rel=1e-6)  # A * E1 * eps_y1
    # automatic final displacement: 25 x the first-yield displacement (plateau found before it)
    assert res.report["final_load_factor"] == pytest.approx(25 * res.first_yield_displacement_mm)
    assert res.peak_displacement_mm < res.report["final_load_factor"]
    out = summary_fields(nonlinear=res, site="hip", sex="female")
    assert out["strength_nonlinear_N"] == pytest.approx(400.0, rel=1e-6)
    assert out["classification"]["strength_source"] == "nonlinear"


def test_density_dependent_compressive_yield():
    mesh = one_hex()
    rho = np.array([0.25])
    law = DensityYieldStress()  # Kopperdahl 2002: sigma_y = -0.750 + 24.9 rho (QCT density)
    young = np.array([-34.7 + 3230 * 0.25])  # Kopperdahl 2002 linear E (J Orthop Res 20:801)
    ym = SecantYield.from_yield_stress(law, rho, young, tension_to_compression=0.9)
    fixed, values, top, _ = axial_bcs(mesh, -0.1)
    res = nonlinear_strength(mesh, young, fixed_dofs=fixed, fixed_values=values, load_nodes=top,
                             load_direction=[0, 0, -1], yield_model=ym, density=rho, rtol=1e-10)
    assert res.peak_reached
    assert res.peak_force_N == pytest.approx((-0.750 + 24.9 * 0.25) * 1.0, rel=1e-9)
    assert "density_yield_stress" in res.report["yield"]["source"]


def test_non_convergence_keeps_last_converged_step():
    mesh, seg1, young, eps_t = _series_case(0.1)
    fixed, values, top, _ = axial_bcs(mesh, 0.5)
    res = nonlinear_strength(mesh, young, poisson=0.0, fixed_dofs=fixed, fixed_values=values, load_nodes=top,
                             load_direction=[0, 0, 1], yield_model=SecantYield(eps_t, 0.0104, 0.1),
                             rtol=1e-12, max_iterations=1, max_cutbacks=1, stop_at_peak=False)
    assert not res.converged and not res.peak_reached
    assert "did not converge" in res.report["stop_reason"]
    # only the exact first-yield step converged; no made-up peak beyond it
    assert len(res.curve_force_N) == 2
    assert res.peak_force_N == pytest.approx(res.first_yield_force_N, rel=1e-12)
    assert res.steps[-1].converged is False and res.steps[-1].cutbacks == 1
    assert summary_fields(nonlinear=res)["strength_nonlinear_N"] is None


def test_secant_modulus_measure():
    eps = np.diag([0.0146, -0.3 * 0.0146, -0.3 * 0.0146])[None]  # r = 2 in tension
    es, r = secant_modulus(eps, np.array([1000.0]), 0.0073, 0.0104)
    assert r[0] == pytest.approx(2.0) and es[0] == pytest.approx(500.0)
    es_h, _ = secant_modulus(eps, np.array([1000.0]), 0.0073, 0.0104, hardening=0.1)
    assert es_h[0] == pytest.approx(1000 * 1.1 / 2)
    es_floor, _ = secant_modulus(eps * 1e4, np.array([1000.0]), 0.0073, 0.0104, min_ratio=1e-3)
    assert es_floor[0] == pytest.approx(1.0)


def test_bad_input_messages():
    mesh = one_hex()
    fixed, values, top, _ = axial_bcs(mesh, 0.1)
    with pytest.raises(LoadCaseError, match="load_nodes"):
        nonlinear_strength(mesh, np.ones(1) * 1000, fixed_dofs=fixed, fixed_values=values)
    with pytest.raises(LoadCaseError, match="flip load_direction"):
        nonlinear_strength(mesh, np.ones(1) * 1000, fixed_dofs=fixed, fixed_values=values, load_nodes=top,
                           load_direction=[0, 0, -1])
    with pytest.raises(LoadCaseError, match="percentage|fractions"):
        SecantYield(tension=0.73)
    assert SecantYield.from_criterion(MaxPrincipalStrain(tension=0.006)).tension == 0.006


def _series_with_plate():
    """The series bar clamped at the bottom and loaded by a plate that prescribes only uz
    (its lateral motion and rotations stay free)."""
    mesh, seg1, young, eps_t = _series_case(0.0)
    pts = mesh.points
    top = np.flatnonzero(pts[:, 2] == 40.0)
    fixed = (3 * np.flatnonzero(pts[:, 2] == 0.0)[:, None] + np.arange(3)).ravel()
    cap = ff.fe.RigidTie(top, [5.0, 5.0, 40.0], prescribed={"uz": 0.0}, name="cap")
    kw = dict(poisson=0.0, fixed_dofs=fixed, ties=[cap], load_tie="cap", yield_model=SecantYield(eps_t, 0.0104))
    return mesh, young, kw


@pytest.mark.parametrize("endpoint, expected", [
    # inside the elastic range: the series bar's elastic stiffness times the endpoint
    (0.05, 0.05 / (20.0 / (1000.0 * 100.0) + 20.0 / (3000.0 * 100.0))),
    # beyond first yield (0.1067 mm): the perfectly plastic plateau A E1 eps_y1
    (0.4, 400.0),
])
def test_endpoint_strength_definition(endpoint, expected):
    """Strength = largest force up to a displacement endpoint (Ogo's reporting rule)."""
    mesh, young, kw = _series_with_plate()
    res = nonlinear_strength(mesh, young, load_direction=[0, 0, 1], n_steps=6, rtol=1e-9, endpoint_mm=endpoint, **kw)
    assert res.converged and res.endpoint_reached and res.strength_definition == "endpoint"
    assert res.curve_displacement_mm[-1] == pytest.approx(endpoint)
    # no plateau stop before the endpoint: the curve runs to it
    assert res.report["stop_reason"] == "final displacement reached"
    assert res.strength_N == pytest.approx(expected, rel=1e-6)
    out = summary_fields(nonlinear=res)
    assert out["strength_nonlinear_N"] == pytest.approx(expected, rel=1e-6)
    assert out["nonlinear"]["endpoint_mm"] == pytest.approx(endpoint)


def test_endpoint_not_reached_gives_no_strength():
    mesh, young, kw = _series_with_plate()
    res = nonlinear_strength(mesh, young, load_direction=[0, 0, 1], n_steps=6, endpoint_mm=0.4, max_iterations=1,
                             max_cutbacks=0, **kw)
    assert not res.converged and not res.endpoint_reached
    assert res.strength_N is None and summary_fields(nonlinear=res)["strength_nonlinear_N"] is None


def test_endpoint_and_load_tie_bad_input():
    mesh, young, kw = _series_with_plate()
    with pytest.raises(LoadCaseError, match="must prescribe every translation"):
        nonlinear_strength(mesh, young, load_direction=[1, 0, 1], **kw)
    with pytest.raises(LoadCaseError, match="endpoint_mm must be"):
        nonlinear_strength(mesh, young, load_direction=[0, 0, 1], endpoint_mm=-1.0, **kw)
    with pytest.raises(LoadCaseError, match="not both"):
        nonlinear_strength(mesh, young, load_direction=[0, 0, 1], endpoint_mm=1.0, max_displacement_mm=1.0, **kw)


# --------------------------------------------------------------------------- solution method
def test_principal_strain_extremes_match_eigvalsh():
    """Closed-form extreme principal strains (trigonometric cubic) against LAPACK, including
    repeated, hydrostatic and zero tensors: agreement to 1e-8 of the largest magnitude (the
    trigonometric form loses half the digits, ~sqrt(machine precision), of an eigenvalue that is
    repeated; 1e-8 of a strain is far below any yield strain)."""
    rng = np.random.default_rng(3)
    a = rng.normal(scale=0.01, size=(500, 3, 3))
    t = 0.5 * (a + a.transpose(0, 2, 1))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    special = [np.diag([0.004, 0.004, -0.01]), np.diag([0.003, 0.003, 0.003]), np.zeros((3, 3)),
               np.diag([0.01, -0.002, -0.002]), np.diag([1e-9, 0.0, 0.0])]
    t = np.concatenate([t, np.array([q @ s @ q.T for s in special])])
    voigt = np.stack([t[:, 0, 0], t[:, 1, 1], t[:, 2, 2], 2 * t[:, 1, 2], 2 * t[:, 0, 2], 2 * t[:, 0, 1]])
    hi, lo = principal_strain_extremes(voigt)
    w = np.linalg.eigvalsh(t)
    scale = np.maximum(np.abs(w).max(axis=1), 1e-300)
    assert (np.abs(hi - w[:, 2]) <= 1e-8 * scale + 1e-300).all()
    assert (np.abs(lo - w[:, 0]) <= 1e-8 * scale + 1e-300).all()
    assert np.median(np.abs(hi - w[:, 2]) / scale) < 1e-14  # full precision away from repeated values
    for value in (hi, lo):  # eigenvectors, also of repeated and hydrostatic tensors
        n = principal_direction(voigt, value)
        assert np.allclose(np.linalg.norm(n, axis=1), 1.0)
        assert np.allclose(np.einsum("pij,pj->pi", t, n), value[:, None] * n, atol=1e-10)


@pytest.mark.parametrize("hardening", [0.0, 0.1])
def test_consistent_tangent_is_the_derivative_of_the_stress(hardening):
    """The tangent operator of the Newton iterations against central differences of the
    secant stress w E_s(eps) D1 eps, at yielded points in tension and compression and at
    elastic ones. Points within 2 % of a kink (r = 1, tension = compression, the secant floor)
    are left out: the stress is not differentiable there. Central differences with a step of
    1e-7 of the strain are accurate to ~1e-8 relative."""
    rng = np.random.default_rng(1)
    p = 400
    eps = rng.normal(scale=0.012, size=(6, p))
    mat = _PointMaterial(rng.uniform(500, 5000, p), np.full(p, 0.0073), np.full(p, 0.0104), np.zeros(p, bool),
                         hardening, 1e-3, 0.3, rng.uniform(0.5, 2.0, p))
    st = mat.evaluate(eps)
    rt = np.maximum(st.lmax, 0) / mat.eps_t
    rc = np.maximum(-st.lmin, 0) / mat.eps_c
    smooth = (np.abs(st.r - 1) > 0.02) & (np.abs(rt - rc) > 0.02 * st.r) & (st.ratio > 1.02e-3)
    assert (st.r[smooth] > 1).sum() > 100 and (st.r[smooth] < 1).sum() > 5  # both regimes are tested
    de = rng.normal(size=(6, p))
    h = 1e-7 * 0.012
    fd = (mat.evaluate(eps + h * de).ws - mat.evaluate(eps - h * de).ws) / (2 * h)
    jv = mat.tangent(st)(de)
    err = np.abs(jv - fd)[:, smooth].max(axis=0) / np.abs(fd)[:, smooth].max(axis=0)
    assert err.max() < 1e-6


def _heterogeneous_column():
    """A 10 x 10 x 25 mm tet4 column with a log-normal, axially varying modulus, clamped at the
    bottom and compressed by a plate that stays parallel (uz prescribed, rotations held)."""
    mesh = tet_box(n=(3, 3, 8), size=(10.0, 10.0, 25.0))
    rng = np.random.default_rng(7)
    c = mesh.cell_centroids()
    young = 3000.0 * np.exp(0.5 * rng.standard_normal(mesh.n_cells)) * (1 + 0.5 * np.sin(c[:, 2] / 4))
    pts = mesh.points
    top = np.flatnonzero(pts[:, 2] == 25.0)
    fixed = (3 * np.flatnonzero(pts[:, 2] == 0.0)[:, None] + np.arange(3)).ravel()
    cap = ff.fe.RigidTie(top, [5.0, 5.0, 25.0], prescribed={"uz": 0.0, "rx": 0.0, "ry": 0.0, "rz": 0.0}, name="cap")
    return mesh, young, dict(fixed_dofs=fixed, ties=[cap], load_tie="cap", load_direction=[0, 0, 1])


def test_adaptive_newton_matches_fine_step_strict_reference():
    """The default path (inexact Newton, adaptive steps, energy-norm tolerance 1e-3) against a
    fine-step strict reference: 40 equal steps to 1e-8 by Newton, and 4 steps to 1e-7 by the
    secant (Kacanov) iteration, an independent fixed-point iteration (the secant model is a
    total-strain model, so the equilibrium at the endpoint does not depend on the path).
    Endpoint 4 % of the 25 mm height, well into the plateau (first yield near 0.1 mm).

    * the two references agree to 1e-6 (they converge to the same equilibrium; 1e-7/1e-8 in
      the energy norm bound the force error near 1e-7);
    * the default strength is within 0.5 % of the reference (measured: 0.09 %): the
      tolerance the adaptive path is designed for.
    """
    mesh, young, kw = _heterogeneous_column()
    kw["endpoint_mm"] = 1.0
    fast = nonlinear_strength(mesh, young, **kw)
    ref = nonlinear_strength(mesh, young, adaptive=False, n_steps=40, rtol=1e-8, **kw)
    sec = nonlinear_strength(mesh, young, iteration="secant", adaptive=False, n_steps=4, rtol=1e-7,
                             inner_rtol=1e-3, max_iterations=1000, **kw)
    assert fast.endpoint_reached and ref.endpoint_reached and sec.endpoint_reached
    assert fast.report["iteration"] == "newton" and sec.report["iteration"] == "secant"
    assert sec.strength_N == pytest.approx(ref.strength_N, rel=1e-6)
    assert fast.strength_N == pytest.approx(ref.strength_N, rel=5e-3)
    assert len(fast.steps) < len(ref.steps) / 2  # the adaptive path takes far fewer steps
    # the first point (first yield) is exact on all paths
    assert fast.curve_force_N[1] == pytest.approx(ref.curve_force_N[1], rel=1e-9)


def test_linear_set_up_reused_as_preconditioner_and_progress_lines():
    """The linear analysis's solver (plate loaded by a force: uz free) preconditions the nonlinear
    problem (plate displaced: uz prescribed) without a new set-up; the answer is the one of the
    nonlinear problem's own set-up (both to a strict 1e-9 tolerance: equal to 1e-6). One progress
    line per converged load step."""
    mesh, young, kw = _heterogeneous_column()
    cap = kw["ties"][0]
    linear_tie = ff.fe.RigidTie(cap.node_ids, cap.reference_point, prescribed={"rx": 0.0, "ry": 0.0, "rz": 0.0},
                                name="cap")
    asm = ff.fe.StiffnessAssembler(mesh, 0.3)
    lin = ff.fe.LinearSolver(asm.assemble(young), kw["fixed_dofs"], points=mesh, constraints=[linear_tie])
    lines = []
    a = nonlinear_strength(mesh, young, endpoint_mm=0.6, rtol=1e-9, preconditioner=lin, progress=lines.append, **kw)
    b = nonlinear_strength(mesh, young, endpoint_mm=0.6, rtol=1e-9, **kw)
    assert a.report["preconditioner_reused"] and not b.report["preconditioner_reused"]
    assert a.strength_N == pytest.approx(b.strength_N, rel=1e-6)
    assert a.elastic_stiffness_N_per_mm == pytest.approx(b.elastic_stiffness_N_per_mm, rel=1e-8)
    assert len(lines) == len([s for s in a.steps if s.converged]) >= 3
    last = lines[-1]
    for part in ("nonlinear step", f"load {a.steps[-1].force_N:.4g} N", "plate displacement 0.6 mm",
                 "% of the bone volume", "iterations", " s"):
        assert part in last
    assert a.steps[-1].yielded_volume_percent > 0
    # a solver of other ties cannot precondition this problem
    other = ff.fe.RigidTie(cap.node_ids[:-1], cap.reference_point, prescribed={"rx": 0.0, "ry": 0.0, "rz": 0.0},
                           name="cap")
    fixed_more = np.r_[kw["fixed_dofs"], 3 * cap.node_ids[-1] + np.arange(3)]
    bad = ff.fe.LinearSolver(asm.assemble(young), fixed_more, points=mesh, constraints=[other])
    with pytest.raises(LoadCaseError, match="other rigid ties"):
        nonlinear_strength(mesh, young, endpoint_mm=0.6, preconditioner=bad, **kw)
