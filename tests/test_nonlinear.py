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
from femur_fe.fe.nonlinear import SecantYield, nonlinear_strength, secant_modulus


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
                             rtol=1e-10, stop_at_peak=False, progress=lines.append)
    assert res.converged
    # yielded volume: half 1 (2000 mm^3) beyond strain 0.003, both halves (4000 mm^3) beyond 0.006
    # (the steps fall at strains 0.003 (first yield, r = 1: not yielded), 0.005, 0.007, ...)
    eps_steps = np.array([st.displacement_mm for st in res.steps]) / 40.0
    expected_v = np.where(eps_steps > 0.006 + 1e-9, 4000.0, np.where(eps_steps > 0.003 + 1e-9, 2000.0, 0.0))
    np.testing.assert_allclose([st.yielded_volume_mm3 for st in res.steps], expected_v, rtol=1e-12)
    # one progress line after the elastic set-up, then one per step with load, displacement,
    # yielded volume and iterations
    assert len(lines) == len(res.steps) + 1 and lines[0].startswith("nonlinear: elastic set-up")
    assert lines[2] == (f"nonlinear step 2: load {res.steps[1].force_N:.0f} N at {res.steps[1].displacement_mm:.3g} mm, "
                        f"yielded 2000 mm^3 (50.0 % of the bone), {res.steps[1].iterations} iterations")
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
    young = np.array([-34.7 + 3230 * 0.25])  # Kopperdahl 2002 linear E (biomechanics.md 1.2)
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
