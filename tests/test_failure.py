"""Tests of femur_fe.analysis.failure: criteria, registry, parameter checks and linear strength.

Regression tests: Pistoia (Pistoia et al. 2002, Bone 30:842) on a synthetic EES array with an exact
answer, and the Schileo max-principal-strain criterion on a uniaxial bar assembled and
solved by femur_fe, which must fail at exactly eps_t E A (tension) and eps_c E A
(compression).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.analysis.failure import (
    SITE_COMPRESSIVE_YIELD_STRAIN,
    ApparentStrain,
    DensityYieldStress,
    MaxPrincipalStrain,
    Pistoia,
    SiteYieldStrain,
    ees_at_critical_volume,
    failure_criterion,
    pistoia_ees_count_n88tools,
)
from femur_fe.errors import FemurFeError, LoadCaseError


def hex_grid(n=(5, 5, 4), h=1.0):
    """Voxel mesh of n cubes of edge h (mm), VTK hexahedron node order."""
    return ff.fe.boxes.hex_grid(n, tuple(h * k for k in n))


def tet_box(n=(3, 3, 8), size=(10.0, 10.0, 40.0)):
    """tet4 box [0, size] mm (scikit-fem's tensor mesh, orientation made positive)."""
    skfem = pytest.importorskip("skfem")
    m = skfem.MeshTet.init_tensor(*[np.linspace(0, s, k + 1) for s, k in zip(size, n)])
    pts, cells = m.p.T.copy(), m.t.T.copy()
    d = pts[cells[:, 1:]] - pts[cells[:, :1]]
    neg = np.linalg.det(d) < 0
    cells[neg] = cells[neg][:, [0, 2, 1, 3]]
    return ff.Mesh(pts, cells, "tetra")


def uniaxial(e, young, nu=0.3, axis=0):
    """Strain and stress tensors of uniaxial stress sigma = E e along ``axis``."""
    eps = np.full(3, -nu * e)
    eps[axis] = e
    sig = np.zeros(3)
    sig[axis] = young * e
    return np.diag(eps), np.diag(sig)


def fields_from_ees(ees, young=1000.0, nu=0.3):
    """Per-element uniaxial states whose energy-equivalent strain is exactly ``ees``."""
    strain = np.stack([uniaxial(e, young, nu)[0] for e in ees])
    stress = np.stack([uniaxial(e, young, nu)[1] for e in ees])
    return strain, stress, np.full(len(ees), young)


# ----------------------------------------------------------------------------- Pistoia
def test_pistoia_synthetic_ees_exact():
    # 100 voxels with EES = 0.0001, 0.0002, ..., 0.0100 in shuffled order. With V_crit = 2 %
    # n88tools takes sorted(EES)[int(100 * 98 / 100)] = sorted[98] = 0.0099, so the failure
    # load is F * 0.007 / 0.0099 exactly.
    mesh = hex_grid((5, 5, 4))
    ees = np.arange(1, 101) * 1e-4
    ees = ees[np.random.default_rng(3).permutation(100)]
    strain, stress, young = fields_from_ees(ees)
    crit = failure_criterion("pistoia")
    assert crit.parameters()["critical_volume"] == 0.02 and crit.parameters()["critical_strain"] == 0.007
    res = crit.linear_strength(1500.0, mesh, strain=strain, stress=stress, young=young)
    assert res.strength_N == pytest.approx(1500.0 * 0.007 / 0.0099, rel=1e-12)
    assert res.risk.details["ees_at_critical_volume"] == pytest.approx(0.0099, rel=1e-12)
    assert res.to_dict()["criterion"]["parameters"]["critical_volume_basis"] == "volume"
    np.testing.assert_allclose(res.risk.element, ees / 0.007, rtol=1e-12)
    # Ogo's calibration: 7 % / 0.011 -> sorted[int(100 * 93 / 100)] = sorted[93] = 0.0094
    res_ogo = Pistoia(critical_strain=0.011, critical_volume=0.07).linear_strength(
        1500.0, mesh, strain=strain, stress=stress, young=young)
    assert res_ogo.strength_N == pytest.approx(1500.0 * 0.011 / 0.0094, rel=1e-12)


@pytest.mark.parametrize("n", [1, 7, 50, 100, 333, 1000, 4096])
@pytest.mark.parametrize("v_pct", [2.0, 5.0, 7.0, 13.0])
def test_pistoia_volume_weighting_equals_n88tools_count_on_uniform_voxels(n, v_pct):
    ees = np.random.default_rng(n).lognormal(-6, 0.5, size=n)
    _, value = ees_at_critical_volume(ees, np.full(n, 0.125), v_pct / 100)
    assert value == pistoia_ees_count_n88tools(ees, v_pct)


def test_pistoia_volume_weighting_on_non_uniform_elements():
    # the element with the largest EES holds 10 of 109 mm^3 (> 2 %): it alone sets EES*
    ees = np.linspace(0.001, 0.002, 100)
    vol = np.ones(100)
    vol[-1] = 10.0
    k, value = ees_at_critical_volume(ees, vol, 0.02)
    assert k == 99 and value == 0.002
    # element count would pick sorted[98]; a tiny top element is not enough by volume:
    vol = np.ones(100)
    vol[-1] = 0.01  # 0.01 of 99.01 mm^3; the next one brings 1.01 mm^3 = 1.02 % ; third -> 2.03 %
    _, value = ees_at_critical_volume(ees, vol, 0.02)
    assert value == ees[97]


def test_pistoia_include_elements_leaves_out_caps():
    mesh = hex_grid((5, 5, 4))
    ees = np.full(100, 0.001)
    ees[:10] = 0.05  # "cap" elements with huge strain
    strain, stress, young = fields_from_ees(ees)
    crit = Pistoia()
    with_caps = crit.linear_strength(1000.0, mesh, strain=strain, stress=stress, young=young)
    bone = np.arange(10, 100)
    no_caps = crit.linear_strength(1000.0, mesh, strain=strain, stress=stress, young=young,
                                   include_elements=bone)
    assert with_caps.strength_N == pytest.approx(1000 * 0.007 / 0.05)
    assert no_caps.strength_N == pytest.approx(1000 * 0.007 / 0.001)
    assert np.isnan(no_caps.risk.element[:10]).all()


# ----------------------------------------------------------------------------- Schileo
def test_max_principal_strain_risk_formula_and_exclusion():
    mesh = hex_grid((4, 1, 1))  # 4 cubes along x, nodes at x = 0..4
    e = np.array([0.001, -0.002, 0.0005, 0.004])  # uniaxial along x
    strain = np.stack([uniaxial(v, 1000.0)[0] for v in e])
    crit = MaxPrincipalStrain(at="element", exclude_nodes="none")
    risk = crit.evaluate(mesh, strain=strain, young=np.full(4, 1000.0))
    # tension: e/0.0073; compression: max(nu|e|/0.0073, |e|/0.0104)
    expected = [0.001 / 0.0073, max(0.3 * 0.002 / 0.0073, 0.002 / 0.0104), 0.0005 / 0.0073, 0.004 / 0.0073]
    np.testing.assert_allclose(risk.element, expected, rtol=1e-12)
    assert risk.location == "element 3" and risk.node is None
    # excluding the nodes at x = 4 (a "load region") drops element 3
    load = np.flatnonzero(mesh.points[:, 0] == 4.0)
    crit_bc = MaxPrincipalStrain(at="element")
    r2 = crit_bc.evaluate(mesh, strain=strain, young=np.full(4, 1000.0), bc_nodes=load)
    assert r2.location == "element 1" and r2.governing == pytest.approx(expected[1])
    np.testing.assert_array_equal(r2.excluded_elements, [3])
    # a margin of 1.5 mm around x = 4 also removes the nodes at x = 3 -> elements 2 and 3
    r3 = MaxPrincipalStrain(at="element", exclude_margin_mm=1.5).evaluate(
        mesh, strain=strain, young=np.full(4, 1000.0), bc_nodes=load)
    np.testing.assert_array_equal(r3.excluded_elements, [2, 3])
    # exclusion by node-set name
    m2 = mesh.with_node_set("head_contact", load)
    r4 = MaxPrincipalStrain(at="element", exclude_nodes=["head_contact"]).evaluate(
        m2, strain=strain, young=np.full(4, 1000.0))
    assert r4.location == "element 1"
    with pytest.raises(LoadCaseError, match="bc_nodes"):
        crit_bc.evaluate(mesh, strain=strain, young=np.full(4, 1000.0))
    with pytest.raises(LoadCaseError, match="available"):
        MaxPrincipalStrain(exclude_nodes=["nope"]).evaluate(mesh, strain=strain, young=np.full(4, 1000.0))


def test_max_principal_strain_node_based_uses_volume_weighted_nodal_strain():
    mesh = hex_grid((2, 1, 1))
    strain = np.stack([uniaxial(0.001, 1e3)[0], uniaxial(0.003, 1e3)[0]])
    risk = MaxPrincipalStrain(exclude_nodes="none").evaluate(mesh, strain=strain, young=np.full(2, 1e3))
    shared = np.flatnonzero(mesh.points[:, 0] == 1.0)
    np.testing.assert_allclose(risk.node[shared], 0.002 / 0.0073)  # equal volumes: mean strain
    assert risk.governing == pytest.approx(0.003 / 0.0073)


def _bar_solution(mesh, young, delta):
    """Uniaxial bar along z: bottom uz = 0 (+ 3 DOFs against rigid motion), top uz = delta."""
    pts = mesh.points
    zmax = pts[:, 2].max()
    bottom = np.flatnonzero(pts[:, 2] == 0.0)
    top = np.flatnonzero(pts[:, 2] == zmax)
    origin = np.flatnonzero((pts == 0.0).all(axis=1))[0]
    xnode = np.flatnonzero((pts[:, 0] == pts[:, 0].max()) & (pts[:, 1] == 0) & (pts[:, 2] == 0))[0]
    fixed = np.r_[3 * bottom + 2, 3 * top + 2, 3 * origin, 3 * origin + 1, 3 * xnode + 1]
    values = np.r_[np.zeros(len(bottom)), np.full(len(top), delta), 0.0, 0.0, 0.0]
    k = ff.fe.StiffnessAssembler(mesh, 0.3).assemble(np.full(mesh.n_cells, young))
    sol = ff.fe.LinearSolver(k, fixed, points=mesh, method="direct").solve(np.zeros(k.shape[0]), values)
    return sol, top, bottom


@pytest.mark.parametrize("sign", [+1.0, -1.0])
def test_schileo_bar_fails_at_eps_times_EA(sign):
    young, area, length = 1200.0, 100.0, 40.0
    mesh = tet_box()
    delta = sign * 0.05  # strain 1.25e-3
    sol, top, bottom = _bar_solution(mesh, young, delta)
    load = sign * sol.reaction_force(top)[2]  # along the load direction, positive
    # linear elastic bar: F = E A delta / L (tet4 reproduces the uniform strain exactly)
    assert load == pytest.approx(young * area * abs(delta) / length, rel=1e-9)
    from femur_fe.fe.recovery import node_average

    strain = _strain_tet4(mesh, sol.u.reshape(-1, 3))
    res = failure_criterion("max_principal_strain").linear_strength(
        load, mesh, strain=strain, young=np.full(mesh.n_cells, young),
        strain_nodal=node_average(mesh, strain), bc_nodes=np.r_[top, bottom])
    limit = 0.0073 if sign > 0 else 0.0104
    # exact up to the solver's round-off (direct solve, residual ~1e-15)
    assert res.strength_N == pytest.approx(limit * young * area, rel=1e-9)
    assert res.location.startswith("node")


def test_apparent_strain_bar_fails_at_apparent_strain_times_EA():
    # A prismatic bar compressed by delta: K = E A / L, so the whole-body criterion must give
    # strength = c K L = c E A exactly (Crawford stiffness x height, c = 0.0068).
    young, area, length = 1200.0, 100.0, 40.0
    mesh = tet_box()
    delta = -0.05
    sol, top, bottom = _bar_solution(mesh, young, delta)
    load = -sol.reaction_force(top)[2]
    strain = _strain_tet4(mesh, sol.u.reshape(-1, 3))
    stress = np.stack([uniaxial(-abs(delta) / length, young, axis=2)[1]] * mesh.n_cells)
    res = failure_criterion("crawford2003").linear_strength(
        load, mesh, strain=strain, stress=stress, young=np.full(mesh.n_cells, young),
        plate_displacement_mm=abs(delta), height_mm=length)
    assert res.criterion == "apparent_strain"
    assert res.strength_N == pytest.approx(0.0068 * young * area, rel=1e-9)
    assert res.risk.details["apparent_strain_at_load"] == pytest.approx(abs(delta) / length, rel=1e-12)
    # the element field is the local EES over the critical apparent strain (uniform here)
    np.testing.assert_allclose(res.risk.element, abs(delta) / length / 0.0068, rtol=1e-9)
    # an explicit height overrides the one passed by the analysis
    fixed = ApparentStrain(apparent_strain=0.007, height_mm=20.0).linear_strength(
        load, mesh, strain=strain, stress=stress, young=np.full(mesh.n_cells, young),
        plate_displacement_mm=abs(delta), height_mm=length)
    assert fixed.strength_N == pytest.approx(load * 0.007 * 20.0 / abs(delta), rel=1e-12)


@pytest.mark.parametrize("kw, msg", [({"apparent_strain": 0.68}, "fraction"),
                                     ({"apparent_strain": -0.0068}, "positive"),
                                     ({"height_mm": "body"}, "height_mm"),
                                     ({"height_mm": 0.0}, "height_mm")])
def test_apparent_strain_parameter_errors(kw, msg):
    with pytest.raises(LoadCaseError, match=msg):
        ApparentStrain(**kw)


def test_apparent_strain_has_no_node_exclusion_to_ignore():
    # a whole-body measure excludes nothing; an exclusion setting is refused, not silently dropped
    with pytest.raises(LoadCaseError, match="does not take 'exclude_nodes'"):
        failure_criterion("apparent_strain", exclude_nodes="bc")


def test_apparent_strain_needs_plate_displacement_and_height():
    strain, stress, young = fields_from_ees([0.001, 0.002])
    mesh = hex_grid((2, 1, 1))
    with pytest.raises(LoadCaseError, match="set \\[failure.params\\] height_mm"):
        ApparentStrain().linear_strength(10.0, mesh, strain=strain, stress=stress, young=young,
                                         plate_displacement_mm=0.2)
    with pytest.raises(FemurFeError, match="plate's displacement"):
        ApparentStrain().linear_strength(10.0, mesh, strain=strain, stress=stress, young=young, height_mm=25.0)


def _strain_tet4(mesh, u):
    """Centroid strains of tet4 elements (independent of femur_fe.fe.recovery)."""
    x = mesh.points[mesh.cells]
    d = np.stack([x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]], axis=1)  # (m, 3, 3) rows
    du = np.stack([u[mesh.cells[:, i]] - u[mesh.cells[:, 0]] for i in (1, 2, 3)], axis=1)
    grad = np.linalg.solve(d, du).transpose(0, 2, 1)  # du_i/dx_j
    return 0.5 * (grad + grad.transpose(0, 2, 1))


