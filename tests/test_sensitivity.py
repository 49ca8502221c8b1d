"""Adjoint density sensitivities vs central finite differences; optimal bone placement."""
from __future__ import annotations

import numpy as np
import pytest

from femur_fe.bone.materials import material_law
from femur_fe.errors import ScenarioError
from femur_fe.fe.boxes import hex_grid
from femur_fe.therapy.remodeling import BoundaryConditions
from femur_fe.therapy.scenarios import LocalInjection, UniformChange, match_added_mass
from femur_fe.therapy.sensitivity import (
    StrengthProblem,
    StrengthSensitivity,
    optimal_placement,
    young_and_derivative,
)

LAW = material_law("power", a_mpa=6850.0, b=1.49, density_type="apparent")  # Morgan 2003 femoral neck form


def _column(control: str = "displacement", p: float = 6.0):
    """6 x 6 x 12 mm column of 3 x 3 x 6 hex cells, graded + noisy density, fixed at the bottom;
    top pushed down with some shear (displacement control) or loaded by forces."""
    mesh = hex_grid((3, 3, 6), (6.0, 6.0, 12.0))
    rng = np.random.default_rng(1)
    rho = 0.3 + 0.4 * mesh.cell_centroids()[:, 2] / 12.0 + 0.05 * rng.random(mesh.n_cells)
    pts = mesh.points
    bot = np.flatnonzero(pts[:, 2] < 1e-9)
    top = np.flatnonzero(pts[:, 2] > 12 - 1e-9)
    if control == "displacement":
        fixed = np.r_[(3 * bot[:, None] + np.arange(3)).ravel(), (3 * top[:, None] + np.arange(3)).ravel()]
        vals = np.r_[np.zeros(3 * bot.size), np.tile([0.02, 0.0, -0.1], top.size)]
        bc = BoundaryConditions(fixed, fixed_values=vals)
    else:
        fixed = (3 * bot[:, None] + np.arange(3)).ravel()
        f = np.zeros(mesh.n_dofs)
        f[3 * top + 2] = -500.0 / top.size
        f[3 * top] = 60.0 / top.size
        bc = BoundaryConditions(fixed, forces=f)
    return mesh, rho, StrengthSensitivity(StrengthProblem(mesh, LAW, bc, top, (0, 0, -1), p=p), n_threads=1)


def _fd(sens, rho, e, attr, rel_step=1e-5):
    h = rel_step * rho[e]
    rp, rm = rho.copy(), rho.copy()
    rp[e] += h
    rm[e] -= h
    return (getattr(sens.evaluate(rp, gradient=False), attr) - getattr(sens.evaluate(rm, gradient=False), attr)) / (2 * h)


ELEMS = [0, 5, 17, 30, 53]


@pytest.mark.parametrize("attr,grad", [("strength_N", "d_strength"), ("reaction_N", "d_reaction"),
                                       ("risk_pnorm", "d_risk")])
def test_adjoint_matches_central_differences_displacement_control(attr, grad):
    # central differences with h = 1e-5 rho: truncation ~h^2 ~1e-10 relative, round-off ~1e-16/1e-5 = 1e-11
    # on values solved with a direct factorisation; the adjoint must agree to ~1e-6 (measured <= 5e-7)
    mesh, rho, sens = _column("displacement")
    res = sens.evaluate(rho)
    g = getattr(res, grad)
    for e in ELEMS:
        fd = _fd(sens, rho, e, attr)
        assert g[e] == pytest.approx(fd, rel=1e-6, abs=1e-9 * np.abs(g).max()), (e, g[e], fd)


@pytest.mark.parametrize("attr,grad", [("compliance_Nmm", "d_compliance"), ("strength_N", "d_strength")])
def test_adjoint_matches_central_differences_force_control(attr, grad):
    mesh, rho, sens = _column("force")
    res = sens.evaluate(rho)
    assert res.reaction_N == pytest.approx(500.0)  # applied force along -z
    g = getattr(res, grad)
    for e in ELEMS:
        # small components: FD round-off ~ eps * value / h (3e-8 N per g/cm^3 here) sets an absolute
        # floor; allow 100 eps (solver round-off on the two solves)
        floor = 100 * np.finfo(float).eps * abs(getattr(res, attr)) / (1e-5 * rho[e])
        assert g[e] == pytest.approx(_fd(sens, rho, e, attr), rel=1e-6, abs=floor), e
    # compliance sensitivity is the textbook -E' u_e^T K̂_e u_e: stiffer anywhere = less compliant
    assert np.all(res.d_compliance < 0)


def test_pnorm_bounds_and_fields():
    mesh, rho, sens = _column("displacement", p=8.0)
    res = sens.evaluate(rho)
    n_inc = int(sens.include.sum())
    assert res.risk_max <= res.risk_pnorm <= (2 * n_inc) ** (1 / 8.0) * res.risk_max
    assert res.strength_N <= res.strength_max_N
    f = res.fields()
    assert f["sensitivity_strength"].shape == (mesh.n_cells,)
    np.testing.assert_allclose(f["sensitivity_strength_per_gram"], res.d_strength * 1000 / mesh.cell_volumes())