# ----------------------------------------------------------------------------- other criteria
def test_density_yield_stress_kopperdahl_default():
    mesh = hex_grid((2, 1, 1))
    rho = np.array([0.2, 0.3])  # QCT-equivalent g/cm^3
    sy = -0.750 + 24.9 * rho  # 4.23, 6.72 MPa
    stress = np.stack([np.diag([0.0, 0.0, -2.0]), np.diag([0.0, 0.0, -2.0])])
    strain = np.zeros((2, 3, 3))
    crit = failure_criterion("density_yield_stress", exclude_nodes="none")
    res = crit.linear_strength(800.0, mesh, strain=strain, stress=stress, young=np.ones(2), density=rho,
                               density_type="qct")
    assert res.strength_N == pytest.approx(800.0 * sy[0] / 2.0)
    np.testing.assert_allclose(res.risk.element, 2.0 / sy)
    with pytest.raises(LoadCaseError, match="'ash'"):
        crit.evaluate(mesh, strain=strain, stress=stress, young=np.ones(2), density=rho, density_type="ash")
    with pytest.raises(FemurFeError, match="mg/cm"):
        crit.evaluate(mesh, strain=strain, stress=stress, young=np.ones(2), density=rho * 1000)
    # von Mises demand and elements without capacity (rho < 0.0301 g/cm^3)
    vm = DensityYieldStress(demand="von_mises", exclude_nodes="none")
    r = vm.evaluate(mesh, strain=strain, stress=stress, young=np.ones(2), density=np.array([0.01, 0.3]))
    assert np.isnan(r.element[0]) and r.details["n_no_capacity"] == 1
    assert r.governing == pytest.approx(2.0 / sy[1])


def test_site_yield_strain():
    crit = failure_criterion("site_yield_strain", site="femoral_neck", tension=0.0061)
    assert crit.compression == SITE_COMPRESSIVE_YIELD_STRAIN["femoral_neck"] == 0.0085
    assert crit.parameters()["site"] == "femoral_neck"
    with pytest.raises(LoadCaseError, match="needs tension"):
        SiteYieldStrain("vertebra")
    with pytest.raises(LoadCaseError, match="site must be one of"):
        SiteYieldStrain("skull", tension=0.007)


# ----------------------------------------------------------------------------- registry and checks
def test_registry_errors_name_the_fix():
    with pytest.raises(LoadCaseError, match="valid: .*max_principal_strain.*pistoia"):
        failure_criterion("von_mises_stress")
    with pytest.raises(LoadCaseError, match="accepted parameters: critical_strain, critical_volume"):
        failure_criterion("pistoia", critical_strian=0.007)
    assert isinstance(failure_criterion("Schileo"), MaxPrincipalStrain)
    assert isinstance(failure_criterion("kopperdahl2002"), DensityYieldStress)


@pytest.mark.parametrize("kw, msg", [
    (dict(tension=0.73), r"looks like a percentage.*tension=0.0073"),
    (dict(compression=1.04), r"looks like a percentage.*compression=0.0104"),
    (dict(compression=-0.0104), r"negative.*compression=0.0104"),
    (dict(tension=0.0), "must be > 0"),
    (dict(tension=150.0), "not a plausible"),
    (dict(tension="a lot"), "must be a number"),
    (dict(at="centroid"), "'node' or 'element'"),
    (dict(exclude_nodes="caps"), "exclude_nodes must be"),
])
def test_max_principal_strain_parameter_errors(kw, msg):
    with pytest.raises(LoadCaseError, match=msg):
        MaxPrincipalStrain(**kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(critical_volume=2.0), r"percentage.*critical_volume=0.02"),
    (dict(critical_volume=0.9), "not a plausible"),
    (dict(critical_strain=0.7), r"percentage.*critical_strain=0.007"),
])
def test_pistoia_parameter_errors(kw, msg):
    with pytest.raises(LoadCaseError, match=msg):
        Pistoia(**kw)


def test_values_used_are_logged(caplog):
    mesh = hex_grid((2, 1, 1))
    strain, stress, young = fields_from_ees([0.001, 0.002])
    with caplog.at_level(logging.INFO, logger="femur_fe.analysis.failure"):
        Pistoia(critical_strain=0.011, critical_volume=0.07).linear_strength(
            100.0, mesh, strain=strain, stress=stress, young=young)
    assert "'critical_strain': 0.011" in caplog.text and "'critical_volume': 0.07" in caplog.text


def test_linear_strength_rejects_bad_load_and_zero_strain():
    mesh = hex_grid((2, 1, 1))
    strain, stress, young = fields_from_ees([0.001, 0.002])
    with pytest.raises(FemurFeError, match="load_force_N must be a positive"):
        Pistoia().linear_strength(-5.0, mesh, strain=strain, stress=stress, young=young)
    with pytest.raises(FemurFeError, match="no strain"):
        Pistoia().linear_strength(5.0, mesh, strain=0 * strain, stress=0 * stress, young=young)