def test_law_derivative():
    rho = np.array([0.1, 0.5, 1.3])
    e, de = young_and_derivative(LAW, rho)
    np.testing.assert_allclose(de, 6850.0 * 1.49 * rho ** 0.49, rtol=1e-9)


def test_optimal_placement_beats_uniform_and_injection_of_same_mass():
    mesh, rho, sens = _column("displacement")
    mass = 0.05  # g, +23 % of the column's 0.216 g
    base = sens.evaluate(rho, gradient=False).strength_N
    opt = optimal_placement(sens, rho, mass, upper=2.0, n_rounds=6, max_step_g_cm3=0.1)
    assert opt.added_mass_g == pytest.approx(mass, rel=1e-12)
    assert np.all(opt.delta >= 0) and opt.density.max() <= 2.0
    assert np.all(np.diff(opt.strength_N) > 0)  # every round helps
    _, uni = match_added_mass(lambda g: UniformChange(100 * g), rho, mesh, mass, density_type="apparent")
    _, inj = match_added_mass(lambda g: LocalInjection(center_mm=(3, 3, 6), radius_mm=3.0, peak_gain_g_cm3=g),
                              rho, mesh, mass, density_type="apparent")
    s_uni = sens.evaluate(uni.density, gradient=False)
    s_inj = sens.evaluate(inj.density, gradient=False)
    gain_opt = opt.strength_N[-1] - base
    # measured: optimal +342 N, injection +213 N, uniform +161 N (smooth strength);
    # the max-based strength ranks them the same way
    assert gain_opt > s_uni.strength_N - base > 0
    assert gain_opt > s_inj.strength_N - base > 0
    assert opt.strength_max_N[-1] > max(s_uni.strength_max_N, s_inj.strength_max_N)


def test_placement_errors():
    mesh, rho, sens = _column("displacement")
    with pytest.raises(ScenarioError, match="added_mass_g"):
        optimal_placement(sens, rho, -1.0, upper=2.0)
    with pytest.raises(ScenarioError, match="upper"):
        optimal_placement(sens, rho, 0.01, upper=-1.0)
    # a bound below some densities: those elements get nothing
    opt = optimal_placement(sens, rho, 0.01, upper=0.6, n_rounds=2)
    above = rho >= 0.6
    assert above.any() and np.all(opt.delta[above] == 0) and opt.density[~above].max() <= 0.6 + 1e-12


def test_pipeline_analysis_adjoint_matches_finite_differences():
    """AnalysisSensitivity on a prepared pipeline analysis (rigid loading plate = RigidTie)."""
    import femur_fe as ff
    from femur_fe.analysis.prepare import prepare
    from femur_fe.bone.model import Model
    from femur_fe.therapy.sensitivity import AnalysisSensitivity

    mesh = hex_grid((3, 3, 6), (6.0, 6.0, 12.0))
    z = mesh.points[:, 2]
    mesh = mesh.with_node_set("bottom", np.flatnonzero(z < 1e-9)).with_node_set("top", np.flatnonzero(z > 12 - 1e-9))
    case = ff.load_case({
        "schema_version": 1, "name": "column", "bone": "vertebra",
        "material": {"law": "power", "params": {"a_mpa": 6850.0, "b": 1.49, "density_type": "apparent"}},
        "loading": {"mode": "force", "force_n": 500.0, "direction": "vector", "vector": [0.3, 0.0, -1.0]},
        "caps": {"kind": "rigid", "regions": []},
        "regions": {"top": {"node_set": "top"}, "bottom": {"node_set": "bottom"}},
        "boundary": [{"region": "top", "apply": "load"}, {"region": "bottom", "fix": "all"}],
        "failure": {"criterion": "max_principal_strain"},
        "solver": {"method": "direct"},
    })
    rng = np.random.default_rng(1)
    rho = 0.3 + 0.4 * mesh.cell_centroids()[:, 2] / 12 + 0.05 * rng.random(mesh.n_cells)
    model = Model.from_density(mesh, rho, LAW)
    an = prepare(case, model)
    sens = AnalysisSensitivity(an, model)
    res = sens.evaluate(rho)
    # the stiffness is the pipeline's own (same solve, 1 N on the plate)
    assert res.stiffness_N_per_mm == pytest.approx(an.solve(model=model).stiffness_N_per_mm, rel=1e-10)
    for attr, g in (("strength_N", res.d_strength), ("stiffness_N_per_mm", res.d_stiffness)):
        for e in ELEMS:
            # measured agreement <= 2e-7 (same FD error budget as above)
            assert g[e] == pytest.approx(_fd(sens, rho, e, attr), rel=1e-6), (attr, e)
    # every evaluation solves for its own density (no stale solver reused between densities)
    for k in range(4):
        rk = rho * (1.0 + 0.1 * k)
        assert sens.evaluate(rk, gradient=False).strength_N == pytest.approx(
            AnalysisSensitivity(an, model).evaluate(rk, gradient=False).strength_N, rel=1e-12)
    # optimal placement works on it too
    opt = optimal_placement(sens, rho, 0.02, upper=2.0, n_rounds=3, max_step_g_cm3=0.1)
    assert opt.strength_N[-1] > opt.strength_N[0]
